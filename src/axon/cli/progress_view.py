"""The only place publish progress is drawn: a rich bar per file (bytes, rate, ETA).

:class:`RichProgress` implements :class:`axon.progress.Progress`; library code calls it from
any thread (rich's Progress guards its tasks with a lock; our key -> task map has its own).
Bars go to stderr so ``stdout`` stays clean for results. ``--json`` and ``--quiet`` use
:data:`axon.progress.NULL_PROGRESS` instead (see :func:`progress_sink`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from axon.progress import NULL_PROGRESS
from axon.progress import Progress as ProgressSink


class RichProgress:
    """A progress sink drawing one rich bar per task key."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bars.stop()

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                self._tasks[key] = self._bars.add_task(description, total=total)
                return
        self._bars.reset(task, total=total, description=description)

    def advance(self, key: str, nbytes: int) -> None:
        task = self._tasks.get(key)
        if task is not None:
            self._bars.advance(task, nbytes)

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        task = self._tasks.get(key)
        if task is None:
            return
        description = self._bars.tasks[self._index(task)].description
        mark = "ok" if ok else "FAILED"
        suffix = f" [{mark}{': ' + note if note else ''}]"
        if ok:
            total = self._bars.tasks[self._index(task)].total
            self._bars.update(task, completed=total, description=description + suffix)
        else:
            self._bars.update(task, description=description + suffix)
        self._bars.stop_task(task)

    def message(self, text: str) -> None:
        self._bars.console.print(text, markup=False, highlight=False)

    def _index(self, task: TaskID) -> int:
        for i, t in enumerate(self._bars.tasks):
            if t.id == task:
                return i
        raise KeyError(task)


@contextmanager
def progress_sink(*, enabled: bool) -> Iterator[ProgressSink]:
    """A live :class:`RichProgress` when ``enabled`` (and stderr is a terminal), else a no-op."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield NULL_PROGRESS
        return
    with RichProgress(console) as sink:
        yield sink
