"""The upstream Go axon's other commands, where they fit publishing: ``axon version``,
``axon cache list|stats|clean``, ``axon completion SHELL`` and ``axon help [COMMAND]``
(``axon config`` is :mod:`axon.cli.config_cmds`).

Names, arguments and the shape of the human output follow the upstream CLI (``axon cache
list`` prints ``Cached models:`` then one ``ns/name@version`` per line), so scripts written
for it keep working; ``--json`` gives one object for ours.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import click

from axon.cli.flags import GoFlagsCommand
from axon.cli.output import Output, human_bytes, json_option

#: the upstream CLI whose command names and flags this one follows (docs/compatibility.md)
UPSTREAM_CLI = "axon 3.0.0 (commit f31e1bc)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("axon-publish")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


@click.command("version", cls=GoFlagsCommand)
@json_option
def version_cmd(as_json: bool) -> None:
    """Show version information (as upstream's `axon version`)."""
    info = {
        "version": _version(),
        "package": "axon-publish",
        "python": platform.python_version(),
        "os_arch": f"{sys.platform}/{platform.machine()}",
        "cli_compatible_with": UPSTREAM_CLI,
    }
    out = Output(as_json=as_json)
    if as_json:
        out.json(info)
        return
    out.fields(
        [
            ("Axon Version", info["version"]),
            ("Package", info["package"]),
            ("Python", info["python"]),
            ("OS/Arch", info["os_arch"]),
            ("Compatible", f"command line of the upstream {UPSTREAM_CLI}"),
        ]
    )


# ---- axon cache -----------------------------------------------------------------------------
@click.group("cache")
def cache_group() -> None:
    """Manage the cache (~/.axon/cache, or cache_dir in the config)."""


@cache_group.command("list", cls=GoFlagsCommand)
@json_option
def cache_list_cmd(as_json: bool) -> None:
    """List cached models, one namespace/name@version per line."""
    from axon.cache import Cache

    cache = Cache.from_config()
    models = cache.list()
    out = Output(as_json=as_json)
    if as_json:
        out.json({"cache_dir": str(cache.root), "models": [m.to_dict() for m in models]})
        return
    if not models:
        out.line("No cached models.")
        return
    out.line("Cached models:")
    for m in models:
        out.line(f"  {m.ref}")


@cache_group.command("stats", cls=GoFlagsCommand)
@json_option
def cache_stats_cmd(as_json: bool) -> None:
    """Cache statistics: where it is, how many models, files and bytes."""
    from axon.cache import Cache

    cache = Cache.from_config()
    models = cache.list()
    disk = _disk_usage(cache.root)
    stats: dict[str, Any] = {
        "cache_dir": str(cache.root),
        "models": len(models),
        "files": sum(len(m.files) for m in models),
        "model_bytes": sum(m.total_size for m in models),
        "disk_bytes": disk,
        "hash_index": str(cache.index.path) if cache.index.path else None,
    }
    out = Output(as_json=as_json)
    if as_json:
        out.json(stats)
        return
    out.line("Cache statistics:")
    out.line(f"  Cache dir:  {cache.root}")
    out.line(f"  Models:     {len(models)} ({stats['files']} files)")
    models_size = human_bytes(stats["model_bytes"])
    out.line(f"  Total size: {human_bytes(disk)} on disk ({models_size} of models)")


def _disk_usage(root: os.PathLike[str] | str) -> int:
    """Bytes of every regular file under ``root`` (hard links counted once); 0 if absent."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@cache_group.command("clean", cls=GoFlagsCommand)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="Only leftovers at least this old (an install running now is younger).",
)
@json_option
def cache_clean_cmd(older_than: float, as_json: bool) -> None:
    """Remove what interrupted installs and uninstalls left in the cache (staging and
    set-aside directories). Installed models are never touched: remove one with
    `axon uninstall REF`."""
    from axon.cache import Cache
    from modelpkg.layout import is_leftover

    cache = Cache.from_config()
    removed: list[Path] = []
    freed = 0
    if cache.models_dir.is_dir():
        # measured before they go (what clean_leftovers may remove)
        sizes = {p: _disk_usage(p) for p in cache.models_dir.rglob("*") if is_leftover(p.name)}
        removed = cache.clean_stale(max_age=older_than)
        freed = sum(sizes.get(p, 0) for p in removed)
    out = Output(as_json=as_json)
    if as_json:
        out.json({"removed": [str(p) for p in removed], "freed_bytes": freed})
        return
    if not removed:
        out.line(f"Cache is clean: no leftovers of interrupted installs in {cache.models_dir}")
        return
    for path in removed:
        out.line(f"removed {path}")
    out.line(f"Freed {human_bytes(freed)} ({len(removed)} leftover(s))")


# ---- axon completion / help -----------------------------------------------------------------
SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice([*SHELLS, "powershell"]))
def completion_cmd(shell: str) -> None:
    """Print the completion script for SHELL. Load it with, e.g.:

    \b
      bash:  eval "$(axon completion bash)"
      zsh:   eval "$(axon completion zsh)"
      fish:  axon completion fish > ~/.config/fish/completions/axon.fish
    """
    from click.shell_completion import get_completion_class

    from axon.cli.main import cli

    if shell == "powershell":
        raise click.UsageError(
            "no PowerShell completion: click, which draws this CLI, completes bash, zsh and "
            "fish (run axon under WSL for those)"
        )
    complete = get_completion_class(shell)
    assert complete is not None
    click.echo(complete(cli, {}, "axon", "_AXON_COMPLETE").source())


@click.command("help")
@click.argument("command", nargs=-1)
@click.pass_context
def help_cmd(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Help about any command: axon help [COMMAND [SUBCOMMAND]]."""
    from axon.cli.main import cli

    current: click.Command = cli
    parent = ctx.find_root()
    sub_ctx = parent
    for name in command:
        if not isinstance(current, click.Group):
            raise click.UsageError(f"{sub_ctx.command_path} has no subcommand {name!r}")
        found = current.get_command(sub_ctx, name)
        if found is None:
            raise click.UsageError(
                f"unknown command {name!r} (run `{sub_ctx.command_path} --help` for the list)"
            )
        current = found
        sub_ctx = click.Context(found, info_name=name, parent=sub_ctx)
    click.echo(current.get_help(sub_ctx))
