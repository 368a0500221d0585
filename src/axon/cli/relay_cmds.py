"""``axon promote`` and ``axon sync``: members pull from members (docs/relay.md).

Each command parses its options, calls one library function (:func:`axon.publish.promote.
promote`, :func:`axon.publish.sync.sync`) and renders the result as ``axon publish`` does:
progress on stderr, a summary on stdout, ``--json`` one object, ``--quiet`` errors only;
the exit code is the result's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from axon.cli.flags import GoFlagsCommand
from axon.cli.output import Output
from axon.cli.publish_cmds import _fail, _progress, build_options
from axon.cli.targets_cmds import token_env_option
from axon.errors import AxonError

# the rollout options a promotion and a sync take (as axon publish does for a cluster)
ROLLOUT_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--atomic", is_flag=True, help="Stage on every member, then switch all."),
    click.option("--max-parallel", type=click.IntRange(1), help="Members at once."),
    click.option("--fail-fast", is_flag=True, help="Stop at the first failure."),
    click.option("--min-success", help="Successes needed, N or P%."),
    click.option("--batch-size", type=click.IntRange(1), help="Rolling batches of N."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON result object."),
    click.option("--quiet", "-q", is_flag=True, help="Print errors only."),
    click.option("--retries", type=click.IntRange(0, 100), default=5, show_default=True),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=None,
        help="Seconds per network operation (default: each instance's, else 30).",
    ),
    token_env_option,
]


def _with_rollout_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(ROLLOUT_OPTIONS):
        func = option(func)
    return func


def _render(result: Any, as_json: bool, quiet: bool, model_id: str = "") -> None:
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        Output(quiet=quiet).summary(result.lines(model_id), ok=result.ok)
    sys.exit(result.exit_code)


@click.command("promote", cls=GoFlagsCommand)
@click.argument("ref")
@click.option("--from", "source", required=True, help="The cluster that holds the build.")
@click.option("--to", "target", required=True, help="The cluster whose members pull it.")
@click.option("--dry-run", is_flag=True, help="Check the build and say who would pull.")
@_with_rollout_options
def promote_cmd(
    ref: str, source: str, target: str, as_json: bool, quiet: bool, **values: Any
) -> None:
    """Promote REF from one cluster to another: the members of --to pull the build the
    members of --from hold (checked against the cache's, or all --from members agree);
    no model bytes leave this machine."""
    from axon.publish.promote import promote

    try:
        options = build_options(**values)
    except AxonError as exc:
        _fail(exc, as_json)
    try:
        with _progress(enabled=not (as_json or quiet or options.dry_run)) as progress:
            result = promote(ref, source, target, options, progress)
    except AxonError as exc:
        _fail(exc, as_json)
    _render(result, as_json, quiet, ref)


@click.command("sync", cls=GoFlagsCommand)
@click.argument("cluster")
@click.argument("ref", required=False)
@click.option(
    "--forget",
    is_flag=True,
    help="Remove REF from the cluster's desired state (etcd) instead: members stop catching "
    "up on it; what they hold stays.",
)
@_with_rollout_options
def sync_cmd(
    cluster: str, ref: str | None, forget: bool, as_json: bool, quiet: bool, **values: Any
) -> None:
    """Make the lagging members of CLUSTER pull REF (default: every model of the cluster's
    desired state, else every model a member has) from the members that have the right
    build; the status matrix before and after. With --forget: remove REF from the cluster's
    desired state."""
    from axon.publish.sync import forget as forget_model
    from axon.publish.sync import sync

    if forget and not ref:
        raise click.UsageError("--forget needs the REF to remove from the desired state")
    try:
        options = build_options(**values)
    except AxonError as exc:
        _fail(exc, as_json)
    try:
        if forget:
            assert ref is not None
            _render(forget_model(cluster, ref, options), as_json, quiet)
        with _progress(enabled=not (as_json or quiet)) as progress:
            result = sync(cluster, ref, options, progress)
    except AxonError as exc:
        _fail(exc, as_json)
    _render(result, as_json, quiet)
