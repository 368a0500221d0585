"""The only place publish progress is drawn: a rich bar per file (bytes, rate, ETA).

:class:`RichProgress` implements :class:`axon.progress.Progress`; library code calls it from
any thread (rich's Progress guards its tasks with a lock; our key -> task map has its own).
Bars go to stderr so ``stdout`` stays clean for results. ``--json`` and ``--quiet`` use
:data:`axon.progress.NULL_PROGRESS` instead (see :func:`progress_sink`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.text import Text

from axon.cli.output import human_bytes
from axon.progress import NULL_PROGRESS
from axon.progress import Progress as ProgressSink


@dataclass
class _Work:
    """What a task really did: bytes moved or hashed (not skipped) since it began."""

    worked: int = 0
    since: float | None = None
    ended: bool = False


class _RateColumn(ProgressColumn):
    """Bytes per second of real work: bytes the hash index knew, or a resumed upload's
    offset, are done but were not transferred, so they are no part of a rate."""

    def __init__(self, owner: RichProgress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        rate = self.owner.rate_of_task(task.id)
        if rate is None:
            return Text("?", style="progress.data.speed")
        return Text(f"{human_bytes(rate)}/s", style="progress.data.speed")


class _StateColumn(ProgressColumn):
    """Time left at the real rate; ``finishing`` for a task whose bytes are all counted but
    that has not ended (the last S3 parts completing, a commit)."""

    def __init__(self, owner: RichProgress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        return Text(self.owner.state_of_task(task), style="progress.remaining")


class RichProgress:
    """A progress sink drawing one rich bar per task key."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _RateColumn(self),
            _StateColumn(self),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._work: dict[TaskID, _Work] = {}
        # Two locks, so no thread ever waits for rich while holding what rich's drawing waits
        # for: the refresh thread draws our columns while holding the Live's lock, and the
        # columns take ``_lock``, so ``_lock`` is never held across a call into rich.
        # ``_begin`` (one task per key) is held across ``add_task``, which draws, but drawing
        # never takes it.
        self._lock = threading.Lock()
        self._begin = threading.Lock()

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
        with self._begin:
            task = self._tasks.get(key)
            if task is None:
                task = self._bars.add_task(description, total=total)
                with self._lock:
                    self._work[task] = _Work(since=time.monotonic())
                self._tasks[key] = task
                return
        with self._lock:
            self._work[task] = _Work(since=time.monotonic())
        self._bars.reset(task, total=total, description=description)

    def advance(self, key: str, nbytes: int) -> None:
        task = self._tasks.get(key)
        if task is not None:
            with self._lock:
                work = self._work.setdefault(task, _Work())
                work.worked += nbytes
                if work.since is None:
                    work.since = time.monotonic()
            self._bars.advance(task, nbytes)

    def skip(self, key: str, nbytes: int) -> None:
        """``nbytes`` done without work (a sha256 the hash index knew, a resumed offset):
        the bar moves, the rate does not."""
        task = self._tasks.get(key)
        if task is not None:
            self._bars.advance(task, nbytes)

    def expect(self, target: str, total: int, done: int = 0) -> None:
        """A target's whole total (:func:`axon.progress.expect`): a target drawn as one bar
        (a cluster member's line, keyed by its name) shows what it receives, not the model's
        size; a single instance's per-file bars have their own totals."""
        task = self._tasks.get(target)
        if task is not None:
            self._bars.update(task, total=total, completed=min(done, total))

    def rate_of(self, key: str) -> float | None:
        task = self._tasks.get(key)
        return self.rate_of_task(task) if task is not None else None

    def rate_of_task(self, task: TaskID) -> float | None:
        """Bytes per second of real work since the first of it (None before any)."""
        with self._lock:
            work = self._work.get(task)
            if work is None or work.since is None:
                return None
            elapsed = time.monotonic() - work.since
            return work.worked / elapsed if elapsed > 0 else None

    def state_of(self, key: str) -> str:
        task = self._tasks.get(key)
        if task is None:
            return ""
        return self.state_of_task(self._bars.tasks[self._index(task)])

    def state_of_task(self, task: Task) -> str:
        with self._lock:
            ended = self._work.get(task.id, _Work()).ended
        if ended:
            return ""
        if task.total is not None and task.completed >= task.total:
            return "finishing…"
        rate = self.rate_of_task(task.id)
        if not rate or task.total is None:
            return "-:--:--"
        left = int((task.total - task.completed) / rate)
        return f"{left // 3600}:{left // 60 % 60:02}:{left % 60:02}"

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        task = self._tasks.get(key)
        if task is None:
            return
        with self._lock:
            self._work.setdefault(task, _Work()).ended = True
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
