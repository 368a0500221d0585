"""``axon publish``, ``axon register`` and ``axon status``: parse, call the library, render.

Each command calls one function of :mod:`axon.publish`; nothing here touches a transport.
Output modes: human (progress bars on stderr, a summary on stdout), ``--json`` (one JSON
object on stdout, also for errors) and ``--quiet`` (errors only). Exit codes come from the
result (see :mod:`axon.errors`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from axon.cli.flags import GoFlagsCommand, bool_flag
from axon.cli.output import Output, error_line
from axon.cli.targets_cmds import token_env_option
from axon.config import STRATEGIES
from axon.errors import EXIT_INTEGRITY, EXIT_NOT_FOUND, AxonError, OptionError

if TYPE_CHECKING:
    from axon.publish import PublishOptions, PublishResult
    from modelpkg.refs import ModelRef

# axon.publish (and through it the cache, targets, transports and the HTTP client) is
# imported inside each command: `axon publish --help` stays as light as it was.

DEFAULT_TARGET = "localhost"


def _resolved(ref: str, quiet: bool = False) -> ModelRef:
    """The model REF means (axon.cache.resolve_configured; its notes on stderr)."""
    from axon.cli.cache_cmds import resolve_ref

    return resolve_ref(ref, quiet)


def _fail(exc: AxonError, as_json: bool) -> NoReturn:
    """Errors raised before any target ran: the one ``axon: error:`` line on stderr (with
    ``--json`` also the error as one JSON object on stdout), then the exit code."""
    if as_json:
        click.echo(json.dumps({"ok": False, "exit_code": exc.exit_code, "error": exc.to_dict()}))
        error_line(str(exc))
        sys.exit(exc.exit_code)
    raise exc  # axon.cli.main prints the one line


# ---- options of cluster targets -------------------------------------------------------------
# Each lands on the PublishOptions field of its name (axon.publish.options checks them).
TARGET_OPTIONS: list[Callable[[Any], Any]] = [
    bool_flag("--atomic", help="Cluster: stage everywhere, then switch all."),
    click.option("--strategy", type=click.Choice(STRATEGIES), help="Cluster: override strategy."),
    click.option("--max-parallel", type=click.IntRange(1), help="Cluster: instances at once."),
    bool_flag("--fail-fast", help="Cluster: stop at the first failure."),
    click.option("--min-success", help="Cluster: successes needed, N or P%."),
    click.option("--batch-size", type=click.IntRange(1), help="Cluster: rolling batches of N."),
    click.option(
        "--relay/--no-relay",
        default=None,
        help="Cluster: members pull from members that have it (default: the cluster's relay:).",
    ),
]


def _with_target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(TARGET_OPTIONS):
        func = option(func)
    return func


def build_options(**values: Any) -> PublishOptions:
    """PublishOptions from the parsed CLI values (OptionError, exit 2, for contradictions).

    ``--timeout`` given means it replaces each target's own timeout.
    """
    from axon.publish import PublishOptions

    timeout = values.pop("timeout", None)
    if timeout is not None:
        values.update(timeout=timeout, override_timeout=True)
    return PublishOptions(**values)


@click.command("publish", cls=GoFlagsCommand)
@click.argument("ref")
@click.option(
    "--target",
    "-t",
    default=DEFAULT_TARGET,
    show_default=True,
    help="Configured target name, host, IP, http(s)://host:port URL, or storage URL/path.",
)
@bool_flag(
    "--validate/--no-validate", default=True, help="Check every file's sha256 before sending."
)
@bool_flag(
    "--notify/--no-notify",
    default=True,
    help="Register after a file copy; storage: tell its notify_instances.",
)
@click.option(
    "--notify-instance",
    "notify_instances",
    multiple=True,
    metavar="INSTANCE",
    help="Storage: also tell this instance (name, host[:port] or URL); repeatable.",
)
@bool_flag("--dry-run", help="Show what would be sent where; change nothing.")
@bool_flag("--json", "as_json", help="Print one JSON result object.")
@bool_flag("--quiet", "-q", help="Print errors only.")
@click.option("--retries", type=click.IntRange(0, 100), default=5, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds per network operation (default: the target's, else 30).",
)
@bool_flag("--full-verify", help="Re-hash every file, ignoring the index.")
@token_env_option
@_with_target_options
def publish_cmd(ref: str, target: str, as_json: bool, quiet: bool, **values: Any) -> None:
    """Publish a cached model REF (namespace/name[@version]) to an instance, a cluster or
    shared storage. Only what the target lacks is sent; the model becomes visible at once.

    Boolean flags also take Go's form: --validate=false is --no-validate. Without a
    terminal, progress is a plain line on stderr every 10 s or 10% per target.
    """
    from axon.publish import publish

    try:
        options = build_options(**values)
        model = _resolved(ref, quiet)  # default namespace, the only installed version
    except AxonError as exc:
        _fail(exc, as_json)
    try:
        with _progress(enabled=not (as_json or quiet or options.dry_run)) as progress:
            result = publish(model, target, options, progress)
    except AxonError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        for item in result.results:  # errors go to stderr in every mode
            for line in _error_lines(item, result.model_id):
                error_line(line)
    elif result.dry_run:
        _render_plans(result)
    else:
        _render_results(result, quiet)
    sys.exit(result.exit_code)


def _progress(*, enabled: bool) -> Any:
    """Bars on a terminal, plain lines without one (:mod:`axon.cli.progress_lines`);
    rich is imported only for bars (fast scripted runs)."""
    from axon.cli.progress_lines import progress_mode

    mode = progress_mode(enabled=enabled)
    if mode == "bars":
        from axon.cli.progress_view import progress_sink

        return progress_sink(enabled=True)
    if mode == "lines":
        from axon.cli.progress_lines import PlainProgress

        return PlainProgress()
    from axon.progress import NULL_PROGRESS

    return contextlib.nullcontext(NULL_PROGRESS)


def _error_lines(item: Any, model_id: str) -> list[str]:
    """The ``axon: error:`` texts of a failed target's result: its own error lines, or one
    line saying it failed when its summary has none (a cluster's table)."""
    if item.ok:
        return [line.text for line in item.lines(model_id) if line.error]
    texts = [line.text for line in item.lines(model_id) if line.error]
    if texts:
        return texts
    name = getattr(item, "target", None) or getattr(item, "cluster", "?")
    outcome = getattr(item, "outcome", "failed")
    return [f"publish of {model_id} to {name}: {outcome} (exit {item.exit_code}; see above)"]


def _render_plans(result: PublishResult) -> None:
    from axon.publish.results import size_text

    for plan in result.plans:
        state = "unchanged, nothing to send" if plan.unchanged else "would send"
        if not plan.unchanged and "relay: would pull from" in plan.method:
            state = "would pull"  # from the member named, not from the publisher
        click.echo(
            f"dry run: {result.model_id} -> {plan.target} ({plan.method}) {plan.location}: "
            f"{state} {plan.files_to_send}/{len(plan.files)} files, "
            f"{size_text(plan.bytes_to_send)}"
        )
        for f in plan.files:
            mark = "send" if f.send else "skip"
            click.echo(f"  {mark}  {f.path}  {size_text(f.size)}")
    for other in result.results:  # a target that could not even be planned
        for text in _error_lines(other, result.model_id):
            error_line(text)


def _render_results(result: PublishResult, quiet: bool) -> None:
    """One summary per target (:meth:`Output.summary`: ``--quiet`` keeps the failures);
    a failed target whose summary has no error line of its own gets one on stderr."""
    out = Output(quiet=quiet)
    for item in result.results:
        out.summary(item.lines(result.model_id), ok=item.ok)
        if not item.ok and not any(line.error for line in item.lines(result.model_id)):
            for text in _error_lines(item, result.model_id):
                error_line(text)


@click.command("register", cls=GoFlagsCommand)
@click.argument("ref")
@click.option(
    "--target",
    "-t",
    default=None,
    help="Instance to tell (default: $MLOS_CORE_ENDPOINT, else localhost).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the server's answer as JSON.")
@token_env_option
def register_cmd(ref: str, target: str | None, as_json: bool) -> None:
    """Register REF with an MLOS Core instance that already has its files (upstream
    compatible: POST /models/register)."""
    from axon.publish import register

    spec = target or os.environ.get("MLOS_CORE_ENDPOINT") or DEFAULT_TARGET
    try:
        model = _resolved(ref)  # default namespace, the only installed version
        answer = register(model, spec)
    except AxonError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, "target": spec, "response": answer}, indent=2))
    else:
        from axon.mlos_client import shown  # the server's text, made safe to print

        endpoint = answer.get("inference_endpoint")
        click.echo(f"registered {model} on {spec}" + (f" ({shown(endpoint)})" if endpoint else ""))


@click.command("status", cls=GoFlagsCommand)
@click.argument("ref")
@click.option("--target", "-t", default=DEFAULT_TARGET, show_default=True)
@bool_flag("--json", "as_json", help="Print one JSON object.")
@bool_flag("--full-verify", help="Re-hash the cached files (and a storage dir's files).")
@click.option(
    "--notify-instance",
    "readers",
    multiple=True,
    metavar="INSTANCE",
    help="Storage: also ask this instance whether it registered REF; repeatable.",
)
@token_env_option
def status_cmd(
    ref: str, target: str, as_json: bool, full_verify: bool, readers: tuple[str, ...]
) -> None:
    """Is REF on the target, which version, do its checksums match the cache, is it
    registered? Exit 0 when present and matching, 3 when absent, 5 when it differs.
    For a cluster: a matrix instance x (present, checksum ok, registered); exit 0 when every
    instance agrees, 9 when some do, 10 when none does. For storage (a shared dir, nfs://,
    s3://): every file checked against the cache, and each of its notify_instances asked;
    exit 8 when the files match but an instance has not registered REF."""
    from axon.publish import cluster_status_for, status
    from axon.publish.results import error_text

    try:
        model = _resolved(ref)  # default namespace, the only installed version
        matrix = cluster_status_for(model, target, full=full_verify)
    except AxonError as exc:
        _fail(exc, as_json)
    if matrix is not None:
        click.echo(json.dumps(matrix.to_dict(), indent=2) if as_json else "\n".join(matrix.lines()))
        sys.exit(matrix.exit_code)
    _storage_status(str(model), target, as_json, full_verify, readers)
    try:
        st = status(model, target, full=full_verify)
    except AxonError as exc:
        _fail(exc, as_json)
    code = 0 if st.ok else (EXIT_NOT_FOUND if not st.present else EXIT_INTEGRITY)
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
        sys.exit(code)
    reg = {True: "yes", False: "no", None: "unknown"}[st.registered]
    if st.present:
        match = {True: "yes", False: "NO", None: "unknown"}[st.checksums_match]
        click.echo(f"{st.model_id} on {st.target} ({st.method}): present at {st.location}")
        click.echo(f"  version: {st.version or '?'}  checksums match cache: {match}")
        for path in st.mismatched:
            click.echo(f"  differs: {path}")
    else:
        click.echo(f"{st.model_id} on {st.target} ({st.method}): not present")
    click.echo(f"  registered: {reg}")
    if st.error:
        click.echo(f"  note: {error_text(st.error, st.target)}", err=True)
    sys.exit(code)


def _storage_status(
    ref: str, target: str, as_json: bool, full: bool, readers: tuple[str, ...]
) -> None:
    """``axon status`` when TARGET is network storage: report and exit; else return."""
    from axon.publish.storage import storage_status_for

    try:
        st = storage_status_for(ref, target, full=full, readers=readers)
    except AxonError as exc:
        _fail(exc, as_json)
    if st is None:
        if readers:
            _fail(OptionError("--notify-instance applies to network storage targets"), as_json)
        return
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
    for line in st.lines():
        if line.error:
            error_line(line.text)
        elif not as_json:
            click.echo(line.text)
    sys.exit(st.exit_code)
