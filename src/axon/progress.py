"""Progress reporting is injected: library code calls a sink, only the CLI draws.

A task is identified by a key the caller chooses (``"hash"``, ``"mlos-1:weights.bin"``...).
Every method may be called from several threads at once; implementations must be
thread-safe. :data:`NULL_PROGRESS` does nothing and is every library function's default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def begin(self, key: str, description: str, total: int | None = None) -> None:
        """A task starts; ``total`` in bytes (None when unknown)."""

    def advance(self, key: str, nbytes: int) -> None:
        """``nbytes`` more of the task are done."""

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        """The task finished (``ok=False``: it failed; ``note`` says why or how)."""

    def message(self, text: str) -> None:
        """A one-line status message (e.g. ``"retrying in 2 s"``)."""


class NullProgress:
    """Does nothing: the default for every library function."""

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def skip(self, key: str, nbytes: int) -> None:
        pass

    def expect(self, target: str, total: int, done: int = 0) -> None:
        pass


NULL_PROGRESS: Progress = NullProgress()


def skip(progress: Progress, key: str, nbytes: int) -> None:
    """``nbytes`` of task ``key`` are done without work (a sha256 the hash index knew, an
    upload resumed at an offset): a sink with a ``skip`` method counts them as done but
    not toward a rate; any other sink sees an ordinary ``advance``."""
    method = getattr(progress, "skip", None)
    if method is not None:
        method(key, nbytes)
    else:
        progress.advance(key, nbytes)


def expect(progress: Progress, target: str, total: int, done: int = 0) -> None:
    """Target ``target`` receives ``total`` bytes in all, of which ``done`` are there already
    outside the tasks that follow (files an earlier attempt finished). Called by a publish
    once it knows what it sends, before the tasks of its files begin (again on each retry,
    with the same ``total``): a sink with an ``expect`` method takes it as the target's whole
    total instead of adding up its tasks' totals as they begin. The tasks still report a
    resumed offset through :func:`skip` (done, not sent)."""
    method = getattr(progress, "expect", None)
    if method is not None:
        method(target, total, done)


class BytesTo:
    """An ``on_bytes(n)`` callback advancing task ``key`` of ``progress``, whose ``skip(n)``
    reports bytes done without work (see :func:`skipped`)."""

    def __init__(self, progress: Progress, key: str) -> None:
        self.progress, self.key = progress, key

    def __call__(self, nbytes: int) -> None:
        self.progress.advance(self.key, nbytes)

    def skip(self, nbytes: int) -> None:
        skip(self.progress, self.key, nbytes)


def skipped(on_bytes: Callable[[int], None], nbytes: int) -> None:
    """Report ``nbytes`` done without work to ``on_bytes``: its ``skip`` when it has one
    (:class:`BytesTo`), else as ordinary bytes."""
    getattr(on_bytes, "skip", on_bytes)(nbytes)


class PrefixedProgress:
    """Prefixes every key with ``prefix`` (one sink shared by the instances of a cluster)."""

    def __init__(self, inner: Progress, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        self.inner.begin(f"{self.prefix}{key}", description, total)

    def advance(self, key: str, nbytes: int) -> None:
        self.inner.advance(f"{self.prefix}{key}", nbytes)

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        self.inner.end(f"{self.prefix}{key}", ok=ok, note=note)

    def skip(self, key: str, nbytes: int) -> None:
        skip(self.inner, f"{self.prefix}{key}", nbytes)

    def expect(self, target: str, total: int, done: int = 0) -> None:
        expect(self.inner, f"{self.prefix}{target}", total, done)

    def message(self, text: str) -> None:
        self.inner.message(f"{self.prefix}{text}")


def size_text(n: float, *, largest: str = "GiB") -> str:
    """``4.2 MiB``-style sizes (binary units) for progress and summaries, in units up to
    ``largest`` (``"GiB"`` or ``"TiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == largest:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
