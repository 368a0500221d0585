"""Entry point: the command group, lazy command loading and the one place errors become
exit codes.

Commands live in sibling modules and are imported only when run, so ``axon --help`` stays
fast (no httpx, rich or yaml import for help).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

# command name -> "module:attribute" (a click.Command). Add new commands here.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("axon.cli.cache_cmds:init_cmd", "Create the config file and the cache."),
    "install": ("axon.cli.cache_cmds:install_cmd", "Install a model into the cache."),
    "list": ("axon.cli.cache_cmds:list_cmd", "List the models in the cache."),
    "info": ("axon.cli.cache_cmds:info_cmd", "Show a cached model's manifest and files."),
    "verify": ("axon.cli.cache_cmds:verify_cmd", "Check a cached model against its manifest."),
    "uninstall": ("axon.cli.cache_cmds:uninstall_cmd", "Remove a model from the cache."),
    "targets": ("axon.cli.targets_cmds:targets_group", "List and inspect publish targets."),
    "publish": (
        "axon.cli.publish_cmds:publish_cmd",
        "Publish a model to an instance, cluster or storage.",
    ),
    "register": (
        "axon.cli.publish_cmds:register_cmd",
        "Tell an instance about a model it already has.",
    ),
    "status": (
        "axon.cli.publish_cmds:status_cmd",
        "Show whether a target has a model, and in what state.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr = spec[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # not written yet
                return None
            raise
        cmd = getattr(module, attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def debug_enabled() -> bool:
    return os.environ.get("AXON_DEBUG", "") not in ("", "0", "false", "no")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="axon-publish", prog_name="axon")
@click.option("--debug", is_flag=True, help="Show tracebacks (same as AXON_DEBUG=1).")
def cli(debug: bool) -> None:
    """axon: publish ML model packages from your cache to MLOS Core instances, clusters
    and shared storage.

    Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 not found, 4 invalid input,
    5 integrity, 6 config, 7 transport, 8 not notified, 9 partial failure, 10 all failed,
    11 discovery, 130 interrupted. See docs/exit-codes.md.
    """
    if debug:
        os.environ["AXON_DEBUG"] = "1"


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI; turn every error into one line on stderr and a documented exit code."""
    from axon.errors import EXIT_ERROR, EXIT_INTERRUPTED, AxonError

    try:
        return cli.main(args=argv, prog_name="axon", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("axon: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except AxonError as exc:
        if debug_enabled():
            raise
        click.echo(f"axon: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("axon: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # a bug: say so, keep the traceback behind the debug flag
        if debug_enabled():
            raise
        click.echo(
            f"axon: unexpected error: {type(exc).__name__}: {exc} "
            "(this is a bug; run again with AXON_DEBUG=1 and report the traceback)",
            err=True,
        )
        sys.exit(EXIT_ERROR)
