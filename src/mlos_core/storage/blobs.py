"""Content-addressed blob store: every file content is kept once, named by its sha256.

Layout (all under ``<models-dir>/.mlos/``, the same filesystem as the models, so a version
directory can be built from hard links and made visible with one rename)::

    blobs/sha256/ab/abcdef...      complete, verified blobs (read-only, 0444)
    partial/abcdef...              a blob being received; its size is the resume offset

A blob is received by :class:`BlobWriter`: bytes are appended at the current offset and
hashed as they arrive; on completion the digest is checked, the file fsynced once and
renamed into ``blobs/``. A blob is therefore in ``blobs/`` only when its content is verified.
Blobs no version directory links to (``st_nlink == 1``) are garbage and removed by :meth:`gc`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mlos_core.errors import (
    BadRequest,
    ChecksumMismatch,
    OffsetMismatch,
    UploadAborted,
    no_space,
)
from modelpkg.atomic import fsync_dir

SHA256_RE = re.compile(r"[0-9a-f]{64}")
READ_CHUNK = 4 * 1024 * 1024


def check_sha256(value: str) -> str:
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise BadRequest(
            f"not a lowercase sha256 hex digest: {str(value)[:80]!r}", code="invalid_sha256"
        )
    return value


class BlobStore:
    def __init__(self, state_dir: Path, *, durable: bool = True) -> None:
        self.root = state_dir / "blobs" / "sha256"
        self.partial_dir = state_dir / "partial"
        self.durable = durable
        self.root.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self.path(sha256))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def partial_path(self, sha256: str) -> Path:
        return self.partial_dir / sha256

    def offset(self, sha256: str, size: int) -> int:
        """Bytes already held: ``size`` when complete, else the partial file's length."""
        if self.has(sha256, size):
            return size
        try:
            return min(os.stat(self.partial_path(sha256)).st_size, size)
        except FileNotFoundError:
            return 0

    def drop_partial(self, sha256: str) -> None:
        self.partial_path(sha256).unlink(missing_ok=True)

    def adopt(self, tmp: Path, sha256: str) -> Path:
        """Move a verified temp file into the store (or drop it if the blob exists)."""
        final = self.path(sha256)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return final
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        if self.durable:
            fsync_dir(final.parent)
        return final

    def gc(
        self,
        protected: Iterable[str],
        *,
        min_age: float = 0.0,
        pinned: Callable[[str], bool] = lambda sha: False,
        pin_lock: AbstractContextManager[Any] | None = None,
    ) -> int:
        """Remove blobs no version links to, except ``protected``; return bytes freed.

        ``pinned`` is asked again for each blob just before it goes, under ``pin_lock`` (the
        lock pins are taken under): a blob an upload pins while this scan runs is kept.
        """
        keep = set(protected)
        freed = 0
        now = time.time()
        for sub in self.root.iterdir() if self.root.is_dir() else []:
            for blob in sub.iterdir():
                st = blob.stat()
                if st.st_nlink > 1 or blob.name in keep or now - st.st_mtime < min_age:
                    continue
                with pin_lock or contextlib.nullcontext():
                    if pinned(blob.name):
                        continue
                    blob.unlink(missing_ok=True)
                freed += st.st_size
        return freed

    def gc_partials(self, protected: Iterable[str], *, min_age: float) -> None:
        keep = set(protected)
        now = time.time()
        for p in self.partial_dir.iterdir():
            if p.name not in keep and now - p.stat().st_mtime >= min_age:
                p.unlink(missing_ok=True)


class BlobWriter:
    """Receives one blob from ``offset``; runs in a worker thread (blocking file I/O).

    ``jobs`` appends and hashes; ``finish`` verifies and moves the blob into the store.
    On any error the partial file is cut back to where this request started, so a refused
    request stores nothing.
    """

    def __init__(self, store: BlobStore, sha256: str, size: int, offset: int) -> None:
        self.store = store
        self.sha256 = sha256
        self.size = size
        self.start = offset
        self.offset = offset
        self.path = store.partial_path(sha256)
        self._hash = hashlib.sha256()
        self._fd = -1

    def open(self) -> None:
        held = self.store.offset(self.sha256, self.size)
        if held != self.start:
            raise OffsetMismatch(
                f"blob {self.sha256[:12]} holds {held} bytes, the request starts at "
                f"{self.start}; resend from Upload-Offset: {held}",
                offset=held,
            )
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, self.start)  # drop any unflushed tail beyond the offset
        if self.start:
            self._rehash_prefix()

    def _rehash_prefix(self) -> None:
        # hashlib state cannot be saved across requests or restarts: re-read what we hold.
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as fh:
            left = self.start
            while left > 0:
                n = fh.readinto(view[: min(left, READ_CHUNK)])
                if not n:
                    raise OSError(errno.EIO, "partial blob shorter than its size", str(self.path))
                self._hash.update(view[:n])
                left -= n

    def jobs(self, data: bytearray) -> list[Callable[[], None]]:
        """The work for the next ``data``: hash it and write it at its offset. The two jobs
        may run in parallel threads (both release the GIL); call again only after both ran."""
        if self.offset + len(data) > self.size:
            raise BadRequest(
                f"body longer than blob {self.sha256[:12]} ({self.size} bytes); nothing stored",
                code="size_mismatch",
            )
        offset = self.offset
        self.offset += len(data)
        return [
            functools.partial(self._hash.update, data),
            functools.partial(self._write_at, data, offset),
        ]

    def _write_at(self, data: bytearray, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                offset += n
                view = view[n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space(f"blob {self.sha256[:12]}") from exc
            raise

    @property
    def complete(self) -> bool:
        return self.offset == self.size

    def finish(self) -> None:
        """Verify the whole blob and move it into the store; on a mismatch drop it and raise
        ChecksumMismatch."""
        digest = self._hash.hexdigest()
        if digest != self.sha256:
            self.close()
            self.store.drop_partial(self.sha256)
            raise ChecksumMismatch(
                f"blob content hashes to {digest}, not {self.sha256}; the received data was "
                "dropped (offset back to 0): resend the file from the start",
                offset=0,
            )
        if self.store.durable:
            os.fsync(self._fd)
        self.close()
        try:
            self.store.adopt(self.path, self.sha256)
        except FileNotFoundError:
            raise UploadAborted(
                f"blob {self.sha256[:12]} was dropped while it was being received (its upload "
                "was aborted or expired); open a new upload",
            ) from None

    def rollback(self) -> None:
        """Cut the partial file back to where this request started (a refused request)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.start)
        self.close()
        if self.start == 0:
            self.store.drop_partial(self.sha256)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
