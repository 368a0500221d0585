"""Reading install sources: local directories and ``.axon`` archives, copied (or extracted)
and hashed in one pass, so a model's bytes are read once.

* Directories: symlinks to files are followed (Hugging Face snapshots link into ``blobs/``);
  symlinked directories, fifos, devices and sockets are refused. The kernel copies each file
  (``copy_file_range``) while another thread hashes it; several files go in parallel.
* Archives (tar, tar.gz): streamed member by member; anything that could land outside the
  model directory (absolute names, ``..``, links, devices, fifos, duplicates) is refused
  before a byte of it is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from axon.errors import ManifestError, NoSpaceError, SourceError, UnsafeArchiveError
from axon.hashing import CHUNK, sha256_file
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
def source_files(root: Path) -> list[str]:
    """Relative paths of the files to install from a directory; SourceError on odd entries."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)):
                raise SourceError(
                    f"{os.path.join(dirpath, d)}: symlinked directories are not supported",
                    path=os.path.join(dirpath, d),
                    hint="copy the directory's contents in instead of linking it",
                )
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)  # follows symlinks (HF snapshots link into blobs/)
            except FileNotFoundError:
                raise SourceError(f"{full}: broken symlink", path=full) from None
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{full}: not a regular file (device, fifo or socket)", path=full)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            out.append(rel if rel == MANIFEST_NAME else check_relpath(rel, source=str(root)))
    if not out:
        raise SourceError(f"{root}: empty directory, no model files", path=str(root))
    return sorted(out)


def copy_dir(src: Path, staged: Path, progress: Progress) -> dict[str, Digest]:
    rels = source_files(src)
    sizes = {rel: os.stat(src / rel).st_size for rel in rels}
    progress.begin("install", f"copying {len(rels)} files", sum(sizes.values()))

    def one(rel: str) -> Digest:
        dst = staged / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        return copy_hashing(src / rel, dst, lambda n: progress.advance("install", n))

    workers = min(len(rels), max(2, os.cpu_count() or 2), 8)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="axon-install") as pool:
        digests = dict(zip(rels, pool.map(one, rels), strict=True))
    progress.end("install")
    return digests


_COPY_CHUNK = 64 * 1024 * 1024


def copy_hashing(src: Path, dst: Path, on_bytes: OnBytes) -> Digest:
    """Copy ``src`` to ``dst`` and return the digest of what was copied.

    The kernel copies (``copy_file_range``: no bytes through Python) in a helper thread while
    this thread hashes the source, so the two overlap. The source must not change meanwhile
    (checked by its size, mtime and ctime). The first chunk is copied up front: where the
    kernel cannot copy between these filesystems it fails at once, and the file is then read
    once, hashed and written in the same pass.
    """
    before = os.stat(src)
    stop = threading.Event()
    failure: list[BaseException] = []
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        if not _first_kernel_copy(fin.fileno(), fout.fileno(), before.st_size):
            fout.close()
            return write_hashing(fin, dst, on_bytes)

        def copy() -> None:
            try:
                _kernel_copy(fin.fileno(), fout.fileno(), stop)
            except BaseException as exc:  # reported to the hashing thread
                failure.append(exc)

        def hashed(n: int) -> None:
            if failure:  # the copy failed (no space ...): stop hashing, report it below
                raise failure[0]
            on_bytes(n)

        helper = threading.Thread(target=copy, name="axon-copy", daemon=True)
        helper.start()
        try:
            sha = sha256_file(src, hashed)
        except BaseException:
            stop.set()  # Ctrl-C: do not wait for the rest of a big copy
            raise
        finally:
            helper.join()
    if failure:
        raise failure[0]
    after = os.stat(src)
    same = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )
    if not same or os.stat(dst).st_size != before.st_size:
        raise SourceError(
            f"{src}: changed while it was being installed",
            path=str(src),
            hint="install again once nothing writes to the source",
        )
    return Digest(before.st_size, sha)


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
        raise UnsafeArchiveError(
            f"{archive}: refusing {kind} {member.name!r}",
            path=str(archive),
            hint="a .axon archive may only hold regular files and directories",
        )
    if name == MANIFEST_NAME:
        return name  # the package's own manifest: read as the base, never kept as a file
    try:
        return check_relpath(name, field="archive member", source=str(archive))
    except ManifestError as exc:
        raise UnsafeArchiveError(
            f"{archive}: refusing member {member.name!r}: {exc.message}",
            path=str(archive),
            hint="the archive tries to write outside the model directory; do not use it",
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
