"""``mlos-core`` command line (skeleton; the server is issue 3)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="axon-publish", prog_name="mlos-core")
def cli() -> None:
    """mlos-core: receive, store and register models for MLOS Core."""


def main() -> None:
    cli(prog_name="mlos-core")
