"""Filesystem primitives for "never a half model": stage, fsync, rename.

Used by the dev cache, the filesystem/NFS/shared-directory transports and the mlos-core
storage, so the protocol is written once (the names of the siblings it makes are in
:mod:`modelpkg.layout`):

1. write everything into a staging directory on the *same filesystem* as the destination;
2. fsync every file and the staging directory;
3. make it visible with one rename. When the destination already exists, Linux'
   ``renameat2(RENAME_EXCHANGE)`` swaps the two directories atomically (a reader sees the old
   tree or the new one, never neither); where that is unavailable we fall back to
   rename-aside + rename-in, which leaves a window of microseconds with no directory (never a
   partial one);
4. delete the old tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from modelpkg.layout import OLD_TAG, STAGING_TAG, TMP_TAG, is_leftover, sibling

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc: ctypes.CDLL | None = None
_exchange_supported: bool | None = None


def _renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols include libc's
        except OSError:
            return None
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Atomically swap two existing paths. False when the OS/filesystem cannot."""
    global _exchange_supported
    if _exchange_supported is False:
        return False
    fn = _renameat2()
    if fn is None:
        _exchange_supported = False
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a))


def syncfs_reports_errors(release: str | None = None) -> bool:
    """May one ``syncfs(2)`` stand for an fsync of every file it covers? Only on Linux 5.8
    and later: before, ``syncfs`` could return 0 after a write-back error, having lost the
    data. ``release``: a kernel release string (``os.uname().release`` by default).

    The SSH transport's target half (``axon/transports/stagedir.py``) keeps its own copy of
    this test: it runs on the remote host, standard library only."""
    if release is None:
        if os.uname().sysname != "Linux":
            return False
        release = os.uname().release
    parts = release.split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (5, 8)
    except (ValueError, IndexError):
        return False


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (files first, then their dirs)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def staging_name(final: Path, tag: str = STAGING_TAG) -> Path:
    """A hidden sibling of ``final``: same filesystem, so the later rename is atomic."""
    return final.parent / sibling(final.name, tag, os.urandom(6).hex())


def replace_dir(staged: Path, final: Path, *, durable: bool = True) -> None:
    """Make ``staged`` visible at ``final`` in one step, replacing what was there.

    ``staged`` must be on the same filesystem as ``final`` (use :func:`staging_name`).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        fsync_dir(staged)
    try:
        os.rename(staged, final)  # works when final does not exist (or is an empty dir)
        if durable:
            fsync_dir(final.parent)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    if exchange(staged, final):
        # ``staged`` now holds the old tree.
        if durable:
            fsync_dir(final.parent)
        remove_tree(staged)
        return
    old = staging_name(final, OLD_TAG)
    os.rename(final, old)
    os.rename(staged, final)
    if durable:
        fsync_dir(final.parent)
    remove_tree(old)


def remove_tree(path: Path) -> None:
    """Remove a file or tree; missing is fine. Never follows symlinks out of it."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def atomic_dir(final: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a staging dir; on success it replaces ``final`` atomically, on error it is removed."""
    staged = staging_name(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged.mkdir()
    try:
        yield staged
        if durable:
            fsync_tree(staged)
        replace_dir(staged, final, durable=durable)
    except BaseException:
        remove_tree(staged)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``path`` via a temporary sibling + rename: readers see old or new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_name(path, TMP_TAG)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, **kw: object) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), **kw)  # type: ignore[arg-type]


def clean_leftovers(root: Path, *, max_depth: int = 8, min_age: float = 0.0) -> list[Path]:
    """Remove staging/old/tmp leftovers of interrupted writes under ``root``; return them.

    ``min_age`` (seconds since last change) spares the staging dirs of writes still running.
    """
    import time

    removed: list[Path] = []
    newest = time.time() - min_age
    if not root.is_dir():
        return removed
    base_depth = len(root.parts)
    for dirpath, dirs, files in os.walk(root):
        depth = len(Path(dirpath).parts) - base_depth
        for name in list(dirs) + files:
            if is_leftover(name):
                p = Path(dirpath) / name
                if min_age and _mtime(p) > newest:
                    continue
                remove_tree(p)
                removed.append(p)
                if name in dirs:
                    dirs.remove(name)
        if depth >= max_depth:
            dirs.clear()
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0
