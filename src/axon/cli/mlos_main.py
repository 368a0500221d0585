"""``mlos``: commands that use the models MLOS Core instances serve (``axon`` publishes them).

``mlos federated evaluate MODEL --target CLUSTER``: evaluate one build of MODEL on every
participant's local data and print one line per participant and the example-weighted
aggregate (:mod:`axon.federated`). Targets and tokens come from axon's config
(``~/.axon/config.yaml``); errors and exit codes are axon's (docs/exit-codes.md).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from axon.cli.output import Output

if TYPE_CHECKING:
    from axon.federated import Evaluation, Participant

PROG = "mlos"
CHOSEN = {  # how the evaluated build was chosen, as the header says it
    "cache": ", the local cache's",
    "majority": ", held by most participants",
    "tie": ": participants hold different builds in equal numbers, none chosen",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="axon-publish", prog_name=PROG)
@click.option("--debug", is_flag=True, help="Show tracebacks (same as AXON_DEBUG=1).")
def cli(debug: bool) -> None:
    """mlos: use the models MLOS Core instances serve (axon publishes them).

    Exit codes as axon's: 0 ok, 2 usage, 3 not found, 4 invalid input, 6 config,
    7 transport, 9 some participants failed, 10 all failed, 11 discovery.
    """
    if debug:
        os.environ["AXON_DEBUG"] = "1"


@cli.group()
def federated() -> None:
    """Federated evaluation: only aggregates leave each participant."""


@federated.command("evaluate")
@click.argument("model")
@click.option("--target", "-t", required=True, help="Cluster (or instance) of participants.")
@click.option(
    "--dataset", help="Dataset each participant evaluates on. Default: the model's ns/name."
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    type=click.Choice(["accuracy", "loss", "mse", "mae"]),
    help="Repeatable. Default: accuracy and loss for class labels, mse and mae otherwise.",
)
@click.option("--min-success", help="Participants that must answer, N or P% (default: all).")
@click.option("--strict", is_flag=True, help="Evaluate nothing if any participant's build differs.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds one participant may take to evaluate.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def evaluate_cmd(
    model: str,
    target: str,
    dataset: str | None,
    metrics: tuple[str, ...],
    min_success: str | None,
    strict: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Evaluate MODEL on every participant of --target; print each one's result and the
    example-weighted mean of each metric."""
    from axon.federated import evaluate

    out = Output(as_json=as_json)
    result = evaluate(
        model,
        target,
        dataset=dataset,
        metrics=list(metrics) or None,
        min_success=min_success,
        strict=strict,
        timeout=timeout,
    )
    if as_json:
        out.json(result.to_dict())
    else:
        _print(result)
    sys.exit(result.exit_code)


def _fmt(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in metrics.items())


def _print(result: Evaluation) -> None:
    dataset = result.dataset or "each participant's default"
    build = (result.build or "none")[:12]
    how = CHOSEN.get(result.chosen, "")
    click.echo(
        f"federated evaluation of {result.model} (build {build}{how}) on {result.target}, "
        f"dataset {dataset}:"
    )
    width = max(len(p.name) for p in result.participants)
    for p in result.participants:
        if p.ok:
            click.echo(
                f"  {p.name:<{width}}  {p.examples:>8} examples  {_fmt(p.metrics)}  "
                f"{p.seconds:.2f}s"
            )
        elif p.left_out:
            click.echo(f"  {p.name:<{width}}  left out: {p.left_out}")
        else:
            click.echo(f"  {p.name:<{width}}  error: {p.error}")
    answered, total = len(result.answered), len(result.participants)
    if answered:
        click.echo(
            f"aggregate over {answered} of {total} participants ({result.examples} examples): "
            f"{_fmt(result.aggregate)}"
        )
    else:
        click.echo(f"no participant answered (0 of {total}): no aggregate", err=True)
    if result.exit_code:
        why = []
        if result.left_out:
            why.append(f"{len(result.left_out)} left out ({_names(result.left_out)})")
        if result.failed:
            why.append(f"{len(result.failed)} failed ({_names(result.failed)})")
        click.echo(
            f"{PROG}: error: {answered} of {total} participants evaluated, needed "
            f"{result.required}: {', '.join(why)}",
            err=True,
        )


def _names(parts: list[Participant]) -> str:
    return ", ".join(p.name for p in parts)


def _debug() -> bool:
    return os.environ.get("AXON_DEBUG", "") not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> Any:
    """Run ``mlos``: every error one line on stderr and a documented exit code."""
    from axon.errors import EXIT_ERROR, EXIT_INTERRUPTED, AxonError

    try:
        return cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except AxonError as exc:
        if _debug():
            raise
        click.echo(f"{PROG}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        if _debug():
            raise
        click.echo(
            f"{PROG}: unexpected error: {type(exc).__name__}: {exc} "
            "(this is a bug; run again with AXON_DEBUG=1 and report the traceback)",
            err=True,
        )
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":  # python -m axon.cli.mlos_main
    main()
