"""``axon init | install | list | info | verify | uninstall``: the dev cache commands.

Each parses its options, calls one function of :mod:`axon.cache` / :mod:`axon.install`, and
renders the result through :class:`axon.cli.output.Output`. Errors propagate to
:func:`axon.cli.main.main`, which prints one line and exits with the error's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from axon.cli.flags import GoFlagsCommand
from axon.cli.output import Output, human_bytes, json_option, quiet_option
from axon.cli.sign_cmds import report_signature, signature_field, signature_json, signature_options

if TYPE_CHECKING:
    from pathlib import Path

    from axon.cache import Cache, CachedModel
    from axon.progress import Progress
    from modelpkg.refs import ModelRef


def resolve_ref(ref: str, quiet: bool = False, **kw: Any) -> ModelRef:
    """The model ``ref`` means (default namespace, the only installed version: each said on
    stderr unless ``quiet``): :func:`axon.cache.resolve_configured`."""
    from axon.cache import resolve_configured
    from axon.cli.output import note_line

    return resolve_configured(ref, note=None if quiet else note_line, **kw)


def _cache() -> Cache:
    from axon.cache import Cache

    return Cache.from_config()


@contextmanager
def _progress(out: Output) -> Iterator[Progress]:
    if not out.human:  # --json / --quiet: no bars, and no rich import at all
        from axon.progress import NULL_PROGRESS

        yield NULL_PROGRESS
        return
    from axon.cli.progress_lines import PlainProgress, progress_mode

    mode = progress_mode(enabled=True)
    if mode == "lines":  # no terminal: a plain line every 10 s or 10%
        with PlainProgress() as lines:
            yield lines
        return
    from axon.cli.progress_view import progress_sink

    with progress_sink(enabled=mode == "bars") as sink:
        yield sink


@click.command("init", cls=GoFlagsCommand)
@json_option
def init_cmd(as_json: bool) -> None:
    """Create the config file (if missing) and the cache directories."""
    from axon.config import axon_home, default_config_path, load_config, write_default_config

    out = Output(as_json=as_json)
    path = default_config_path()
    created = not path.exists()
    if created:
        write_default_config(path, axon_home() / "cache")
    config = load_config()
    (config.cache_dir / "models").mkdir(parents=True, exist_ok=True)
    if as_json:
        out.json({"config": str(path), "created": created, "cache_dir": str(config.cache_dir)})
        return
    out.line(f"config: {path}{' (created)' if created else ' (exists, left as is)'}")
    out.line(f"cache:  {config.cache_dir}")


#: upstream ``axon install --format`` values that ask for a conversion (or a conversion's
#: choice of files): axon installs files as they are
CONVERSION_FORMATS = ("pytorch", "onnx", "gguf", "safetensors", "tensorflow", "tflite", "coreml")


def check_install_format(fmt: str) -> None:
    """``--format auto|native`` (upstream's flag) is a no-op; a conversion format is refused
    with a pointer (exit 2): axon does not convert models."""
    from axon.errors import OptionError

    value = fmt.strip().lower()
    if value in ("auto", "native"):
        return
    if value in CONVERSION_FORMATS:
        raise OptionError(
            f"--format {fmt}: axon does not convert models; it installs the files as they are",
            hint=f"convert it to {value} first (e.g. with your framework's exporter) and "
            "install the result, or drop --format (auto and native keep the files as they are)",
        )
    raise OptionError(
        f"--format {fmt!r} is not a format axon install knows",
        hint="use auto or native (the files as they are); axon does not convert models",
    )


@click.command("install", cls=GoFlagsCommand)
@click.argument("source")
@click.option(
    "--as", "as_ref", metavar="REF", help="Install as namespace/name[@version] (default: from "
    "the source's manifest, or hf/<repo>@<revision> for the Hub)."
)  # fmt: skip
@click.option(
    "--follow-symlinks", is_flag=True, help="Copy what a directory's symlinks point to, even "
    "outside it (default: only links to files inside it, or an HF snapshot's blobs/)."
)  # fmt: skip
@click.option(
    "-f", "--format", "fmt", metavar="auto|native", default="auto", show_default=True,
    help="Accepted for the upstream axon: the files are installed as they are (axon does not "
    "convert models, so auto and native mean the same).",
)  # fmt: skip
@json_option
@quiet_option
def install_cmd(
    source: str,
    as_ref: str | None,
    follow_symlinks: bool,
    fmt: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Install SOURCE into the cache: a model directory, a .axon archive or hf/<repo>[@rev]."""
    from axon.cache import Cache
    from axon.config import load_config
    from axon.install import install_source

    check_install_format(fmt)
    out = Output(as_json=as_json, quiet=quiet)
    config = load_config()
    if as_ref is not None:  # a bare name takes the default namespace (said on stderr)
        as_ref = str(resolve_ref(as_ref, quiet, config=config, pick_version=False))
    with _progress(out) as progress:
        model = install_source(
            source,
            as_ref=as_ref,
            cache=Cache(config.cache_dir),
            progress=progress,
            hf_token=config.registry.huggingface_token or None,
            follow_symlinks=follow_symlinks,
        )
    if as_json:
        out.json(model.to_dict())
        return
    fmt = model.manifest.execution_format or "unknown format"
    fw = f" ({model.manifest.framework})" if model.manifest.framework else ""
    out.line(
        f"installed {model.ref}: {len(model.manifest.files)} files, "
        f"{human_bytes(model.total_size)}, {fmt}{fw}"
    )
    out.line(f"  {model.path}")


@click.command("list", cls=GoFlagsCommand)
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["default", "names", "json"]),
    default="default",
    show_default=True,
    help="default: a table; names: namespace/name once per line; json: an array, one "
    "object per model (upstream's keys Namespace, Name, Version, Path, and ours).",
)
@json_option
def list_cmd(fmt: str, as_json: bool) -> None:
    """List the models in the cache (--json: one object with the cache dir and the models)."""
    out = Output(as_json=as_json)
    cache = _cache()
    models = cache.list()
    if as_json:
        out.json({"cache_dir": str(cache.root), "models": [m.to_dict() for m in models]})
        return
    if fmt == "json":  # upstream's shape: a bare array
        out.json([_upstream_keys(m) | m.to_dict() for m in models])
        return
    if fmt == "names":  # upstream: each namespace/name once, no version
        for name in dict.fromkeys(f"{m.ref.namespace}/{m.ref.name}" for m in models):
            click.echo(name)
        return
    if not models:
        out.line(f"no models in {cache.models_dir} (add one with `axon install SOURCE`)")
        return
    rows = [
        (
            str(m.ref),
            m.manifest.execution_format or "",
            len(m.files),
            human_bytes(m.total_size),
            m.installed_at or "",
        )
        for m in models
    ]
    out.table(["MODEL", "FORMAT", "FILES", "SIZE", "INSTALLED"], rows)


def _upstream_keys(model: CachedModel) -> dict[str, Any]:
    """The keys upstream's `axon list -f json` prints for a model (Go field names)."""
    ref = model.ref
    return {"Namespace": ref.namespace, "Name": ref.name, "Version": ref.version,
            "Path": str(model.path)}  # fmt: skip


@click.command("info", cls=GoFlagsCommand)
@click.argument("ref")
@json_option
def info_cmd(ref: str, as_json: bool) -> None:
    """Show a cached model: where it is, its format, io and files."""
    out = Output(as_json=as_json)
    model = _cache().get(resolve_ref(ref))
    if as_json:
        out.json({**model.to_dict(), "metadata": model.metadata, "manifest": model.manifest.data,
                  "signature": signature_json(model)})  # fmt: skip
        return
    _render_info(out, model)


def _render_info(out: Output, model: CachedModel) -> None:
    m = model.manifest
    out.fields(
        [
            ("model", str(model.ref)),
            ("path", str(model.path)),
            ("format", m.execution_format),
            ("framework", m.framework),
            ("description", m.metadata.get("description")),
            ("installed", model.installed_at),
            ("source", model.metadata.get("source")),
            ("size", f"{human_bytes(model.total_size)} in {len(model.files)} files"),
            ("signed", signature_field(model)),
        ]
    )
    io = m.data.get("spec", {}).get("io") if isinstance(m.data.get("spec"), dict) else None
    if isinstance(io, dict):
        for direction in ("inputs", "outputs"):
            names = [_tensor_text(t) for t in io.get(direction) or [] if isinstance(t, dict)]
            if names:
                out.line(f"{direction + ':':<12} {', '.join(names)}")
    out.line()
    rows = [(f.path, human_bytes(f.size), f.sha256[:16] or "-") for f in model.files]
    out.table(["FILE", "SIZE", "SHA256"], rows)


def _tensor_text(tensor: dict[str, Any]) -> str:
    shape = tensor.get("shape")
    dims = "x".join("?" if d == -1 else str(d) for d in shape) if isinstance(shape, list) else ""
    return f"{tensor.get('name')} {tensor.get('dtype', '')}[{dims}]"


@click.command("verify", cls=GoFlagsCommand)
@click.argument("ref")
@click.option("--full", is_flag=True, help="Re-read every file, even unchanged ones.")
@signature_options
@json_option
@quiet_option
def verify_cmd(
    ref: str,
    full: bool,
    signature: bool,
    trusted_keys: tuple[Path, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Check a cached model against its manifest: missing, extra and corrupt files.

    Files unchanged since they were last hashed (same inode, size, mtime and ctime) are not
    read again unless --full.
    """
    from axon.errors import IntegrityError
    from axon.progress import BytesTo

    out = Output(as_json=as_json, quiet=quiet)
    cache = _cache()
    with _progress(out) as progress:
        model = cache.get(resolve_ref(ref, quiet))
        progress.begin("verify", f"verifying {model.ref}", model.total_size or None)
        report = cache.verify(model.ref, full=full, on_bytes=BytesTo(progress, "verify"))
        progress.end("verify", ok=report.ok)
    if signature and report.ok:  # model.sig too (axon.cli.sign_cmds)
        report_signature(out, cache, report, trusted_keys)
        return
    if as_json:
        out.json(report.to_dict())
        if not report.ok:
            raise SystemExit(IntegrityError.exit_code)  # the report is the output
        return
    if report.ok and report.upstream:
        blank = len(report.unchecked)
        out.line(
            f"ok: {report.ref}: {report.files_checked} files present, written by the upstream "
            f"axon: {blank} of them without a size or sha256 in its manifest to compare with"
            f" ({report.files_hashed} read, {human_bytes(report.bytes_hashed)})"
        )
        return
    if report.ok:
        out.line(
            f"ok: {report.ref}: {report.files_checked} files match the manifest "
            f"({report.files_hashed} read, {human_bytes(report.bytes_hashed)})"
        )
        return
    for problem in report.problems:
        click.echo(f"  {problem}", err=True)
    raise IntegrityError(
        f"{report.ref} does not match its manifest: {len(report.problems)} problem(s), "
        "listed above",
        problems=report.problems,
        path=str(report.path),
        hint=f"reinstall it: axon install SOURCE --as {report.ref}",
    )


@click.command("uninstall", cls=GoFlagsCommand)
@click.argument("ref")
@json_option
@quiet_option
def uninstall_cmd(ref: str, as_json: bool, quiet: bool) -> None:
    """Remove a model from the cache."""
    out = Output(as_json=as_json, quiet=quiet)
    ref = str(resolve_ref(ref, quiet))
    path = _cache().uninstall(ref)
    if as_json:
        out.json({"removed": ref, "path": str(path)})
        return
    out.line(f"removed {ref} ({path})")
