"""The files a model directory holds on disk, checked against its manifest: hashed once.

A signature covers the sha256s a manifest lists. Where the server received the bytes itself
(an upload, a one-shot upload, the S3 sync, a pull from a peer) each file was hashed on the
way in. A directory the server did not fill (one registered with ``POST /models/register``,
one found by a scan, at start-up or on ``POST /models/scan``) holds whatever another tool
wrote there, under a ``manifest.yaml`` that may say anything. Before such a directory is
taken as signed, :meth:`OnDisk.check` makes sure it holds what its manifest lists:

* the same set of files: no file missing, renamed or added (the names a signature ignores,
  ``manifest.yaml``, ``.axon_metadata.json`` and upstream's ``<ns>-<name>-<ver>.axon``
  package at the top, are not model files), each a regular file (a symbolic link, a FIFO or
  a device is not), walked without following any link;
* each file with the manifest's size and sha256.

Hashing is done once per file: a file whose sha256 matched is remembered by its path and
identity ``(dev, ino, size, mtime_ns, ctime_ns)`` in ``<state dir>/verified-files.json``, so
a re-scan or a restart reads no byte of it again (ctime cannot be set from user space: a file
rewritten under a faked mtime is hashed again). A file that is the blob store's own file for
its sha256 (a version this server built: a hard link into the store) carrying the store's
seal is trusted as the damage check trusts it (:mod:`mlos_core.storage.damage`: a write
through the link breaks the seal); its ctime moves whenever another version links the same
blob, so it is not remembered by identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterable
from pathlib import Path

from mlos_core.metrics import Metrics
from mlos_core.storage.blobs import READ_CHUNK, SEALED_MTIME_NS, BlobStore
from modelpkg.atomic import atomic_write_bytes
from modelpkg.manifest import FileEntry

log = logging.getLogger("mlos_core.storage")

VERIFIED_FILE = "verified-files.json"  # under the state dir (.mlos/)

FileKey = tuple[int, int, int, int, int]  # (dev, ino, size, mtime_ns, ctime_ns)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class OnDisk:
    """The check, with what it hashed remembered under ``state_dir``; what it reads is
    counted in ``metrics`` (``mlos_signature_hashed_files_total``, ``..._bytes_total``)."""

    def __init__(self, blobs: BlobStore, state_dir: Path, metrics: Metrics) -> None:
        self.blobs = blobs
        self.metrics = metrics
        self.path = state_dir / VERIFIED_FILE
        self.durable = blobs.durable
        self._lock = threading.Lock()
        self._known: dict[str, dict[str, tuple[FileKey, str]]] | None = None

    # ---- the memory -------------------------------------------------------------------
    def _memory(self) -> dict[str, dict[str, tuple[FileKey, str]]]:
        """model dir -> {relative path: (identity, sha256)}, read from disk once."""
        if self._known is None:
            self._known = {}
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                raw = json.loads(self.path.read_bytes())
                for model_dir, files in raw.get("dirs", {}).items():
                    rows = {}
                    for rel, row in files.items():
                        key = tuple(int(v) for v in row[:5])
                        if len(key) == 5 and isinstance(row[5], str):
                            rows[str(rel)] = (key, row[5])
                    self._known[str(model_dir)] = rows
        return self._known

    def _save(self) -> None:
        data = {
            "dirs": {
                d: {rel: [*key, sha] for rel, (key, sha) in sorted(files.items())}
                for d, files in sorted(self._memory().items())
                if files
            }
        }
        try:
            atomic_write_bytes(self.path, json.dumps(data).encode(), durable=self.durable)
        except OSError as exc:  # only a cache: the next check hashes again
            log.warning("cannot write %s: %s", self.path, exc.strerror)

    def retain(self, model_dirs: Iterable[str | Path]) -> None:
        """Forget the files of directories other than ``model_dirs`` (models gone)."""
        keep = {str(d) for d in model_dirs}
        with self._lock:
            known = self._memory()
            gone = [d for d in known if d not in keep]
            for model_dir in gone:
                del known[model_dir]
            if gone:
                self._save()

    # ---- the check --------------------------------------------------------------------
    def check(self, model_dir: Path, files: list[FileEntry], ignored: set[str]) -> list[str]:
        """What differs between ``model_dir`` on disk and the manifest's ``files`` (each
        difference one line naming the file); empty when it holds exactly those files with
        those sha256s. ``ignored``: top-level names that are not model files."""
        listed = {f.path: f for f in files}
        ignored = ignored - set(listed)  # a name the manifest lists is a model file
        try:
            top = os.open(model_dir, _DIR)
        except OSError as exc:
            return [f"the directory cannot be read ({exc.strerror})"]
        problems: list[str] = []
        seen: set[str] = set()
        with self._lock:
            known = self._memory().setdefault(str(model_dir), {})
            before = dict(known)
            try:
                self._walk(top, "", ignored, listed, known, seen, problems)
            finally:
                os.close(top)
            for rel in sorted(set(listed) - seen):
                problems.append(f"missing on disk: {rel}")
            for rel in set(known) - seen:
                del known[rel]
            if known != before:
                self._save()
        return problems

    def _walk(
        self,
        dir_fd: int,
        prefix: str,
        ignored: set[str],
        listed: dict[str, FileEntry],
        known: dict[str, tuple[FileKey, str]],
        seen: set[str],
        problems: list[str],
    ) -> None:
        """Check the files below ``dir_fd`` (depth first: one directory fd open per level)."""
        with os.scandir(dir_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            if not prefix and entry.name in ignored:
                continue
            if entry.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(entry.name, _DIR, dir_fd=dir_fd)
                except OSError as exc:
                    problems.append(f"cannot be read: {rel}/ ({exc.strerror})")
                    continue
                try:
                    self._walk(sub, rel + "/", ignored, listed, known, seen, problems)
                finally:
                    os.close(sub)
            elif not entry.is_file(follow_symlinks=False):
                problems.append(f"not a regular file: {rel}")
            elif rel not in listed:
                problems.append(f"on disk but not in the manifest: {rel}")
            else:
                seen.add(rel)
                why = self._file(dir_fd, entry.name, known, listed[rel], rel)
                if why is not None:
                    problems.append(why)

    def _file(
        self,
        dir_fd: int,
        name: str,
        known: dict[str, tuple[FileKey, str]],
        entry: FileEntry,
        rel: str,
    ) -> str | None:
        """Why ``rel`` is not ``entry`` (None: it is), ``known`` updated."""
        try:
            fd = os.open(name, _FILE, dir_fd=dir_fd)
        except OSError as exc:
            return f"cannot be read: {rel} ({exc.strerror})"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return f"not a regular file: {rel}"
            if st.st_size != entry.size:
                return f"changed on disk: {rel} (size {st.st_size}, the manifest says {entry.size})"
            key = file_key(st)
            if known.get(rel) == (key, entry.sha256) or self._in_store(st, entry.sha256):
                return None
            digest = hashlib.sha256()
            while chunk := os.read(fd, READ_CHUNK):
                digest.update(chunk)
            self.metrics.hashed(st.st_size)
            after = file_key(os.fstat(fd))
        finally:
            os.close(fd)
        if digest.hexdigest() != entry.sha256:
            known.pop(rel, None)
            return (
                f"changed on disk: {rel} (sha256 {digest.hexdigest()[:12]}..., the manifest "
                f"and the signature say {entry.sha256[:12]}...)"
            )
        if after != key:
            return f"changed on disk while it was checked: {rel}"
        known[rel] = (key, entry.sha256)
        return None

    def _in_store(self, st: os.stat_result, sha256: str) -> bool:
        """Is this file the store's sealed blob ``sha256`` (a version the server built)?"""
        if st.st_mtime_ns != SEALED_MTIME_NS:
            return False
        try:
            bst = os.stat(self.blobs.path(sha256))
        except (OSError, ValueError):
            return False
        return (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino)
