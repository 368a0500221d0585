"""The staged-directory protocol, shared by the filesystem, NFS and SSH transports.

This module is **standard library only** and runs in two places: in-process for the
filesystem/NFS transport, and on the remote host for the SSH transport (shipped as
``python3 -c <this source> serve``, answering JSON-line requests on stdin; remote Python
>= 3.7). So the protocol that keeps a model directory whole is written once. It writes a
model into ``<root>/<ns>/<name...>/.<version>.staging-<d16>/`` (files being received under
``.axon-partial/<sha256>``, their size the resume point) and swaps that in at
``<root>/<ns>/<name...>/<version>/`` (the whole layout: :mod:`modelpkg.layout`).

* ``status``: what the target holds: the current manifest text, the sizes of the files of
  the current version and of the staging dir, and the partial blobs (resume offsets).
* ``receive``: append bytes to a partial blob at its offset (hashing the existing prefix and
  every new byte while writing), check size + sha256, place it at each path. ``receive_many``
  (SSH): many blobs in one framed stream, each placed as it completes.
* ``adopt``: place files the current version holds though no manifest we trust vouches
  for them (another tool copied the model there): each is hashed where it lies first.
* ``prepare``: hard-link unchanged files from the current version, write manifest.yaml,
  apply modes, make every file and directory durable: complete, not yet visible.
* ``commit``: swap the staging dir in (``renameat2(RENAME_EXCHANGE)``, else rename-aside +
  rename-in: a window of microseconds with no directory, never a partial one).

A model whose directory would nest with another's (``n/b@v1`` at ``n/b/v1/``, ``n/b/v1@x``
at ``n/b/v1/x/``) is refused (``overlap``) when a publish opens, at ``prepare`` and again
just before the rename in ``commit``: writing it would write into, or replace, the other.
* ``abort``: delete the staging dir; the current version is untouched.

The staging name is deterministic (it contains the manifest digest), so a publish killed at
any point resumes where it stopped; a different manifest gets a different staging dir.

Durability is one decision per publish, not an fsync per file: received files are placed
without waiting for the disk, and ``prepare`` makes all of them durable together (write all,
then sync all: the disk's queue is used once, not drained per file), before the version can
be committed. What a crash of the *process* leaves is in the page cache and is resumed as
is; what a crash of the *machine* may leave (a placed file whose bytes never reached the
disk) is never trusted: the first file placed unsynced marks the staging dir with the boot
id (``.axon-partial/unsynced``, made durable first), ``status`` after a reboot drops such a
staging dir, and ``commit`` refuses one still marked. Where the boot id cannot be read (not
Linux) each file is fsync'ed when placed, as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import time
from typing import TYPE_CHECKING, Any

# Shipped to an SSH host, the sources of modelpkg.layout and blobcopy run in front of this
# one (see axon.transports.ssh): their names are defined already, and must not be replaced by
# some other axon installed there.
if "staging_dir" not in globals():
    from modelpkg.layout import (
        MANIFEST_NAME,
        OLD_TAG,
        PARTIAL_DIR,
        ROLLBACK_TAG,
        STAGING_TAG,
        TMP_TAG,
        final_dir,
        overlapping_model,
        sibling,
        sibling_prefix,
        staging_dir,
    )
if "pump_stream" not in globals():
    from axon.transports.blobcopy import (
        StageError,
        changed,
        hash_prefix,
        libc,
        pump_file,
        pump_stream,
        start_writeback,
        write_all,
    )

if TYPE_CHECKING:  # remote Pythons (>= 3.7) cannot subscript collections.abc at runtime
    from collections.abc import Callable

    from modelpkg.progress import OnBytes

    Reader = Callable[[memoryview], int]

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


# ---- layout (the names: modelpkg.layout) ------------------------------------------------
def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "models directory does not exist", root)


def _makedirs(path: str, dir_mode: int | None) -> None:
    """mkdir -p, applying ``dir_mode`` to each directory it creates."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent, dir_mode)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    if dir_mode is not None:
        os.chmod(path, dir_mode)


def _check_no_overlap(root: str, rel: str) -> None:
    """Refuse to write the model ``rel`` where its directory would nest with another model's
    (``n/b@v1`` at ``n/b/v1/`` holds ``n/b/v1@x`` at ``n/b/v1/x/``): writing it would write
    into, or replace, that other model (:func:`modelpkg.layout.overlapping_model`). The
    error's message is ``rel``, its path the other model's (both relative to ``root``)."""
    other = overlapping_model(root, rel)
    if other is not None:
        raise StageError("overlap", rel, other)


def _sizes_under(top: str, skip: str = "") -> dict[str, int]:
    """{relative posix path: size} of the regular files under ``top``."""
    out: dict[str, int] = {}
    if not os.path.isdir(top):
        return out
    for dirpath, dirs, files in os.walk(top):
        if skip and skip in dirs and dirpath == top:
            dirs.remove(skip)
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(full, top).replace(os.sep, "/")] = st.st_size
    return out


def _lock(fd: int, kind: int, wait: float, path: str) -> None:
    """flock ``fd``, waiting up to ``wait`` s: a receiver cut mid-file may still be writing
    its last chunk, and two publishers must never append to the same partial file."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StageError("busy", "another transfer is writing this file", path) from None
            time.sleep(0.05)


def _partial_sizes(part_dir: str) -> dict[str, int]:
    """Sizes of the partial blobs, each read once no receiver holds it."""
    out: dict[str, int] = {}
    for sha, _size in _sizes_under(part_dir).items():
        if sha == UNSYNCED:
            continue
        path = os.path.join(part_dir, sha)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            _lock(fd, fcntl.LOCK_SH, 5.0, path)
            out[sha] = os.fstat(fd).st_size
        finally:
            os.close(fd)
    return out


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- durability: one decision per publish ------------------------------------------------
#: in ``.axon-partial/``: this staging dir holds files placed without an fsync; its text is
#: the boot id they were written in
UNSYNCED = "unsynced"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot of the machine (Linux); "" where unknown: then nothing is left unsynced."""
    try:
        with open(_BOOT_ID, "rb") as fh:
            return fh.read(64).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _mark_unsynced(stage: str) -> bool:
    """Before a file is placed in ``stage`` without an fsync: make sure the marker saying so
    is on disk (once per staging dir). False where the boot id is unknown: the caller then
    fsyncs each file itself."""
    part_dir = os.path.join(stage, PARTIAL_DIR)
    marker = os.path.join(part_dir, UNSYNCED)
    if os.path.exists(marker):
        return True
    boot = boot_id()
    if not boot:
        return False
    tmp = os.path.join(part_dir, sibling(UNSYNCED, TMP_TAG, "axon"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, memoryview(boot.encode("ascii")))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, marker)
    _fsync_path(part_dir, directory=True)
    _fsync_path(stage, directory=True)  # the partial dir itself, if new
    _fsync_path(os.path.dirname(stage), directory=True)  # and the staging dir, if new
    return True


def _unsynced_boot(stage: str) -> str | None:
    """The boot id in ``stage``'s marker; None when it has none (nothing unsynced)."""
    try:
        with open(os.path.join(stage, PARTIAL_DIR, UNSYNCED), "rb") as fh:
            return fh.read(64).decode("ascii", "replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _drop_if_unsynced_by_a_crash(stage: str) -> None:
    """A staging dir whose files were placed unsynced before the machine restarted may hold
    files of the right size but not the right bytes: start it over."""
    boot = _unsynced_boot(stage)
    if boot is not None and boot != boot_id():
        shutil.rmtree(stage, ignore_errors=True)


#: at least this many files are made durable with one ``syncfs`` of their filesystem rather
#: than an fsync each: every fsync waits for a flush of the disk's cache, a syncfs for one
SYNCFS_MIN = 64


def sync_files(paths: list[str]) -> bool:
    """Make the bytes of all ``paths`` (on one filesystem) durable, with their directories'
    entries where one ``syncfs`` does it (Linux; then True, else False).

    Many files: one ``syncfs`` (like ``sync``, it also writes what other processes left
    dirty on that filesystem). Otherwise, or where syncfs might not report a failed write
    (Linux before 5.8), the writeback of every file is started first, all together, then
    each is fsync'ed: the disk sees one queue of writes rather than a write and a flush per
    file."""
    if len(paths) >= SYNCFS_MIN and _syncfs(paths[0]):
        return True
    fds: list[int] = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            fds.append(fd)
            start_writeback(fd, 0, 0)
            if len(fds) >= 256:  # bounded: a model of any number of files
                _fsync_all(fds)
        _fsync_all(fds)
    finally:
        for fd in fds:
            os.close(fd)
    return False


def _syncfs_reports_errors() -> bool:
    """Linux 5.8 and later: ``syncfs`` fails when a write it waited for failed (before, it
    could return 0 having lost data)."""
    if not sys.platform.startswith("linux"):
        return False
    release = os.uname().release.split(".")
    try:
        return (int(release[0]), int(release[1].split("-")[0])) >= (5, 8)
    except (ValueError, IndexError):
        return False


def _syncfs(path: str) -> bool:
    """``syncfs`` of the filesystem holding ``path``; False where it cannot be trusted."""
    if not _syncfs_reports_errors():
        return False
    import ctypes

    try:
        fn = libc().syncfs
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    fd = os.open(path, os.O_RDONLY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)
    return True


def sync_tree(top: str) -> None:
    """Make everything under ``top`` durable: every file's bytes (:func:`sync_files`), then
    every directory, deepest first (unless the syncfs did it)."""
    files: list[str] = []
    dirs: list[str] = []
    for dirpath, _dirs, names in os.walk(top):
        dirs.append(dirpath)
        files += [os.path.join(dirpath, n) for n in names]
    if sync_files([f for f in files if not os.path.islink(f)]):
        return
    for d in reversed(dirs):
        _fsync_path(d, directory=True)


def _fsync_all(fds: list[int]) -> None:
    while fds:
        fd = fds.pop()
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- status ----------------------------------------------------------------------------
def status(root: str, rel: str, digest: str = "") -> dict[str, Any]:
    """What the target holds for ``rel`` (and the staging dir of ``digest``).

    With a ``digest`` (a publish about to stage it), refuses a model whose directory would
    nest with another model's, before anything is written.
    """
    _check_root(root)
    if digest:
        _check_no_overlap(root, rel)
    final = final_dir(root, rel)
    manifest = None
    try:
        with open(os.path.join(final, MANIFEST_NAME), "rb") as fh:
            manifest = fh.read().decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        pass
    # without a manifest, files are only of interest to a publish (``digest``), which may
    # adopt some that another tool placed there before it was cut (see ``adopt``)
    current = _sizes_under(final) if manifest is not None or digest else {}
    current.pop(MANIFEST_NAME, None)
    staged: dict[str, int] = {}
    partials: dict[str, int] = {}
    if digest:
        stage = staging_dir(root, rel, digest)
        _drop_if_unsynced_by_a_crash(stage)
        staged = _sizes_under(stage, skip=PARTIAL_DIR)
        staged.pop(MANIFEST_NAME, None)
        partials = _partial_sizes(os.path.join(stage, PARTIAL_DIR))
    return {"manifest": manifest, "current": current, "staged": staged, "partials": partials}


# ---- receive ---------------------------------------------------------------------------
def receive(
    root: str,
    rel: str,
    digest: str,
    blob: dict[str, Any],
    read: Reader,
    on_bytes: OnBytes = lambda n: None,
    dir_mode: int | None = None,
    file_mode: int | None = None,
    ready: Callable[[], None] | None = None,
    src_fd: int | None = None,
    src_key: list[int] | None = None,
    durable: bool = True,
) -> dict[str, Any]:
    """Receive one blob ``{"sha256", "size", "offset", "paths"}`` from ``read``.

    ``src_fd`` (local publishes): the source file itself; its bytes are then copied by the
    kernel (``copy_file_range``) while they are hashed, and the file must not change
    meanwhile (its size/mtime/ctime are compared before and after).

    ``src_key`` (with ``src_fd``): the identity ``[dev, ino, size, mtime_ns, ctime_ns]`` at
    which the caller verified the source's sha256 (the dev cache's hash index). When the
    source still has exactly that identity before and after the copy, and the copy starts
    at 0, its bytes are the verified ones and are not hashed again (a resumed copy always
    is: its prefix came from an earlier attempt).

    ``durable`` False: the file is placed without an fsync (``prepare`` syncs them all,
    see the module's docstring), unless this host cannot tell a restart happened.

    ``ready()`` is called once the partial file is locked and its prefix hashed, just before
    the first byte is read (the remote tells the client to start streaming). Returns
    ``{"complete": True}`` once verified and placed at every path, or
    ``{"complete": False, "offset": n}`` when the input ended early (kept for resume).
    """
    _check_root(root)
    sha, size, offset = str(blob["sha256"]), int(blob["size"]), int(blob["offset"])
    stage = staging_dir(root, rel, digest)
    part_dir = os.path.join(stage, PARTIAL_DIR)
    _makedirs(part_dir, dir_mode)
    part = os.path.join(part_dir, sha)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644 if file_mode is None else file_mode)
    try:
        h = _resume(fd, part, size, offset)
        if ready is not None:
            ready()
        if src_fd is not None:
            got, longer, trusted = _copy_file(fd, src_fd, src_key, h, offset, size, on_bytes)
        else:
            got = offset + pump_stream(fd, read, h, size - offset, on_bytes)
            longer = got >= size and bool(read(memoryview(bytearray(1))))
            trusted = False
        if got < size:
            return {"complete": False, "offset": got}
        _check_received(fd, part, size, sha, longer, None if trusted else h)
        if durable or not _mark_unsynced(stage):
            os.fsync(fd)
    finally:
        os.close(fd)
    if file_mode is not None:
        os.chmod(part, file_mode)
    _place(part, stage, list(blob["paths"]), dir_mode)
    return {"complete": True, "offset": size}


def _resume(fd: int, part: str, size: int, offset: int) -> Any:
    """Lock the partial file ``fd`` (another publish may be writing it), check it holds the
    ``offset`` bytes the client resumes from, and hash them: the sha256 to go on with."""
    _lock(fd, fcntl.LOCK_EX, 5.0, part)
    have = os.fstat(fd).st_size
    if have > size:  # not a prefix of this blob: start over
        os.ftruncate(fd, 0)
        have = 0
    if have != offset:
        raise StageError("offset_mismatch", f"partial file holds {have} bytes, not {offset}", part)
    h = hashlib.sha256()
    if offset:
        rfd = os.open(part, os.O_RDONLY)
        try:
            hash_prefix(rfd, offset, h)
        finally:
            os.close(rfd)
        os.lseek(fd, offset, os.SEEK_SET)
    return h


def _copy_file(
    fd: int,
    src_fd: int,
    src_key: list[int] | None,
    h: Any,
    offset: int,
    size: int,
    on_bytes: OnBytes,
) -> tuple[int, bool, bool]:
    """Copy the local source ``src_fd`` from ``offset`` into ``fd``: (bytes now held, whether
    the source is longer than ``size``, whether its bytes are trusted without hashing).

    Trusted: a copy from 0 of a source still at the identity ``src_key`` it was verified at.
    """
    before = os.fstat(src_fd)
    trusted = offset == 0 and src_key is not None and _key(before) == list(src_key)
    got = offset + pump_file(fd, src_fd, None if trusted else h, size - offset, on_bytes)
    after = os.fstat(src_fd)
    if changed(before, after):  # (same fd: dev and ino cannot change)
        os.ftruncate(fd, 0)
        raise StageError("source_changed", "the source file changed while copied")
    return got, after.st_size > size, trusted


def _check_received(fd: int, part: str, size: int, sha: str, longer: bool, h: Any) -> None:
    """Refuse a blob with more than ``size`` bytes, or (``h`` not None) whose sha256 is not
    ``sha``; the partial file is emptied first, so a retry starts over."""
    if longer:
        os.ftruncate(fd, 0)
        raise StageError("size_mismatch", f"more than the expected {size} bytes", part)
    if h is not None and h.hexdigest() != sha:
        os.ftruncate(fd, 0)
        raise StageError(
            "checksum_mismatch",
            f"sha256 {h.hexdigest()} of the received bytes is not the expected {sha}",
            part,
        )


def _key(st: os.stat_result) -> list[int]:
    """A file's identity, as :func:`axon.hashing.file_key` (a list: it crosses JSON)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(src, dst)  # copy_file_range / sendfile, reflink where supported


def _place(part: str, stage: str, paths: list[str], dir_mode: int | None) -> None:
    """Move a verified blob to its first path and link it at the others."""
    first = os.path.join(stage, *paths[0].split("/"))
    _makedirs(os.path.dirname(first), dir_mode)
    os.replace(part, first)
    for path in paths[1:]:
        dst = os.path.join(stage, *path.split("/"))
        _makedirs(os.path.dirname(dst), dir_mode)
        if os.path.lexists(dst):
            os.unlink(dst)
        _link_or_copy(first, dst)


# ---- adopt: files another tool placed ------------------------------------------------------
def adopt(
    root: str,
    rel: str,
    digest: str,
    blobs: list[dict[str, Any]],
    dir_mode: int | None = None,
    file_mode: int | None = None,
) -> dict[str, Any]:
    """Place blobs whose bytes the current version already holds though no manifest we trust
    says so: another tool (the upstream Go axon's publish, a ``cp -r``) put the model there.

    Each blob is ``{"sha256", "size", "paths", "from"}``: ``from`` lists the current
    version's files (relative paths) that may hold it. Such a file is hard-linked into the
    staging dir under a temporary name (a copy where a link is refused), and *that* file,
    the one the new version will hold, is hashed here: only one whose size and sha256 match
    is placed at every path of the blob; any other is dropped and the blob is sent as usual.
    Answers ``{"adopted": [sha256...], "bytes": n}``.
    """
    _check_root(root)
    _check_no_overlap(root, rel)
    final = final_dir(root, rel)
    stage = staging_dir(root, rel, digest)
    adopted: list[str] = []
    nbytes = 0
    for blob in blobs:
        sha, size = str(blob["sha256"]), int(blob["size"])
        paths = [str(p) for p in blob["paths"]]
        for src in blob.get("from") or ():
            if _adopt_one(os.path.join(final, *str(src).split("/")), stage, sha, size, paths,
                          dir_mode):  # fmt: skip
                adopted.append(sha)
                nbytes += size
                break
    if adopted and file_mode is not None:
        for path in {p for blob in blobs if blob["sha256"] in adopted for p in blob["paths"]}:
            os.chmod(os.path.join(stage, *path.split("/")), file_mode)
    return {"adopted": adopted, "bytes": nbytes}


def _adopt_one(
    src: str, stage: str, sha: str, size: int, paths: list[str], dir_mode: int | None
) -> bool:
    """Link (or copy) the regular file ``src`` into ``stage`` and place it at ``paths`` when
    the linked file has ``size`` bytes of sha256 ``sha``; False (nothing placed) otherwise."""
    try:
        st = os.lstat(src)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False  # a link, a directory, another size: nothing to hash
    part_dir = os.path.join(stage, PARTIAL_DIR)
    _makedirs(part_dir, dir_mode)
    tmp = os.path.join(part_dir, sibling(sha, TMP_TAG, "adopt"))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    _link_or_copy(src, tmp)
    ok = False
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            before = os.fstat(fd)
            h = hashlib.sha256()
            if stat.S_ISREG(before.st_mode) and before.st_size == size:
                hash_prefix(fd, size, h)
                ok = h.hexdigest() == sha and not changed(before, os.fstat(fd))
            # placed unsynced, as a received file: a crash of the machine before prepare
            # must not leave a staged file whose bytes never reached the disk
            if ok and not _mark_unsynced(stage):
                os.fsync(fd)
        finally:
            os.close(fd)
    except StageError:
        ok = False  # the file shrank while hashed
    if not ok:
        os.unlink(tmp)
        return False
    _place(tmp, stage, paths, dir_mode)
    return True


# ---- prepare / commit / abort ------------------------------------------------------------
def prepare(
    root: str,
    rel: str,
    digest: str,
    manifest: str,
    expected: list[list[Any]],
    links: list[list[str]],
    dir_mode: int | None = None,
    file_mode: int | None = None,
) -> dict[str, Any]:
    """Complete the staging dir: link ``links`` ([current path, new path]) from the current
    version, check every ``expected`` [path, size], write manifest.yaml, apply modes, fsync.
    """
    _check_root(root)
    _check_no_overlap(root, rel)
    final = final_dir(root, rel)
    stage = staging_dir(root, rel, digest)
    _makedirs(stage, dir_mode)
    for src, dst in links:
        target = os.path.join(stage, *dst.split("/"))
        if os.path.lexists(target):
            continue
        _makedirs(os.path.dirname(target), dir_mode)
        _link_or_copy(os.path.join(final, *src.split("/")), target)
    have = _sizes_under(stage, skip=PARTIAL_DIR)
    want = {str(p): int(s) for p, s in expected}
    wrong = sorted(p for p, s in want.items() if have.get(p) != s)
    if wrong:
        raise StageError(
            "incomplete",
            f"{len(wrong)} file(s) missing or of the wrong size in staging: {wrong[:5]}",
            stage,
        )
    for extra in set(have) - set(want) - {MANIFEST_NAME}:
        os.unlink(os.path.join(stage, *extra.split("/")))
    _write_manifest(stage, manifest, file_mode, durable=False)
    # every file's bytes on disk (one pass for all: the durability of the whole version),
    # then no longer marked unsynced, then every directory, then the version may be swapped in
    files = [os.path.join(stage, *p.split("/")) for p in want] + [
        os.path.join(stage, MANIFEST_NAME)
    ]
    sync_files(files)
    shutil.rmtree(os.path.join(stage, PARTIAL_DIR), ignore_errors=True)
    for dirpath, _dirs, names in os.walk(stage, topdown=False):
        if file_mode is not None:
            for name in names:
                os.chmod(os.path.join(dirpath, name), file_mode)
        if dir_mode is not None:
            os.chmod(dirpath, dir_mode)
        _fsync_path(dirpath, directory=True)
    _fsync_path(os.path.dirname(stage), directory=True)
    return {"path": stage}


def _write_manifest(stage: str, text: str, file_mode: int | None, durable: bool = True) -> None:
    tmp = os.path.join(stage, sibling(MANIFEST_NAME, TMP_TAG, "axon"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, memoryview(text.encode("utf-8")))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o644 if file_mode is None else file_mode)
    os.replace(tmp, os.path.join(stage, MANIFEST_NAME))


def _exchange(a: str, b: str) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths atomically. False where unsupported."""
    import ctypes

    try:
        fn = libc().renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a)


def commit(root: str, rel: str, digest: str) -> dict[str, Any]:
    """Make the prepared staging dir visible at the final path in one step."""
    _check_root(root)
    final = final_dir(root, rel)
    stage = staging_dir(root, rel, digest)
    if not os.path.exists(os.path.join(stage, MANIFEST_NAME)) or _unsynced_boot(stage):
        raise StageError("not_prepared", "nothing prepared to commit", stage)
    parent = os.path.dirname(final)
    _check_no_overlap(root, rel)  # again: another model may have been published meanwhile
    how = "rename"
    if not os.path.lexists(final):
        os.rename(stage, final)
    elif _exchange(stage, final):
        how = "exchange"  # ``stage`` now holds the previous version
        shutil.rmtree(stage, ignore_errors=True)
    else:
        # No RENAME_EXCHANGE (old kernel, some NFS servers): for the microseconds between
        # these two renames the path is absent, never partial.
        how = "aside"
        old = os.path.join(parent, sibling(os.path.basename(final), OLD_TAG, digest[:16]))
        os.rename(final, old)
        os.rename(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_path(parent, directory=True)
    _drop_stale_staging(final)
    return {"path": final, "how": how}


STALE_SECONDS = 24 * 3600


def _drop_stale_staging(final: str) -> None:
    """Remove what publishes of this version abandoned over a day ago: staging dirs (one
    resumed within a day keeps its partial files) and the previous versions an ``--atomic``
    switch kept aside (``.rollback-``; left only by a crash mid-switch, as ``.old-``).

    A staging dir's age is its mtime (it changes with every file received). A copy aside
    is aged by the later of mtime and ctime: ``cp -al`` gives it its original's mtime, but
    its ctime is when it was made (nobody can set that back), so a copy a switch is using
    right now is never taken for an old one.
    """
    parent, version = os.path.split(final)
    staging = sibling_prefix(version, STAGING_TAG)
    aside = (sibling_prefix(version, ROLLBACK_TAG), sibling_prefix(version, OLD_TAG))
    now = time.time()
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        try:
            if not name.startswith((staging, *aside)):
                continue
            st = os.lstat(path)
            age = now - (st.st_mtime if name.startswith(staging) else max(st.st_mtime, st.st_ctime))
            if stat.S_ISDIR(st.st_mode) and age > STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def abort(root: str, rel: str, digest: str) -> dict[str, Any]:
    """Drop the staging dir of ``digest``; the current version stays as it is."""
    stage = staging_dir(root, rel, digest)
    shutil.rmtree(stage, ignore_errors=True)
    return {"path": stage}


# ---- remote entry point ------------------------------------------------------------------
def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StageError):
        return {"ok": False, "code": exc.code, "message": exc.message, "path": exc.path}
    if isinstance(exc, OSError):
        return {
            "ok": False,
            "code": "oserror",
            "errno": exc.errno,
            "errname": errno.errorcode.get(exc.errno or 0, ""),
            "message": exc.strerror or str(exc),
            "path": exc.filename or "",
        }
    return {"ok": False, "code": "internal", "message": f"{type(exc).__name__}: {exc}"}


def _reply(out: Any, answer: dict[str, Any]) -> None:
    out.write((json.dumps(answer) + "\n").encode("utf-8"))
    out.flush()


def _serve_receive(inp: Any, out: Any, params: dict[str, Any]) -> dict[str, Any]:
    blob = params["blob"]
    left = [int(blob["size"]) - int(blob["offset"])]

    def read(view: memoryview) -> int:
        if left[0] <= 0:
            return 0
        n = int(inp.readinto(view[: min(len(view), left[0])]) or 0)
        left[0] -= n
        return n

    return receive(read=read, ready=lambda: _reply(out, {"ok": True, "ready": True}), **params)


#: a blob's failure that leaves the stream's framing intact: its bytes are skipped and the
#: next blob received; the answer names it
_BLOB_FAILURES = ("offset_mismatch", "busy", "checksum_mismatch", "size_mismatch")


def receive_many(
    root: str,
    rel: str,
    digest: str,
    blobs: list[dict[str, Any]],
    inp: Any,
    ready: Callable[[], None],
    dir_mode: int | None = None,
    file_mode: int | None = None,
) -> dict[str, Any]:
    """Receive ``blobs`` (each as :func:`receive`) from one stream: their bytes back to back,
    ``size - offset`` each, in order. Each is verified and placed as soon as its last byte
    arrives, so a cut stream leaves every complete blob placed and the one cut short
    resumable at its offset.

    A blob refused on its own (another transfer holds it, a wrong sha256) does not stop the
    stream: its bytes are skipped and it is named in the answer, ``failed``. Input ending
    early: ``{"complete": False, "done": [...], "sha256": cut one, "offset": n}``.
    """
    _check_root(root)
    ready()
    done: list[str] = []
    failed: list[dict[str, Any]] = []
    scratch = memoryview(bytearray(64 * 1024))
    for blob in blobs:
        left = [int(blob["size"]) - int(blob["offset"])]

        def read(view: memoryview, left: list[int] = left) -> int:
            if left[0] <= 0:
                return 0
            n = int(inp.readinto(view[: min(len(view), left[0])]) or 0)
            left[0] -= n
            return n

        try:
            got = receive(
                root, rel, digest, blob, read, dir_mode=dir_mode, file_mode=file_mode,
                durable=False,
            )  # fmt: skip
        except StageError as exc:
            if exc.code not in _BLOB_FAILURES:
                raise
            failed.append({"sha256": blob["sha256"], **_error(exc)})
            while left[0] > 0 and read(scratch):  # skip the rest of its bytes
                pass
            if left[0] > 0:
                return {"complete": False, "done": done, "failed": failed, "offset": 0,
                        "sha256": blob["sha256"]}  # fmt: skip
            continue
        if not got["complete"]:
            return {"complete": False, "done": done, "failed": failed,
                    "offset": got["offset"], "sha256": blob["sha256"]}  # fmt: skip
        done.append(str(blob["sha256"]))
    return {"complete": True, "done": done, "failed": failed}


#: the operations taking ``(root, rel, digest, **params)`` and answering a dict; ``receive``
#: and ``receive_many`` also take the bytes, so each caller wires them to its own source
OPERATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "status": status,
    "adopt": adopt,
    "prepare": prepare,
    "commit": commit,
    "abort": abort,
}


def serve(inp: Any, out: Any) -> int:
    """Answer requests until EOF: one JSON line ``{"op", "params"}`` in, one JSON line out.

    ``receive`` is a dialogue: request line, ``{"ready": true}`` (or an error: then no bytes
    follow), exactly ``size - offset`` raw bytes, result line. ``receive_many`` likewise,
    with the bytes of every blob back to back and one result line for all of them. After a
    failure mid-bytes, or input that ends early (a cut connection), the framing is lost:
    answer and exit.
    """
    while True:
        line = inp.readline()
        if not line:
            return 0
        streaming = False
        try:
            req = json.loads(line)
            op, params = req.get("op"), req.get("params") or {}
            if op in ("receive", "receive_many"):
                streaming = True  # a refusal too ends the dialogue: the client may be sending
                if op == "receive":
                    answer = _serve_receive(inp, out, params)
                else:
                    ready = lambda: _reply(out, {"ok": True, "ready": True})  # noqa: E731
                    answer = receive_many(inp=inp, ready=ready, **params)
                if not answer["complete"]:
                    answer["ok"] = True
                    _reply(out, answer)
                    return 0
            elif op in OPERATIONS:
                answer = OPERATIONS[op](**params)
            else:
                raise StageError("usage", f"unknown operation {op!r}")
            answer["ok"] = True
        except Exception as exc:
            _reply(out, _error(exc))
            if streaming:
                return 3
            continue
        _reply(out, answer)


def main(argv: list[str]) -> int:
    """Entry point on the remote host: ``serve`` on stdin/stdout."""
    # A dropped connection must leave a resumable partial file, not kill us mid-write.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # a larger pipe from sshd: fewer wake-ups per MiB (1031 = F_SETPIPE_SZ on Linux)
    with contextlib.suppress(OSError):
        fcntl.fcntl(0, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1024 * 1024)
    try:
        return serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the client went away; partial files are kept for resume
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
