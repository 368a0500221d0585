"""Progress without a terminal: one plain line on stderr per target every 10 s or 10%.

A CI log cannot draw bars, and a publish that prints nothing for minutes looks hung. Without
a terminal, :class:`PlainProgress` (a :class:`axon.progress.Progress` sink) folds the tasks
of each target (one per file or batch of files, keyed ``"<target>:<what>"``) into one
line per target and prints it when the target passes another 10% of its bytes, or every
``AXON_PROGRESS_INTERVAL`` seconds (default 10) while it has not. A publish tells the sink
each target's whole total before its files begin (:meth:`PlainProgress.expect`), so the
percentage is of everything the target receives and never steps back as files start::

    axon: progress: mlos-1: 40% (40.0 of 100.0 MiB, 12.3 MiB/s, 4 s)
    axon: progress: mlos-1: 40% (40.0 of 100.0 MiB), nothing moved for 10 s
    axon: progress: mlos-1: waiting 10 s: connection refused; retrying in 8.0 s (3/5)

Retry messages are printed when they happen, and the periodic line of a target that is
waiting says so and why. Bytes that needed no work (a file whose sha256 the hash index
knew, an upload resumed at an offset: :meth:`PlainProgress.skip`) count toward the
percentage, never toward the rate.

``AXON_PROGRESS`` picks the display: ``auto`` (bars on a terminal, lines otherwise),
``bars``, ``lines`` or ``off``; :func:`progress_mode` decides.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TextIO

from axon.progress import size_text

DEFAULT_INTERVAL = 10.0
STEP_PERCENT = 10
MIN_GAP = 1.0  # seconds: no 10% line sooner than this after the previous line


def progress_mode(*, enabled: bool, stream: TextIO | None = None) -> str:
    """``bars``, ``lines`` or ``off``: ``AXON_PROGRESS`` when set, else bars on a terminal
    and lines without one. ``enabled`` False (``--json``, ``--quiet``, a dry run) is off."""
    if not enabled:
        return "off"
    wanted = os.environ.get("AXON_PROGRESS", "auto").strip().lower()
    if wanted in ("bars", "lines", "off"):
        return wanted
    return "bars" if (stream or sys.stderr).isatty() else "lines"


def interval_from_env() -> float:
    """``AXON_PROGRESS_INTERVAL`` seconds (at least 0.05), default 10."""
    try:
        return max(0.05, float(os.environ.get("AXON_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


@dataclass
class _Group:
    """One target's (or one local step's) progress, across its tasks."""

    label: str
    total: int = 0
    unknown_total: bool = False
    done: int = 0  # bytes done, skipped ones included
    worked: int = 0  # bytes actually moved or hashed (the rate)
    started: float = field(default_factory=lambda: time.monotonic())
    first_work: float | None = None
    aliases: set[str] = field(default_factory=set)  # the keys and names messages start with
    open_tasks: set[str] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)
    last_line: float = field(default_factory=lambda: time.monotonic())
    last_moved: float = field(default_factory=lambda: time.monotonic())
    printed_step: int = 0  # the last 10% step printed
    printed: bool = False  # a line about it was printed (then its end gets one too)
    waiting: str = ""  # the last retry message, until bytes move again
    waiting_since: float = 0.0
    finished: bool = False
    expected: bool = False  # the publish gave the whole total up front (expect)

    @property
    def percent(self) -> int | None:
        if self.unknown_total or self.total <= 0:
            return None
        return min(100, int(self.done * 100 / self.total))


class PlainProgress:
    """A :class:`~axon.progress.Progress` sink printing plain lines (see the module)."""

    def __init__(self, stream: TextIO | None = None, *, interval: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval if interval is not None else interval_from_env()
        self._groups: dict[str, _Group] = {}
        self._task_group: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # ---- context: the ticker thread prints the periodic lines ----------------------------
    def __enter__(self) -> PlainProgress:
        self._ticker = threading.Thread(target=self._tick, name="axon-progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        with self._lock:  # each target's last line: done, or stopped and why
            lines = [self._final(g) for g in self._groups.values() if g.printed and not g.finished]
            for group in self._groups.values():
                group.finished = True
        for text in lines:
            self._print(text)

    def _tick(self) -> None:
        step = min(1.0, self.interval / 4)
        while not self._stop.wait(step):
            now = time.monotonic()
            lines: list[str] = []
            with self._lock:
                for group in self._groups.values():
                    if group.finished or not (group.open_tasks or group.waiting):
                        continue
                    if now - group.last_line >= self.interval:
                        lines.append(self._status(group, now))
                        group.last_line = now
            for text in lines:
                self._print(text)

    # ---- the Progress protocol ---------------------------------------------------------
    def begin(self, key: str, description: str, total: int | None = None) -> None:
        label = _group_of(key, description)
        with self._lock:
            group = self._groups.get(label)
            if group is None or group.finished:
                group = self._groups[label] = _Group(label)
            self._task_group[key] = label
            group.aliases.add(key)
            if key not in group.open_tasks:
                group.open_tasks.add(key)
                if group.expected:  # its total is the whole target's, given up front
                    pass
                elif total is None:
                    group.unknown_total = True
                else:  # no total up front: it grows as the target's files start
                    group.total += total
                    group.printed_step = (group.percent or 0) // STEP_PERCENT

    def expect(self, target: str, total: int, done: int = 0) -> None:
        """``target`` receives ``total`` bytes in all, ``done`` of them there already (see
        :func:`axon.progress.expect`): its percentage is of the whole from the first line
        on. Called again on a retry: the state is reset to what the target holds now."""
        with self._lock:
            group = self._groups.get(target)
            if group is None or group.finished:  # a cluster member's line: keyed by its name
                group = next(
                    (g for g in self._groups.values() if not g.finished and target in g.aliases),
                    None,
                )
            if group is None:
                group = self._groups[target] = _Group(target, aliases={target})
            group.expected, group.unknown_total = True, False
            group.total, group.done = total, min(done, total)
            group.failed.clear()  # a retry: what failed before is being sent again
            group.printed_step = max(group.printed_step, (group.percent or 0) // STEP_PERCENT)

    def advance(self, key: str, nbytes: int) -> None:
        self._add(key, nbytes, worked=True)

    def skip(self, key: str, nbytes: int) -> None:
        """``nbytes`` of the task done without work (known hash, resumed offset)."""
        self._add(key, nbytes, worked=False)

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        text = ""
        with self._lock:
            label = self._task_group.pop(key, None)
            group = self._groups.get(label) if label else None
            if group is None:
                return
            group.open_tasks.discard(key)
            if not ok:
                what = key[len(group.label) + 1 :] if key.startswith(group.label + ":") else key
                group.failed.append(f"{what}: {note}" if note else what)
                if not group.open_tasks and group.printed:  # say so now, not at exit
                    group.finished = True
                    text = self._final(group)
        if text:
            self._print(text)

    def message(self, text: str) -> None:
        """Printed at once; a retry message (``"<target>: why; retrying in 2.0 s"``) also
        marks its target as waiting, which its periodic line then says."""
        now = time.monotonic()
        with self._lock:
            group = next(
                (
                    g
                    for g in self._groups.values()
                    if not g.finished and any(text.startswith(f"{a}: ") for a in g.aliases)
                ),
                None,
            )
            if group is None and "retrying in" in text and ": " in text:
                label = text.split(": ", 1)[0]  # a target that has not sent anything yet
                group = self._groups[label] = _Group(label, aliases={label})
            if group is not None and "retrying in" in text:
                alias = next(a for a in group.aliases if text.startswith(f"{a}: "))
                group.waiting, group.waiting_since = text[len(alias) + 2 :], now
                group.last_line = now
        self._print(f"axon: {text}")

    # ---- internals -----------------------------------------------------------------------
    def _add(self, key: str, nbytes: int, *, worked: bool) -> None:
        if nbytes <= 0:
            return
        text = ""
        now = time.monotonic()
        with self._lock:
            label = self._task_group.get(key)
            group = self._groups.get(label) if label else None
            if group is None:
                return
            group.done += nbytes
            if worked:
                group.worked += nbytes
                group.first_work = group.first_work or now
                group.last_moved = now
                group.waiting = ""
            pct = group.percent
            step = (pct or 0) // STEP_PERCENT
            # a 10% step is a line, unless the last line was just now (a quick publish
            # prints nothing: its summary says it all)
            if (
                pct is not None
                and step > group.printed_step
                and pct < 100
                and now - group.last_line >= min(MIN_GAP, self.interval)
            ):
                group.printed_step = step
                group.last_line = now
                text = self._status(group, now)
        if text:
            self._print(text)

    def _amount(self, group: _Group) -> str:
        if group.percent is None:
            return size_text(group.done)
        return f"{group.percent}% ({size_text(group.done)} of {size_text(group.total)}"

    def _status(self, group: _Group, now: float) -> str:
        group.printed = True
        head = f"axon: progress: {group.label}: "
        if group.waiting:
            waited = now - group.waiting_since
            return f"{head}waiting, {waited:.0f} s since: {group.waiting}"
        amount = self._amount(group)
        close = ")" if group.percent is not None else ""
        idle = now - group.last_moved
        if idle >= self.interval:
            return f"{head}{amount}{close}, nothing moved for {idle:.0f} s"
        extra = ""
        if group.worked and now > group.started:
            rate = group.worked / (now - group.started)
            extra = f", {size_text(rate)}/s"
        elapsed = now - group.started
        if group.percent is None:
            return f"{head}{amount} ({elapsed:.0f} s{extra})"
        return f"{head}{amount}{extra}, {elapsed:.0f} s)"

    def _final(self, group: _Group) -> str:
        elapsed = time.monotonic() - group.started
        head = f"axon: progress: {group.label}: "
        if group.failed:
            return f"{head}stopped after {elapsed:.1f} s: {'; '.join(group.failed)}"
        skipped = group.done - group.worked
        known = f", {size_text(skipped)} needed no work" if skipped > 0 else ""
        return f"{head}done, {size_text(group.done)} in {elapsed:.1f} s{known}"

    def _print(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not fail the publish
            pass


def _group_of(key: str, description: str) -> str:
    """The target a task belongs to: ``key`` is ``"<target>:<description>"`` for a file (or
    batch) sent to a target; any other task (``verify``: hashing the cache) is its own group,
    named by its description."""
    suffix = f":{description}"
    if key.endswith(suffix) and len(key) > len(suffix):
        return key[: -len(suffix)]
    return description or key


__all__ = ["PlainProgress", "interval_from_env", "progress_mode"]
