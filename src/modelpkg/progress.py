"""Byte progress: the callback every copy, upload and download of file bytes reports to.

It is called with the number of bytes just moved (not a running total), possibly from
several threads at once (a multipart upload reports from each worker), so an
implementation must be thread-safe. Library code never draws progress itself: it takes an
``on_bytes`` callback whose default, :func:`ignore_bytes`, does nothing; only a CLI turns
the counts into a bar.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``on_bytes(n)``: ``n`` more bytes were moved
OnBytes = Callable[[int], None]


def ignore_bytes(nbytes: int) -> None:
    """The default ``on_bytes``: nobody is watching."""
