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
    "sign": ("axon.cli.sign_cmds:sign_cmd", "Sign a cached model (model.sig, OpenSSF format)."),
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
    "promote": (
        "axon.cli.relay_cmds:promote_cmd",
        "Promote a model to another cluster (its members pull it).",
    ),
    "sync": (
        "axon.cli.relay_cmds:sync_cmd",
        "Make a cluster's lagging members pull from the others.",
    ),
    "version": ("axon.cli.upstream_cmds:version_cmd", "Show version information."),
    "cache": ("axon.cli.upstream_cmds:cache_group", "List, measure and clean the cache."),
    "config": ("axon.cli.config_cmds:config_group", "Get, set and list config values."),
    "completion": (
        "axon.cli.upstream_cmds:completion_cmd",
        "Print the shell completion script (bash, zsh, fish).",
    ),
    "help": ("axon.cli.upstream_cmds:help_cmd", "Help about any command."),
}

# Commands of the upstream Go axon that this axon does not have: what to use instead.
# `axon NAME ...` prints the pointer as an error and exits 2 (a usage error).
POINTERS: dict[str, str] = {
    "search": "this axon has no model registry to search: find models on the Hugging Face "
    "Hub (https://huggingface.co/models), install one with `axon install hf/<repo>[@revision]`, "
    "and list what you have with `axon list`",
    "registry": "this axon installs from directories, .axon archives and the Hugging Face Hub, "
    "not from an axon registry: set a Hub token with `axon config set "
    "registry.huggingface_token TOKEN` (or HF_TOKEN), a Hub mirror with HF_ENDPOINT",
    "update": "install the new version next to the old one (`axon install SOURCE --as "
    "namespace/name@NEW`), publish it (`axon publish namespace/name@NEW -t TARGET`), then "
    "`axon uninstall namespace/name@OLD`",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return _pointer(cmd_name) if cmd_name in POINTERS else None
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


def _pointer(name: str) -> click.Command:
    """A hidden command for an upstream command we do not have: one line, exit 2."""

    def run(args: tuple[str, ...]) -> None:
        raise click.UsageError(f"`axon {name}` is an upstream axon command; {POINTERS[name]}")

    return click.Command(
        name,
        callback=run,
        params=[click.Argument(["args"], nargs=-1)],
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
        hidden=True,
        add_help_option=False,
    )


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
    except click.exceptions.NoArgsIsHelpError as exc:  # `axon cache`: its help, as upstream
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(0)
    except click.UsageError as exc:  # the usage line, then the error in the one shape
        if exc.ctx is not None and exc.cmd is not None and exc.cmd.name not in POINTERS:
            click.echo(exc.ctx.get_usage(), err=True)
            where = exc.ctx.command_path
            click.echo(f"axon: error: {exc.format_message()} (see `{where} --help`)", err=True)
        else:
            click.echo(f"axon: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"axon: error: {exc.format_message()}", err=True)
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
