"""Content-addressed blob store: every file content is kept once, named by its sha256.

Where blobs and partial blobs live: :mod:`modelpkg.layout` (under the state dir, on the
models filesystem, so a version directory is built from hard links to them).

A blob of known sha256 is received by :class:`BlobWriter`: bytes are appended at the current
offset (the partial file's size is the resume offset) and hashed as they arrive; on
completion the digest is checked, the file fsynced once and renamed into the store, read-only.
A blob is therefore in the store only when its content is verified. A file whose sha256 is
known only at its end (a one-shot upload) is an :class:`IncomingBlob`. Blobs no version
directory links to (``st_nlink == 1``) are garbage and removed by :meth:`BlobStore.gc`.

A version file is a hard link to its blob (:meth:`BlobStore.link`), and a filesystem bounds
the links of one file (ext4: 65,000). When a blob has no links left (``EMLINK``), the store
takes a fresh copy of it, verified, under the blob's name: that link and the following ones go
to the copy, the versions linked so far keep the old one (which the filesystem frees with the
last of them). So dedup never depends on a link count anyone can exhaust.

With tenants, a blob being received is partial per tenant (one tenant cannot resume, or
learn of, another's upload): :meth:`BlobStore.partial_path` with a ``scope``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from mlos_core.errors import (
    BadRequest,
    ChecksumMismatch,
    MissingBlob,
    OffsetMismatch,
    UploadAborted,
    no_space,
)
from modelpkg.atomic import fsync_dir
from modelpkg.layout import (
    BLOBS_DIR,
    PARTIAL_BLOBS_DIR,
    TENANT_PARTIAL_DIR,
    TENANTS_DIR,
    TMP_TAG,
    is_leftover,
    sibling,
)

SHA256_RE = re.compile(r"[0-9a-f]{64}")
READ_CHUNK = 4 * 1024 * 1024
#: the mtime of every blob in the store (2000-01-01T00:00:00Z): link and rename leave a
#: file's mtime alone, any write sets it to now, so a blob some other tool rewrote in place
#: through a version's hard link shows at one stat (:mod:`mlos_core.storage.damage`)
SEALED_MTIME_NS = 946_684_800 * 1_000_000_000


def seal(target: int | str | os.PathLike[str]) -> None:
    """Give the blob ``target`` (a path, or an fd open on it) the store's mtime."""
    os.utime(target, ns=(time.time_ns(), SEALED_MTIME_NS))


# writes of one-shot upload files, beside the thread that hashes them
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlos-mp-write")


Buffer = bytes | bytearray | memoryview


def _pwrite_all(fd: int, data: memoryview, offset: int, what: str) -> None:
    """Write all of ``data`` at ``offset``; a full filesystem is :class:`NoSpace`."""
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            offset += n
            data = data[n:]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(what) from exc
        raise


def _pwrite_pieces(fd: int, pieces: Sequence[Buffer], offset: int, what: str) -> None:
    """Write ``pieces`` one after another from ``offset``, each straight from where it is
    (no copy into one buffer first). One ``pwrite`` per piece: on Linux 6.x a ``pwritev`` of
    many pieces cost 4x the CPU time here (1 GiB in 256 KB pieces: 1.0-1.2 s against 0.28 s)."""
    for piece in pieces:
        _pwrite_all(fd, memoryview(piece), offset, what)
        offset += len(piece)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)``, where the C library has it, else None."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
WRITEBACK_EVERY = 16 * 1024 * 1024  # bytes written between two start_writeback of a file
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` to disk now, without waiting
    (Linux; elsewhere nothing). A big file's final fsync then waits only for its last bytes
    instead of all of them: the disk works while the rest arrives. Not a durability step:
    the fsync at the end still is."""
    if _SYNC_FILE_RANGE is not None and nbytes > 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # a failure: no harm


def check_sha256(value: str) -> str:
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise BadRequest(
            f"not a lowercase sha256 hex digest: {str(value)[:80]!r}", code="invalid_sha256"
        )
    return value


class BlobStore:
    def __init__(self, state_dir: Path, *, durable: bool = True) -> None:
        self.root = state_dir / BLOBS_DIR
        self.partial_dir = state_dir / PARTIAL_BLOBS_DIR
        self.tenants_dir = state_dir / TENANTS_DIR
        self.durable = durable
        self.root.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._copy_lock = threading.Lock()  # one fresh copy of a blob out of links at a time
        # blobs :meth:`has` found without the store's seal (rewritten in place by another
        # tool, or stored before seals existed): the core checks them (storage/damage.py)
        self.unsealed: set[str] = set()

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self.path(sha256))
        except FileNotFoundError:
            return False
        if st.st_mtime_ns != SEALED_MTIME_NS:
            self.unsealed.add(sha256)  # noted only: the stat was taken anyway
        return size is None or st.st_size == size

    def partial_path(self, sha256: str, scope: str | None = None) -> Path:
        """Where ``sha256`` is being received: shared, or one tenant's (``scope``)."""
        if scope is None:
            return self.partial_dir / sha256
        return self.tenants_dir / scope / TENANT_PARTIAL_DIR / sha256

    def partial_offset(self, sha256: str, size: int, scope: str | None = None) -> int:
        """Bytes of ``sha256`` received so far in ``scope`` (the partial file's length)."""
        try:
            return min(os.stat(self.partial_path(sha256, scope)).st_size, size)
        except FileNotFoundError:
            return 0

    def offset(self, sha256: str, size: int) -> int:
        """Bytes already held: ``size`` when complete, else the partial file's length."""
        if self.has(sha256, size):
            return size
        return self.partial_offset(sha256, size)

    def drop_partial(self, sha256: str, scope: str | None = None) -> None:
        self.partial_path(sha256, scope).unlink(missing_ok=True)

    def partial_dirs(self) -> list[Path]:
        """The shared partial dir and every tenant's."""
        dirs = [self.partial_dir]
        if self.tenants_dir.is_dir():
            dirs += [d / TENANT_PARTIAL_DIR for d in sorted(self.tenants_dir.iterdir())]
        return [d for d in dirs if d.is_dir()]

    def clean_leftovers(self) -> list[Path]:
        """Remove fresh copies a crash interrupted (start-up: no copy is running)."""
        removed = []
        for sub in self.root.iterdir():
            for p in sub.iterdir() if sub.is_dir() else []:
                if is_leftover(p.name):
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    # ---- links ------------------------------------------------------------------------
    def link(self, sha256: str, dest: Path) -> None:
        """Hard-link blob ``sha256`` at ``dest``. A blob out of links (``EMLINK``) is
        replaced in the store by a fresh, verified copy that takes this link and the next."""
        for _ in range(3):  # a copy could run out too, under a flood of concurrent links
            if self._try_link(sha256, dest):
                return
            with self._copy_lock:
                if self._try_link(sha256, dest):  # another thread made the copy meanwhile
                    return
                self._fresh_copy(sha256)
        raise OSError(errno.EMLINK, os.strerror(errno.EMLINK), str(self.path(sha256)))

    def _try_link(self, sha256: str, dest: Path) -> bool:
        try:
            os.link(os.path.join(self.root, sha256[:2], sha256), dest)  # hot: no Path ops
        except OSError as exc:
            if exc.errno == errno.EMLINK:
                return False
            raise
        return True

    def _fresh_copy(self, sha256: str) -> None:
        """Copy the blob, checking its sha256 on the way, and put the copy under its name
        (versions linked to the old file keep it). A blob that no longer matches its name is
        dropped from the store: MissingBlob, the client sends it again."""
        final = self.path(sha256)
        tmp = final.parent / sibling(sha256, TMP_TAG, uuid.uuid4().hex[:12])
        digest = hashlib.sha256()
        try:
            with open(final, "rb") as src, open(tmp, "xb") as dst:
                while chunk := src.read(READ_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                if self.durable:
                    dst.flush()
                    os.fsync(dst.fileno())
            if digest.hexdigest() != sha256:
                final.unlink(missing_ok=True)
                raise MissingBlob(
                    f"stored content {sha256[:12]} no longer matches its sha256 and was "
                    "dropped; send it again, then commit again",
                )
            os.chmod(tmp, 0o444)
            seal(tmp)
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space(f"a fresh copy of blob {sha256[:12]} (out of hard links)") from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
        if self.durable:
            fsync_dir(final.parent)

    def adopt(self, tmp: Path, sha256: str, *, sync_dir: bool = True) -> Path:
        """Move a verified temp file into the store (or drop it if the blob exists).
        ``sync_dir=False``: the caller makes the store's directory durable (a batch, once)."""
        final = self.path(sha256)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return final
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o444)
        seal(tmp)
        os.replace(tmp, final)
        if self.durable and sync_dir:
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
                if not SHA256_RE.fullmatch(blob.name):
                    continue  # a fresh copy being written (:meth:`link`)
                try:
                    st = blob.stat()
                except FileNotFoundError:
                    continue
                # age by ctime: a blob's mtime is the store's seal, link/rename set ctime
                if st.st_nlink > 1 or blob.name in keep or now - st.st_ctime < min_age:
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
        for d in self.partial_dirs():
            for p in d.iterdir():
                try:
                    if p.name not in keep and now - p.stat().st_mtime >= min_age:
                        p.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass


class BlobWriter:
    """Receives one blob from ``offset``; runs in a worker thread (blocking file I/O).

    ``jobs`` appends and hashes; ``finish`` verifies and moves the blob into the store.
    On any error the partial file is cut back to where this request started, so a refused
    request stores nothing.
    """

    def __init__(
        self,
        store: BlobStore,
        sha256: str,
        size: int,
        offset: int,
        *,
        scope: str | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.sha256 = sha256
        self.size = size
        self.start = offset
        self.offset = offset
        self.scope = scope  # a tenant's partials (None: shared)
        self.on_stored = on_stored  # called once the blob is verified and in the store
        self.path = store.partial_path(sha256, scope)
        self._hash = hashlib.sha256()
        self._fd = -1
        self._flushed = offset  # bytes whose writeback was started (:func:`start_writeback`)

    def open(self) -> None:
        if self.scope is None:
            held = self.store.offset(self.sha256, self.size)
        else:  # the tenant's own bytes: what the store holds is for those who sent it
            held = self.store.partial_offset(self.sha256, self.size, self.scope)
        if held != self.start:
            raise OffsetMismatch(
                f"blob {self.sha256[:12]} holds {held} bytes, the request starts at "
                f"{self.start}; resend from Upload-Offset: {held}",
                offset=held,
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def jobs(self, data: Buffer | Sequence[Buffer]) -> list[Callable[[], None]]:
        """The work for the next ``data`` (one buffer, or several to take one after another):
        hash it and write it at its offset. The two jobs may run in parallel threads (both
        release the GIL); call again only after both ran."""
        pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        n = sum(len(p) for p in pieces)
        if self.offset + n > self.size:
            raise BadRequest(
                f"body longer than blob {self.sha256[:12]} ({self.size} bytes); nothing stored",
                code="size_mismatch",
            )
        offset = self.offset
        self.offset += n
        return [
            functools.partial(self._hash_all, pieces),
            functools.partial(self._write_at, pieces, offset),
        ]

    def _hash_all(self, pieces: Sequence[Buffer]) -> None:
        for piece in pieces:
            self._hash.update(piece)

    def _write_at(self, pieces: Sequence[Buffer], offset: int) -> None:
        _pwrite_pieces(self._fd, pieces, offset, f"blob {self.sha256[:12]}")
        end = offset + sum(len(p) for p in pieces)
        if self.store.durable and end - self._flushed >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._flushed, end - self._flushed)
            self._flushed = end

    @property
    def complete(self) -> bool:
        return self.offset == self.size

    def verify(self) -> None:
        """ChecksumMismatch, the received data dropped, unless the bytes hash to the blob's
        sha256 (a batch verifies, makes a group durable at once, then adopts each blob)."""
        digest = self._hash.hexdigest()
        if digest != self.sha256:
            self.close()
            self.store.drop_partial(self.sha256, self.scope)
            raise ChecksumMismatch(
                f"blob content hashes to {digest}, not {self.sha256}; the received data was "
                "dropped (offset back to 0): resend the file from the start",
                offset=0,
            )

    def finish(self) -> None:
        """Verify the whole blob and move it into the store; on a mismatch drop it and raise
        ChecksumMismatch."""
        self.verify()
        if self.store.durable:
            os.fsync(self._fd)
        self.close()
        try:
            self.store.adopt(self.path, self.sha256)  # bytes of a blob held already: dropped
        except FileNotFoundError:
            raise UploadAborted(
                f"blob {self.sha256[:12]} was dropped while it was being received (its upload "
                "was aborted or expired); open a new upload",
            ) from None
        if self.on_stored is not None:
            self.on_stored()

    def rollback(self) -> None:
        """Cut the partial file back to where this request started (a refused request)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.start)
        self.close()
        if self.start == 0:
            self.store.drop_partial(self.sha256, self.scope)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class IncomingBlob:
    """A file whose sha256 is known only at its end (a file of a one-shot upload).

    Written to ``path``, a new temp file on the models filesystem: each chunk goes to a writer
    thread while this one hashes it (both release the GIL). :meth:`finish` makes it durable
    and returns its digest; the caller checks it and moves the file in with
    :meth:`BlobStore.adopt`. ``what`` names the file in a NoSpace message.
    """

    def __init__(self, store: BlobStore, path: Path, what: str) -> None:
        self.store = store
        self.path = path
        self.what = what
        self.size = 0
        self._hash = hashlib.sha256()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._flushed = 0  # bytes whose writeback was started (:func:`start_writeback`)

    def write(self, chunk: memoryview) -> None:
        written = _WRITERS.submit(self._write_at, chunk, self.size)
        self._hash.update(chunk)
        self.size += len(chunk)
        written.result()

    def jobs(self, pieces: Sequence[Buffer]) -> list[Callable[[], None]]:
        """The work for the next ``pieces`` (to take one after another), as
        :meth:`BlobWriter.jobs`: hash them, and write them at their offset. The two jobs may
        run in parallel threads; call again, or :meth:`write` or :meth:`finish`, only after
        both ran."""
        offset = self.size
        self.size += sum(len(p) for p in pieces)
        return [
            functools.partial(self._hash_all, pieces),
            functools.partial(self._write_pieces, pieces, offset),
        ]

    def _hash_all(self, pieces: Sequence[Buffer]) -> None:
        for piece in pieces:
            self._hash.update(piece)

    def _write_pieces(self, pieces: Sequence[Buffer], offset: int) -> None:
        _pwrite_pieces(self._fd, pieces, offset, self.what)
        self._wrote(offset + sum(len(p) for p in pieces))

    def _write_at(self, chunk: memoryview, offset: int) -> None:
        _pwrite_all(self._fd, chunk, offset, self.what)
        self._wrote(offset + len(chunk))

    def _wrote(self, end: int) -> None:
        if self.store.durable and end - self._flushed >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._flushed, end - self._flushed)
            self._flushed = end

    def finish(self) -> str:
        """fsync (when the store is durable) and close; the content's sha256."""
        try:
            if self.store.durable:
                os.fsync(self._fd)
        finally:
            self.close()  # also when fsync fails (EIO, ENOSPC): the caller no longer holds it
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
