"""sha256 of files, fast and only when needed.

* :func:`sha256_file` reads with a large reused buffer (``readinto``): hashlib releases the
  GIL on big updates, so several files hash in parallel threads near ``openssl dgst`` speed.
* :class:`HashIndex` remembers the digest of a file keyed by its identity (device, inode,
  size, mtime_ns, ctime_ns). ctime cannot be set from user space, so a file rewritten with a
  faked mtime is still re-hashed. ``verify`` of an unchanged model reads no file bytes.
* :func:`hash_stats`: many files at once, each stat'ed by the caller once: one query for all
  of them, only the misses hashed (in parallel threads), one transaction to remember them.
  A model of thousands of small files costs a few queries, not a query and a commit per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from axon.progress import skipped as skipped_bytes

CHUNK = 4 * 1024 * 1024

ProgressFn = Callable[[int], None]


def sha256_file(path: str | os.PathLike[str], on_bytes: ProgressFn | None = None) -> str:
    """Hex sha256 of a file, streaming; ``on_bytes(n)`` is called after each chunk."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(view)
            if not n:
                break
            h.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return h.hexdigest()


FileKey = tuple[int, int, int, int, int]  # (dev, ino, size, mtime_ns, ctime_ns)

#: paths per ``IN (...)`` query: below every sqlite's limit on bound variables (999)
_QUERY_BATCH = 500


def absolute(path: str | os.PathLike[str]) -> str:
    """The index's key of a file: its absolute path, as :meth:`pathlib.Path.absolute` gives
    it (not resolved), without building a Path per file."""
    text = os.fspath(path)
    if isinstance(path, Path):
        return text if path.is_absolute() else os.path.join(os.getcwd(), text)
    return str(Path(text).absolute())


def file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Hashed:
    """A file's sha256, and ``key``: the identity at which that digest is known to hold (None
    when the file changed while it was read: the digest is of bytes it no longer holds
    for sure). ``read``: its bytes were read (not found in the index)."""

    sha256: str
    size: int
    key: FileKey | None
    read: bool


class HashIndex:
    """A small sqlite cache of file digests keyed by absolute path and file identity.

    Safe to share between threads and processes (sqlite locking; one connection per thread).
    A missing or corrupt index is rebuilt silently: it is only a cache.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._local = threading.local()
        self._init_lock = threading.Lock()

    def _db(self) -> sqlite3.Connection | None:
        """This thread's connection, or None when there is no usable index (then every
        digest is computed: the index is only a cache and never makes a command fail)."""
        if self.path is None:
            return None
        db: sqlite3.Connection | bool | None = getattr(self._local, "db", None)
        if db is None:
            with self._init_lock:  # threads of one process must not race the schema set-up
                db = self._open()
            # a failure is remembered for this thread: not retried (and waited for) per file
            self._local.db = db if db is not None else False
        return db if isinstance(db, sqlite3.Connection) else None

    def _open(self) -> sqlite3.Connection | None:
        assert self.path is not None
        try:
            return self._connect()
        except (sqlite3.OperationalError, OSError):  # locked, read-only, no permission ...
            return None
        except sqlite3.DatabaseError:  # not a database / malformed: drop it and start over
            try:
                self.path.unlink(missing_ok=True)
                return self._connect()
            except (sqlite3.Error, OSError):
                return None

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # only a cache: a power cut may lose the last rows (files are hashed again), never
            # corrupt it; without this every commit waits for an fsync of the log
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, dev INT, ino INT,"
                " size INT, mtime INT, ctime INT, sha256 TEXT)"
            )
        except BaseException:
            db.close()
            raise
        return db

    def lookup(self, path: Path, st: os.stat_result | None = None) -> str | None:
        """The remembered digest if the file is unchanged since it was hashed, else None."""
        db = self._db()
        if db is None:
            return None
        st = st or os.stat(path)
        try:
            row = db.execute(
                "SELECT dev, ino, size, mtime, ctime, sha256 FROM hashes WHERE path = ?",
                (absolute(path),),
            ).fetchone()
        except sqlite3.Error:  # only a cache: hash instead
            return None
        if row and tuple(row[:5]) == file_key(st):
            return str(row[5])
        return None

    def lookup_many(self, keys: dict[str, FileKey]) -> dict[str, str]:
        """{absolute path: digest} of those of ``keys`` (absolute path -> identity now) that
        are unchanged since they were hashed: one query per few hundred paths."""
        db = self._db()
        if db is None or not keys:
            return {}
        out: dict[str, str] = {}
        paths = list(keys)
        try:
            for i in range(0, len(paths), _QUERY_BATCH):
                chunk = paths[i : i + _QUERY_BATCH]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    "SELECT path, dev, ino, size, mtime, ctime, sha256 FROM hashes"
                    f" WHERE path IN ({marks})",
                    chunk,
                ).fetchall()
                for row in rows:
                    if keys.get(row[0]) == tuple(row[1:6]):
                        out[row[0]] = str(row[6])
        except sqlite3.Error:  # only a cache: hash instead
            return {}
        return out

    def remember_many(self, rows: Iterable[tuple[str, FileKey, str]]) -> None:
        """Remember (absolute path, identity, digest) rows in one transaction."""
        db = self._db()
        todo = [(path, *key, sha) for path, key, sha in rows]
        if db is None or not todo:
            return
        with contextlib.suppress(sqlite3.Error):  # only a cache: not remembering is fine
            db.execute("BEGIN")
            try:
                db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", todo)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def remember(self, path: Path, st: os.stat_result, sha256: str) -> None:
        db = self._db()
        if db is None:
            return
        with contextlib.suppress(sqlite3.Error):  # only a cache: not remembering is fine
            db.execute(
                "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (absolute(path), *file_key(st), sha256),
            )

    def forget_under(self, root: Path) -> None:
        db = self._db()
        if db is None:
            return
        prefix = absolute(root).rstrip("/") + "/"
        with contextlib.suppress(sqlite3.Error):  # only a cache: stale rows never match
            db.execute("DELETE FROM hashes WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))

    def digest(self, path: Path, *, full: bool = False, on_bytes: ProgressFn | None = None) -> str:
        """sha256 of ``path``: from the index when unchanged (unless ``full``), else hashed."""
        st = os.stat(path)
        if not full:
            known = self.lookup(path, st)
            if known is not None:
                if on_bytes is not None:
                    skipped_bytes(on_bytes, st.st_size)
                return known
        sha = sha256_file(path, on_bytes)
        after = os.stat(path)
        if file_key(after) == file_key(st):  # not modified while we read it
            self.remember(path, after, sha)
        return sha

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if isinstance(db, sqlite3.Connection):
            db.close()
        self._local.db = None


def hash_stats(
    files: Sequence[tuple[Path, os.stat_result]],
    *,
    index: HashIndex | None = None,
    full: bool = False,
    workers: int | None = None,
    on_bytes: ProgressFn | None = None,
) -> dict[Path, Hashed]:
    """The sha256 of each of ``files`` (path, its stat now): from the index when unchanged
    (unless ``full``), else read, in parallel threads (``on_bytes`` must be thread-safe).

    One pass: the caller's stat is the identity looked up, one query for every few hundred
    paths, and one transaction remembers what was hashed."""
    idx = index or HashIndex(None)
    paths = {p: absolute(p) for p, _ in files}
    keys = {paths[p]: file_key(st) for p, st in files}
    known = {} if full else idx.lookup_many(keys)
    out: dict[Path, Hashed] = {}
    misses: list[tuple[Path, os.stat_result]] = []
    skipped = 0
    for p, st in files:
        sha = known.get(paths[p])
        if sha is None:
            misses.append((p, st))
        else:
            out[p] = Hashed(sha, st.st_size, file_key(st), read=False)
            skipped += st.st_size
    if on_bytes is not None and skipped:
        skipped_bytes(on_bytes, skipped)  # known: done, but no hashing rate

    def one(item: tuple[Path, os.stat_result]) -> Hashed:
        p, st = item
        sha = sha256_file(p, on_bytes)
        after = os.stat(p)
        same = file_key(after) == file_key(st)  # not modified while we read it
        return Hashed(sha, st.st_size, file_key(after) if same else None, read=True)

    n = workers or min(len(misses), max(2, os.cpu_count() or 2))
    if n <= 1 or len(misses) <= 1:
        hashed = [one(item) for item in misses]
    else:
        from concurrent.futures import ThreadPoolExecutor  # only when there is work

        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="axon-hash") as pool:
            hashed = list(pool.map(one, misses))
    for (p, _st), h in zip(misses, hashed, strict=True):
        out[p] = h
    idx.remember_many((paths[p], h.key, h.sha256) for p, h in out.items() if h.read and h.key)
    return out


def hash_files(
    paths: Iterable[Path],
    *,
    index: HashIndex | None = None,
    full: bool = False,
    workers: int | None = None,
    on_bytes: ProgressFn | None = None,
) -> dict[Path, str]:
    """sha256 of many files, in parallel threads; ``on_bytes`` must be thread-safe."""
    files = [(p, os.stat(p)) for p in paths]
    got = hash_stats(files, index=index, full=full, workers=workers, on_bytes=on_bytes)
    return {p: h.sha256 for p, h in got.items()}
