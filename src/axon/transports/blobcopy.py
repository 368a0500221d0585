"""Copy one blob into a file while hashing it: the byte-moving engine of :mod:`stagedir`.

Standard library only, like :mod:`axon.transports.stagedir`, and shipped to SSH hosts in
front of it (see ``_helper_source`` in :mod:`axon.transports.ssh`). Two pumps, both
overlapping hashing with writing through one writer thread (:class:`_Writer`, one hand-off
per 8 MiB chunk):

* :func:`pump_stream`: from a stream (a pipe: the SSH channel) through reused buffers;
* :func:`pump_file`: from a local file: the kernel copies (``copy_file_range``, no pass
  through user space) while the source is hashed through a read-only mapping (no copy).

Written ranges are handed to the kernel for writeback at once (``sync_file_range``), so disk
writes overlap with copying and the final fsync has little left to do.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # remote Pythons (>= 3.7) cannot subscript collections.abc at runtime
    from collections.abc import Callable

    from modelpkg.progress import OnBytes

    Reader = Callable[[memoryview], int]

CHUNK = 8 * 1024 * 1024
#: a blob up to this size moves through one buffer in the calling thread: a writer thread
#: and three 8 MiB buffers cost more than such a blob's bytes. Its writeback is not started
#: on its own either: the final sync starts that of every file together
SMALL = 1024 * 1024


class StageError(Exception):
    """A protocol failure that is not an OSError; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, path: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path


def hash_prefix(fd: int, length: int, h: Any) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while pos < length:
        n = os.preadv(fd, [view[: min(CHUNK, length - pos)]], pos)
        if n <= 0:
            raise StageError("offset_mismatch", "partial file shrank while reading it")
        h.update(view[:n])
        pos += n


def write_all(fd: int, data: memoryview) -> None:
    while len(data):
        n = os.write(fd, data)
        data = data[n:]


def write_all_at(fd: int, data: memoryview, pos: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], pos + done)


def fill(read: Reader, view: memoryview) -> int:
    """Read until ``view`` is full or EOF (pipes return little at a time)."""
    got = 0
    while got < len(view):
        n = read(view[got:])
        if not n:
            break
        got += n
    return got


def libc() -> Any:
    """The C library, for the calls :mod:`os` lacks (OSError/AttributeError where absent).

    The process's own symbols (``dlopen(NULL)``) include libc's: no ``find_library``, which
    runs ``ldconfig`` (tens of ms, paid by every SSH publish's remote helper).
    """
    import ctypes  # not at import: the remote helper's start-up is on every publish's path

    return ctypes.CDLL(None, use_errno=True)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: list[Any] = []


def start_writeback(fd: int, pos: int, n: int) -> None:
    """Ask the kernel to start writing ``[pos, pos+n)`` to disk now, without waiting.

    Disk writes then overlap with copying and hashing, so the final fsync finds little left
    to do (a copy + ``sync`` pays for them one after the other). No-op where unsupported.
    """
    if not _sync_file_range:
        fn = None
        try:
            import ctypes

            fn = libc().sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _sync_file_range.append(fn)
    fn = _sync_file_range[0]
    if fn is not None:
        fn(fd, pos, n, _SYNC_FILE_RANGE_WRITE)  # errors only mean "no early writeback"


def changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) != (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF)


def _kernel_copy(copy_from: list[int | None], fd: int, pos: int, n: int) -> int:
    """Copy ``[pos, pos+n)`` of ``copy_from[0]`` to ``fd`` at the same offsets with
    ``copy_file_range`` (no pass through user space); how many bytes it copied. Clears
    ``copy_from[0]`` when this pair of filesystems cannot (the caller writes the rest)."""
    done = 0
    src_fd = copy_from[0]
    if src_fd is None:
        return 0
    try:
        while done < n:
            got = os.copy_file_range(src_fd, fd, n - done, pos + done, pos + done)
            if got == 0:
                raise StageError("source_changed", "the source file shrank while copied")
            done += got
    except OSError as exc:
        if exc.errno not in NO_COPY_RANGE:
            raise
        copy_from[0] = None  # from now on: through user space
    return done


def _write_chunk(fd: int, data: memoryview, pos: int, copy_from: list[int | None]) -> None:
    """Write ``data`` (the bytes at ``pos`` of the source) at ``pos``: copied by the kernel
    when it can, else from the buffer."""
    done = _kernel_copy(copy_from, fd, pos, len(data))
    write_all_at(fd, data[done:], pos + done)
    start_writeback(fd, pos, len(data))


def _copy_range(
    fd: int, src_fd: int, pos: int, n: int, copy_from: list[int | None], writeback: bool = True
) -> None:
    """Copy ``[pos, pos+n)`` of ``src_fd`` to ``fd`` without hashing: by the kernel when it
    can, else read into one buffer and written (and its writeback started: ``writeback``)."""
    done = _kernel_copy(copy_from, fd, pos, n)
    if done < n:
        buf = memoryview(bytearray(n - done))
        got = 0
        while got < len(buf):
            r = os.preadv(src_fd, [buf[got:]], pos + done + got)
            if r <= 0:
                raise StageError("source_changed", "the source file shrank while copied")
            got += r
        write_all_at(fd, buf, pos + done)
    if writeback:
        start_writeback(fd, pos, n)


class _Writer:
    """One thread writing chunks at explicit offsets while the caller reads and hashes:
    one hand-off per chunk, and hashing overlaps with writing."""

    def __init__(self, fd: int, src_fd: int | None) -> None:
        self.fd = fd
        self.copy_from = [src_fd if hasattr(os, "copy_file_range") else None]
        self.todo: queue.Queue[tuple[memoryview, int, Callable[[], None]] | None]
        self.todo = queue.Queue(maxsize=2)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="axon-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.todo.get()
            if item is None:
                return
            data, pos, done = item
            try:
                if not self.errors:
                    _write_chunk(self.fd, data, pos, self.copy_from)
            except BaseException as exc:  # re-raised in the caller's thread
                # without its traceback: its frames would keep ``data`` (a slice of a
                # mapping the caller must close) alive
                self.errors.append(exc.with_traceback(None))
            finally:
                del data, item
                done()

    def put(self, data: memoryview, pos: int, done: Callable[[], None] = lambda: None) -> None:
        self.check()
        self.todo.put((data, pos, done))

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def join(self) -> None:
        """Wait until every queued chunk is written (errors: see :meth:`check`)."""
        self.todo.put(None)
        self.thread.join()


def pump_stream(fd: int, read: Reader, h: Any, limit: int, on_bytes: OnBytes) -> int:
    """Copy from the stream ``read`` to ``fd`` (at its position) until EOF or ``limit``
    bytes, hashing what is written. This thread reads and hashes (hashlib releases the GIL
    on big buffers) while the writer writes the chunk before (three buffers in rotation).
    ``on_bytes`` runs once a chunk is hashed and queued; if it raises, the queued chunks
    are still written (a clean resume point)."""
    start = os.lseek(fd, 0, os.SEEK_CUR)
    if limit <= SMALL:
        view = memoryview(bytearray(limit))
        n = fill(read, view)
        h.update(view[:n])
        write_all_at(fd, view[:n], start)
        if n:
            on_bytes(n)
        return n
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(3):
        free.put(bytearray(CHUNK))
    writer = _Writer(fd, None)
    total = 0
    try:
        while total < limit:
            buf = free.get()
            view = memoryview(buf)[: min(CHUNK, limit - total)]
            n = fill(read, view)
            if n == 0:
                break
            h.update(view[:n])
            writer.put(view[:n], start + total, lambda b=buf: free.put(b))  # type: ignore[misc]
            total += n
            on_bytes(n)
    finally:
        writer.join()
    writer.check()
    return total


def pump_file(fd: int, src_fd: int, h: Any, limit: int, on_bytes: OnBytes) -> int:
    """Copy ``limit`` bytes of the local file ``src_fd`` to ``fd`` at the same offsets.

    The kernel copies (``copy_file_range``: no pass through user space) while this thread
    hashes the source through a read-only mapping of each chunk (no copy either; one chunk
    mapped at a time, so the resident size stays small). The dev cache replaces files by
    rename, never truncates them in place, and this relies on it: the size is checked
    before each chunk is mapped, which catches a file that shrank before, but one truncated
    between that check and the hash would fault (SIGBUS). Sources this process does not
    own the lifecycle of go through :func:`pump_stream` instead.

    ``h`` None: copy without hashing (the caller vouches for the bytes another way), in
    this thread, chunk by chunk (progress and early writeback as above).
    """
    start = os.lseek(fd, 0, os.SEEK_CUR)
    end = min(start + limit, os.fstat(src_fd).st_size)
    if h is None:
        copy_from = [src_fd if hasattr(os, "copy_file_range") else None]
        pos = start
        while pos < end:
            n = min(CHUNK, end - pos)
            _copy_range(fd, src_fd, pos, n, copy_from, writeback=end - start > SMALL)
            pos += n
            on_bytes(n)
        return pos - start
    if end - start <= SMALL:
        return _pump_small_file(fd, src_fd, h, start, end, on_bytes)
    writer = _Writer(fd, src_fd)
    pos = start
    try:
        while pos < end:
            n = min(CHUNK, end - pos)
            if os.fstat(src_fd).st_size < pos + n:
                raise StageError("source_changed", "the source file shrank while it was copied")
            view, release = _map(src_fd, pos, n)
            try:
                h.update(view)
                writer.put(view, pos, release)  # the writer releases it once written
            except BaseException:
                release()
                raise
            del view
            pos += n
            on_bytes(n)
    finally:
        writer.join()
    writer.check()
    return pos - start


def _pump_small_file(fd: int, src_fd: int, h: Any, start: int, end: int, on_bytes: OnBytes) -> int:
    """:func:`pump_file` of a small range: read once, hashed and written from one buffer."""
    view = memoryview(bytearray(end - start))
    got = 0
    while got < len(view):
        n = os.preadv(src_fd, [view[got:]], start + got)
        if n <= 0:
            raise StageError("source_changed", "the source file shrank while it was copied")
        got += n
    h.update(view)
    write_all_at(fd, view, start)
    if len(view):
        on_bytes(len(view))
    return len(view)


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the chunk in with one call (Linux)


def _map(fd: int, pos: int, n: int) -> tuple[memoryview, Callable[[], None]]:
    """A read-only view of ``[pos, pos+n)`` of ``fd`` and the function that unmaps it."""
    delta = pos % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(
        fd, n + delta, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ, offset=pos - delta
    )
    base = memoryview(mm)
    view = base[delta:]

    def release() -> None:
        view.release()
        base.release()
        with contextlib.suppress(BufferError):  # a stray reference: the GC unmaps it later
            mm.close()

    return view, release
