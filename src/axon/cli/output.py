"""One output object for every command: human text, ``--json`` or ``--quiet``.

Human tables use rich, imported only when a table is drawn (``axon --help`` stays fast).
JSON goes to stdout as one object; human results go to stdout, notes to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from axon.progress import size_text

if TYPE_CHECKING:
    from axon.publish.results import Line

F = Callable[..., Any]


def human_bytes(n: float) -> str:
    """``4.2 MiB``-style sizes (binary units, as ``du -h``), up to TiB."""
    return size_text(n, largest="TiB")


@dataclass
class Output:
    """How a command prints: ``as_json`` (one JSON object), ``quiet`` (errors only)."""

    as_json: bool = False
    quiet: bool = False

    @property
    def human(self) -> bool:
        return not self.as_json and not self.quiet

    def json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, default=str))

    def line(self, text: str = "") -> None:
        """A result line on stdout (human mode only)."""
        if self.human:
            click.echo(text)

    def note(self, text: str) -> None:
        """A side remark on stderr (human mode only)."""
        if self.human:
            click.echo(text, err=True)

    def table(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None
    ) -> None:
        """A human table (rich, imported only now); plain text when stdout is not a tty."""
        if not self.human:
            return
        from rich.console import Console
        from rich.table import Table

        console = Console(soft_wrap=True)
        if not console.is_terminal:
            _plain_table(columns, rows, title)
            return
        table = Table(title=title, show_edge=False, header_style="bold")
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)

    def summary(self, lines: Sequence[Line], *, ok: bool) -> None:
        """A result's summary: its lines on stdout, error lines on stderr (``axon: error:``).
        ``--quiet`` prints only the summary of a failure, all of it on stderr; ``--json``
        prints none (the result object says it all)."""
        if self.as_json or (self.quiet and ok):
            return
        for line in lines:
            if line.error:
                error_line(line.text)
            else:
                click.echo(line.text, err=self.quiet)

    def fields(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """``key: value`` lines, aligned."""
        if not self.human:
            return
        width = max((len(k) for k, _ in pairs), default=0)
        for key, value in pairs:
            if value not in (None, "", []):
                click.echo(f"{key + ':':<{width + 1}} {value}")


def error_line(text: str) -> None:
    """The one shape of every error axon prints: ``axon: error: ...`` on stderr."""
    click.echo(f"axon: error: {text}", err=True)


def note_line(text: str) -> None:
    """A remark about what a command assumed (``axon: note: ...`` on stderr, any mode)."""
    click.echo(f"axon: note: {text}", err=True)


def _plain_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None) -> None:
    text_rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text_rows]) for i, c in enumerate(columns)]
    if title:
        click.echo(title)
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in text_rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)


def quiet_option(func: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="Print errors only.")(func)
