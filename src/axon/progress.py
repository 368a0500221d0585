"""Progress reporting is injected: library code calls a sink, only the CLI draws.

A task is identified by a key the caller chooses (``"hash"``, ``"mlos-1:weights.bin"``...).
Every method may be called from several threads at once; implementations must be
thread-safe. :data:`NULL_PROGRESS` does nothing and is every library function's default.
"""

from __future__ import annotations

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


NULL_PROGRESS: Progress = NullProgress()


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

    def message(self, text: str) -> None:
        self.inner.message(f"{self.prefix}{text}")
