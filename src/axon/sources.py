"""Reading install sources: local directories and ``.axon`` archives, copied (or extracted)
and hashed in one pass, so a model's bytes are read once.

* Directories: a symlink to a file is followed when it leads inside the directory (or, for
  a Hugging Face snapshot, into its repo's ``blobs/``); a link leading anywhere else and a
  symlinked directory are refused by name unless the user asks to follow links
  (``follow_symlinks``); loops, fifos, devices and sockets always are. The file opened is
  checked to be the one listed, so a link changed meanwhile cannot lead elsewhere. The kernel
  copies each file (``copy_file_range``) while this thread hashes it; several files go in
  parallel.
* Archives (tar, tar.gz): streamed member by member; anything that could land outside the
  model directory (absolute names, ``..``, links, devices, fifos, duplicates) is refused
  before a byte of it is written; a name the cache's filesystem cannot hold (too long) is
  refused naming the member.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from axon.errors import (
    AxonError,
    ManifestError,
    NoSpaceError,
    SourceError,
    UnsafeArchiveError,
)
from axon.hashing import CHUNK
from axon.progress import Progress
from axon.transports.blobcopy import NO_COPY_RANGE
from modelpkg.layout import TMP_TAG, sibling
from modelpkg.manifest import MANIFEST_NAME, check_relpath
from modelpkg.progress import OnBytes

_SKIP_DIRS = {".git", ".cache"}  # VCS data and huggingface_hub's local_dir bookkeeping


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str


# ---- local directories ------------------------------------------------------------------
@dataclass(frozen=True)
class SourceFile:
    """One file to install from a directory: its path in the model (``rel``), the path it is
    read from, and the identity (device, inode) it had when listed: the file opened to copy
    must be that one."""

    rel: str
    path: str
    size: int
    dev: int
    ino: int


@dataclass
class SourceListing:
    """What a directory source holds. ``roots``: the real directories its links may lead
    into (None with ``follow_symlinks``: anywhere)."""

    root: str
    files: list[SourceFile]
    roots: tuple[str, ...] | None


def link_roots(top: str) -> tuple[str, ...]:
    """Where the links of the source directory ``top`` (a real path) may lead: inside it, and
    for a Hugging Face snapshot (``<repo>/snapshots/<revision>/``, whose files link to
    ``../../blobs/<hash>``) into that repo's own ``blobs/`` directory (a real one)."""
    parent = os.path.dirname(top)
    if os.path.basename(parent) == "snapshots":
        blobs = os.path.join(os.path.dirname(parent), "blobs")
        try:
            if stat.S_ISDIR(os.lstat(blobs).st_mode):
                return (top, blobs)
        except OSError:
            pass
    return (top,)


def within(path: str, roots: tuple[str, ...]) -> bool:
    """True when the real path ``path`` is one of ``roots`` or below one."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


_FOLLOW_HINT = (
    "copy the file(s) into the model directory, or pass --follow-symlinks to install what "
    "the link points to"
)


def source_files(root: Path, *, follow_symlinks: bool = False) -> SourceListing:
    """The files to install from the directory ``root``; SourceError on anything else.

    A symlink to a file is followed when it leads inside ``root`` (or, for a Hugging Face
    snapshot, into its repo's ``blobs/``); one leading elsewhere, and a symlinked directory,
    are refused by name unless ``follow_symlinks``. Loops, broken links, devices, fifos and
    sockets are always refused; nothing is opened while listing (a fifo cannot block it).
    """
    top = os.path.realpath(root)
    roots = None if follow_symlinks else link_roots(top)
    out: list[SourceFile] = []
    entered: set[tuple[int, int]] = set()  # directories walked, by identity: once each

    def walk(directory: str, rel_dir: str, st: os.stat_result) -> None:
        if (st.st_dev, st.st_ino) in entered:
            raise SourceError(
                f"{directory}: a symlink loop (this directory is reached twice through links)",
                path=directory,
                hint="remove the link that leads back, or copy the files in instead",
            )
        entered.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise _unreadable(directory, exc) from None
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if not rel_dir and entry.name in _SKIP_DIRS and entry.is_dir():
                continue
            full = entry.path
            st = _stat_entry(full)
            link = entry.is_symlink()
            if link and roots is not None:
                _check_link(full, st, roots)
            if stat.S_ISDIR(st.st_mode):
                walk(full, rel, st)
            elif stat.S_ISREG(st.st_mode):
                checked = rel if rel == MANIFEST_NAME else check_relpath(rel, source=str(root))
                out.append(SourceFile(checked, full, st.st_size, st.st_dev, st.st_ino))
            else:
                what = f" (a symlink to {os.path.realpath(full)})" if link else ""
                raise SourceError(
                    f"{full}{what}: not a regular file (device, fifo or socket)",
                    path=full,
                    hint="remove it from the model directory; only regular files are installed",
                )

    try:
        top_st = os.stat(top)
    except OSError as exc:
        raise _unreadable(str(root), exc) from None
    walk(top, "", top_st)
    if not out:
        raise SourceError(f"{root}: empty directory, no model files", path=str(root))
    out.sort(key=lambda f: f.rel)
    return SourceListing(str(root), out, roots)


def _stat_entry(full: str) -> os.stat_result:
    """``stat`` following links: what a link leads to (a loop or a broken link: refused)."""
    try:
        return os.stat(full)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceError(
                f"{full}: a symlink loop (the link leads back to itself)",
                path=full,
                hint="remove or fix the link",
            ) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(full):
            raise SourceError(
                f"{full}: broken symlink (to {os.readlink(full)!r})",
                path=full,
                hint="remove or fix the link",
            ) from None
        raise _unreadable(full, exc) from None


def _check_link(full: str, st: os.stat_result, roots: tuple[str, ...]) -> None:
    """Refuse the link ``full`` unless it may be followed (a file inside ``roots``)."""
    real = os.path.realpath(full)
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(
            f"{full}: a symlinked directory (to {real}) is not followed",
            path=full,
            hint="copy the directory's contents in instead of linking it, or pass "
            "--follow-symlinks to install what it points to",
        )
    if not within(real, roots):
        raise SourceError(
            f"{full}: a symlink to {real}, outside the model directory {roots[0]}",
            path=full,
            hint=_FOLLOW_HINT,
        )


def _unreadable(path: str, exc: OSError) -> SourceError:
    return SourceError(
        f"{path}: cannot read it ({exc.strerror or exc})",
        path=path,
        hint="check that the source exists and is readable by this user",
    )


def copy_dir(
    src: Path, staged: Path, progress: Progress, *, follow_symlinks: bool = False
) -> dict[str, Digest]:
    listing = source_files(src, follow_symlinks=follow_symlinks)
    files = listing.files
    progress.begin("install", f"copying {len(files)} files", sum(f.size for f in files))
    on_bytes = Batched(lambda n: progress.advance("install", n))
    made = _Dirs(staged)

    def one(f: SourceFile) -> Digest:
        dst = staged / f.rel
        try:
            made.ensure(dst.parent)
            return copy_hashing(Path(f.path), dst, on_bytes, listed=f, roots=listing.roots)
        except OSError as exc:
            raise member_error(exc, f.rel, str(src)) from None

    workers = min(len(files), max(2, os.cpu_count() or 2), 8)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="axon-install") as pool:
        digests = dict(zip([f.rel for f in files], pool.map(one, files), strict=True))
    on_bytes.flush()
    progress.end("install")
    return digests


class Batched:
    """An :data:`OnBytes` that forwards to ``inner`` at most every ``interval`` seconds
    (and on :meth:`flush`): thousands of small files make thousands of calls, a progress bar
    needs a few a second. Thread-safe."""

    def __init__(self, inner: OnBytes, interval: float = 0.1) -> None:
        self.inner = inner
        self.interval = interval
        self._pending = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self._pending += n
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            n, self._pending = self._pending, 0
        self.inner(n)

    def flush(self) -> None:
        with self._lock:
            n, self._pending = self._pending, 0
        if n:
            self.inner(n)


class _Dirs:
    """``mkdir -p`` below ``top``, each directory made (or found) once however many files
    it receives. Thread-safe: a race makes a directory twice, which ``exist_ok`` allows."""

    def __init__(self, top: Path) -> None:
        self._known = {top}
        self._lock = threading.Lock()

    def ensure(self, directory: Path) -> None:
        with self._lock:
            if directory in self._known:
                return
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._known.add(directory)


# what a file's name can make the cache's filesystem answer: too long (a component over 255
# bytes, a path over 4096), not storable there, a file where a directory is needed, ...
_NAME_ERRORS = (
    errno.ENAMETOOLONG,
    errno.EILSEQ,
    errno.EINVAL,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ELOOP,
)


def member_error(exc: OSError, rel: str, source: str) -> BaseException:
    """An OSError met while writing the file ``rel`` of ``source`` into the cache: when its
    name is the cause, the input's fault (SourceError, exit 4, naming the file); anything
    else (no space: reported as such by the install) stays as it is."""
    if exc.errno not in _NAME_ERRORS:
        return exc
    why = exc.strerror or str(exc)
    hint = "rename or remove that file in the source"
    if exc.errno == errno.ENAMETOOLONG:
        hint = (
            "the cache's filesystem allows 255 bytes a name and 4096 a path (with the cache "
            "directory's own): rename it in the source, or move the cache (AXON_HOME) to a "
            "shorter path"
        )
    return SourceError(f"{source}: cannot install {_shown(rel)}: {why}", path=source, hint=hint)


def _shown(name: str) -> str:
    """``name`` quoted for a message; a long one cut in the middle, with its length."""
    if len(name) <= 120:
        return repr(name)
    return f"{name[:80]!r}...{name[-24:]!r} ({len(name.encode('utf-8', 'replace'))} bytes)"


_COPY_CHUNK = 64 * 1024 * 1024


def copy_hashing(
    src: Path,
    dst: Path,
    on_bytes: OnBytes,
    *,
    listed: SourceFile | None = None,
    roots: tuple[str, ...] | None = None,
) -> Digest:
    """Copy ``src`` to ``dst`` and return the digest of what was copied.

    The kernel copies (``copy_file_range``: no bytes through Python) in a helper thread while
    this thread hashes the same open file, so the two overlap. The source must not change
    meanwhile (checked by its size, mtime and ctime). The first chunk is copied up front:
    where the kernel cannot copy between these filesystems it fails at once, and the file is
    then read once, hashed and written in the same pass.

    ``listed``: the file opened must be that one (same device and inode, a regular file);
    ``roots``: and it must lie below one of these real directories (checked on the open
    file, so a link changed after listing cannot lead elsewhere).
    """
    fd = _open_source(src, listed, roots)
    with open(fd, "rb", buffering=0) as fin:
        before = os.fstat(fd)
        if before.st_size <= _SMALL:
            digest = _copy_small(fd, dst, before.st_size)
            on_bytes(digest.size)
            _check_unchanged(src, fd, before, digest.size)
            return digest
        with open(dst, "wb", buffering=0) as fout:
            if not _first_kernel_copy(fin.fileno(), fout.fileno(), before.st_size):
                fout.close()
                digest = write_hashing(fin, dst, on_bytes)
                _check_unchanged(src, fd, before, os.stat(dst).st_size)
                return digest
            sha = _copy_while_hashing(fin.fileno(), fout.fileno(), on_bytes)
        _check_unchanged(src, fd, before, os.stat(dst).st_size)
    return Digest(before.st_size, sha)


#: files up to this size are read once into memory, hashed and written: two system calls,
#: no copy thread (which costs more than such a file's bytes)
_SMALL = 1024 * 1024


def _copy_small(fd: int, dst: Path, size: int) -> Digest:
    """Copy the small file ``fd`` (``size`` bytes when stat'ed) to ``dst`` through one
    buffer: (bytes copied, their sha256). A file that grew shows in the caller's check."""
    parts = []
    got = 0
    while got < size:
        chunk = os.pread(fd, size - got, got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
    finally:
        os.close(out)
    return Digest(len(data), hashlib.sha256(data).hexdigest())


def _open_source(src: Path, listed: SourceFile | None, roots: tuple[str, ...] | None) -> int:
    """Open ``src`` to read it, never blocking (a fifo swapped in), and check it is the file
    listed, a regular one, inside ``roots``."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise _unreadable(str(src), exc) from None
    try:
        st = os.fstat(fd)
        same = listed is None or (st.st_dev, st.st_ino) == (listed.dev, listed.ino)
        if not (stat.S_ISREG(st.st_mode) and same):
            raise SourceError(
                f"{src}: changed while it was being installed (it is not the file listed)",
                path=str(src),
                hint="install again once nothing changes the source",
            )
        where = _open_path(fd)
        if roots is not None and where is not None and not within(where, roots):
            raise SourceError(
                f"{src}: leads to {where}, outside the model directory {roots[0]}",
                path=str(src),
                hint=_FOLLOW_HINT,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_path(fd: int) -> str | None:
    """Where the open file ``fd`` really is (Linux: /proc/self/fd); None when unknown."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _copy_while_hashing(fin: int, fout: int, on_bytes: OnBytes) -> str:
    """Copy the rest of ``fin`` (the kernel, in a helper thread) while hashing all of it
    from offset 0 (``pread``: the copy's file position is not moved); the sha256."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            _kernel_copy(fin, fout, stop)
        except BaseException as exc:  # reported to the hashing thread
            failure.append(exc)

    def hashed(n: int) -> None:
        if failure:  # the copy failed (no space ...): stop hashing, report it below
            raise failure[0]
        on_bytes(n)

    helper = threading.Thread(target=copy, name="axon-copy", daemon=True)
    helper.start()
    try:
        sha = _sha256_fd(fin, hashed)
    except BaseException:
        stop.set()  # Ctrl-C: do not wait for the rest of a big copy
        raise
    finally:
        helper.join()
    if failure:
        raise failure[0]
    return sha


def _sha256_fd(fd: int, on_bytes: OnBytes) -> str:
    """The sha256 of the open file ``fd``, read with ``pread`` from offset 0."""
    h = hashlib.sha256()
    view = memoryview(bytearray(CHUNK))
    pos = 0
    while True:
        n = os.preadv(fd, [view], pos)
        if not n:
            return h.hexdigest()
        h.update(view[:n])
        pos += n
        on_bytes(n)


def _check_unchanged(src: Path, fd: int, before: os.stat_result, copied: int) -> None:
    """The source ``fd`` kept its size, mtime and ctime while ``copied`` bytes of it (all of
    them) were copied."""
    after = os.fstat(fd)
    same = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )
    if not same or copied != before.st_size:
        raise SourceError(
            f"{src}: changed while it was being installed",
            path=str(src),
            hint="install again once nothing writes to the source",
        )


def _first_kernel_copy(fin: int, fout: int, size: int) -> bool:
    """Copy the first MiB with ``copy_file_range`` (advancing both positions); False when
    the kernel cannot copy between these two files (nothing was written then)."""
    if size == 0:
        return True
    try:
        os.copy_file_range(fin, fout, min(size, 1024 * 1024))
    except OSError as exc:
        if exc.errno not in NO_COPY_RANGE:
            raise
        return False
    return True


def _kernel_copy(fin: int, fout: int, stop: threading.Event) -> None:
    """Copy the rest of ``fin`` from its position to ``fout``'s position."""
    while not stop.is_set():
        if os.copy_file_range(fin, fout, _COPY_CHUNK) == 0:
            return


def write_hashing(fin: IO[bytes], dst: Path, on_bytes: OnBytes) -> Digest:
    """Copy a stream to ``dst`` and hash it in the same pass."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(dst, "wb", buffering=0) as fout:
        while True:
            n = fin.readinto(view)  # type: ignore[attr-defined]
            if not n:
                break
            chunk = view[:n]
            h.update(chunk)
            while chunk:
                written = fout.write(chunk)
                if not written:
                    raise OSError(f"could not write {dst}")
                chunk = chunk[written:]
            size += n
            on_bytes(n)
    return Digest(size, h.hexdigest())


# ---- .axon archives ---------------------------------------------------------------------
def _member_name(member: tarfile.TarInfo, archive: Path) -> str | None:
    """The safe relative name of an archive member, None for the root dir entry."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if member.isdir() else name
    if name in ("", "."):
        return None
    kind = _unsafe_kind(member)
    if kind:
        to = f" (to {_shown(member.linkname)})" if member.issym() or member.islnk() else ""
        hint = "a .axon archive may only hold regular files and directories"
        if to:
            hint += "; make it with `tar --dereference --hard-dereference` to store the files"
        raise UnsafeArchiveError(
            f"{archive}: refusing {kind} {_shown(member.name)}{to}", path=str(archive), hint=hint
        )
    if name == MANIFEST_NAME:
        return name  # the package's own manifest: read as the base, never kept as a file
    try:
        return check_relpath(name, field="archive member", source=str(archive))
    except ManifestError as exc:
        why = exc.message.removeprefix(f"unsafe file path {name!r}: ")
        raise UnsafeArchiveError(
            f"{archive}: refusing member {_shown(member.name)}: {why}",
            path=str(archive),
            hint="no model file may have this name (it could land outside the model directory, "
            "or no filesystem can hold it): do not use this archive",
        ) from None


def _unsafe_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    if not (member.isreg() or member.isdir()):
        return "special entry"
    return None


def extract_archive(archive: Path, staged: Path, progress: Progress) -> dict[str, Digest]:
    digests: dict[str, Digest] = {}
    total = archive.stat().st_size
    progress.begin("install", f"extracting {archive.name}", total)
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
            last = 0
            for member in tf:
                rel = _member_name(member, archive)
                if rel is None:
                    continue
                _extract_member(tf, member, rel, staged, digests, archive)
                pos = raw.tell()
                progress.advance("install", pos - last)
                last = pos
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SourceError(
            f"{archive}: not a valid .axon archive ({exc or type(exc).__name__})",
            path=str(archive),
            hint="the file is truncated or not a tar.gz; fetch it again",
        ) from exc
    progress.end("install")
    _strip_single_top_dir(staged, digests)
    if not digests:
        raise SourceError(f"{archive}: the archive holds no files", path=str(archive))
    return digests


def _extract_member(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    rel: str,
    staged: Path,
    digests: dict[str, Digest],
    archive: Path,
) -> None:
    dst = staged / rel
    try:
        if rel in digests or (member.isreg() and dst.exists()):
            raise UnsafeArchiveError(f"{archive}: member {rel!r} appears twice", path=str(archive))
        try:
            if member.isdir():
                dst.mkdir(parents=True, exist_ok=True)
                return
            dst.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UnsafeArchiveError(
                f"{archive}: {rel!r} is both a file and a directory", path=str(archive)
            ) from None
        _check_room(staged, member.size, rel, archive)
        fin = tf.extractfile(member)
        if fin is None:  # pragma: no cover - regular members always have data
            raise SourceError(f"{archive}: cannot read member {rel!r}", path=str(archive))
        digests[rel] = write_hashing(fin, dst, lambda n: None)
    except OSError as exc:  # a name the cache's filesystem cannot hold (too long ...)
        if isinstance(exc, AxonError):
            raise
        raise member_error(exc, rel, str(archive)) from None


def _check_room(staged: Path, size: int, rel: str, archive: Path) -> None:
    """Refuse a member the cache's filesystem has no room for, before writing any of it: a
    small archive can inflate to anything (a decompression bomb), and the disk it would
    fill may be the one serving processes write to."""
    free = shutil.disk_usage(staged).free
    if size > free:
        raise NoSpaceError(
            f"{archive}: member {rel} is {_mib(size)} inflated, more than the {_mib(free)} "
            f"free in the cache ({staged.parent})",
            path=str(archive),
            hint="free space there or point AXON_HOME at a bigger disk; an archive far "
            "smaller than its contents may be a decompression bomb: use only trusted ones",
        )


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _strip_single_top_dir(staged: Path, digests: dict[str, Digest]) -> None:
    """``model/`` wrapping everything (archives made with ``tar czf x.axon model/``)."""
    entries = list(staged.iterdir())
    if len(entries) != 1 or not entries[0].is_dir():
        return
    top = entries[0]
    if not ((top / MANIFEST_NAME).is_file() or (top / "config.json").is_file()):
        return
    hidden = staged / sibling(top.name, TMP_TAG, "strip")
    os.rename(top, hidden)
    for child in hidden.iterdir():
        os.rename(child, staged / child.name)
    hidden.rmdir()
    prefix = top.name + "/"
    moved = {rel[len(prefix) :]: d for rel, d in digests.items()}
    digests.clear()
    digests.update(moved)
