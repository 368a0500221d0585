"""Blobs another tool rewrote in place, through the hard link of a version: found, taken out
of the store, and the versions that share them named.

A version mlos-core built is hard links into the blob store. A tool that writes into the
models dir in place (the upstream Go axon's ``publish`` opens each existing file with
``O_TRUNC`` and writes it; root ignores the blobs' 0444 mode) rewrites the blob itself, so
every model that shares those bytes changes with it. Every blob enters the store with one
fixed mtime (:data:`~mlos_core.storage.blobs.SEALED_MTIME_NS`); links and renames keep a
file's mtime, a write sets it to now. :func:`check` (at start-up, on ``POST /models/scan``
and ``POST /models/register``, what upstream calls after copying) stats each file of each
visible version:

* sealed: untouched, nothing more is done (one stat per file);
* not sealed, and the same inode as its blob: suspect. The blob is hashed: still its name
  (rewritten with the same bytes, or a store older than the seal) -> sealed again; else it
  leaves the store for ``.mlos/quarantine/`` (never linked again; the versions still holding
  it keep their bytes), and each version whose manifest gives that sha256 to a file of that
  inode is *damaged* at that path.

An upload does not wait for a scan: the store notes each blob it finds without the seal
while answering what an upload needs (no extra system call), and the core settles those
(:meth:`DamageCheck.settle`) before the answer counts on them.

Quarantined inodes are remembered by the quarantine dir itself (``<sha256>-<id>``, the same
inode), so a later check still names the damaged versions, until no version links one any
more (then it is deleted). A publish of a damaged model sends the damaged files again (the
store no longer has their bytes) and the new version is whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlos_core.storage.blobs import READ_CHUNK, SEALED_MTIME_NS, BlobStore, seal
from mlos_core.storage.versions import FoundModel

log = logging.getLogger("mlos_core.storage")

QUARANTINE_DIR = "quarantine"  # under the state dir (.mlos/)

Inode = tuple[int, int]


@dataclass
class Damage:
    """What one check found: model id -> its damaged paths; blobs taken out this time."""

    models: dict[str, list[str]] = field(default_factory=dict)
    quarantined: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(len(paths) for paths in self.models.values())


def _hashes_to(path: Path, sha256: str) -> bool:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(READ_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256


class DamageCheck:
    """The check, with the quarantine under ``state_dir`` (see the module docstring)."""

    def __init__(self, blobs: BlobStore, state_dir: Path) -> None:
        self.blobs = blobs
        self.quarantine = state_dir / QUARANTINE_DIR

    def _quarantined(self) -> dict[Inode, str]:
        """{inode: sha256} of the quarantined blobs some version still links; the others
        are deleted."""
        out: dict[Inode, str] = {}
        try:
            entries = list(os.scandir(self.quarantine))
        except FileNotFoundError:
            return out
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_nlink <= 1:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            out[(st.st_dev, st.st_ino)] = entry.name.split("-", 1)[0]
        return out

    def _take_out(self, sha256: str) -> None:
        self.quarantine.mkdir(exist_ok=True)
        dest = self.quarantine / f"{sha256}-{uuid.uuid4().hex[:12]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.blobs.path(sha256), dest)
        log.error(
            "blob %s was rewritten in place by another tool (through a version's hard link): "
            "taken out of the store to %s; the models sharing it are marked damaged",
            sha256[:12],
            dest,
        )

    def settle(self, shas: Iterable[str]) -> int:
        """Hash the blobs ``shas`` that lack the seal: seal those that still hold their
        bytes, take the others out of the store; how many were taken out."""
        taken = 0
        for sha in sorted(shas):
            path = self.blobs.path(sha)
            try:
                if os.stat(path).st_mtime_ns == SEALED_MTIME_NS:
                    continue
            except OSError:
                continue
            if _hashes_to(path, sha):
                with contextlib.suppress(OSError):
                    seal(path)
            else:
                self._take_out(sha)
                taken += 1
        return taken

    def check(self, found: Iterable[FoundModel]) -> Damage:
        """Check the files of the visible versions ``found`` (see the module docstring)."""
        versions = list(found)
        inodes: dict[tuple[str, str], Inode] = {}  # (model id, path) -> inode, if not sealed
        suspects: dict[str, Inode] = {}
        for model in versions:
            for entry in model.manifest.files:
                if not entry.known:
                    continue
                try:
                    st = os.lstat(model.path / entry.path)
                except OSError:
                    continue
                if st.st_mtime_ns == SEALED_MTIME_NS:
                    continue
                inode = (st.st_dev, st.st_ino)
                inodes[(model.ref.id, entry.path)] = inode
                if entry.sha256 in suspects:
                    continue
                try:
                    bst = os.stat(self.blobs.path(entry.sha256))
                except OSError:
                    continue
                if (bst.st_dev, bst.st_ino) == inode:
                    suspects[entry.sha256] = inode
        damage = Damage()
        for sha, _inode in sorted(suspects.items()):
            if _hashes_to(self.blobs.path(sha), sha):
                with contextlib.suppress(OSError):
                    seal(self.blobs.path(sha))  # same bytes (or sealed before seals existed)
                continue
            self._take_out(sha)
            damage.quarantined.append(sha)
        bad = self._quarantined() if inodes else {}
        for model in versions:
            for entry in model.manifest.files:
                held = inodes.get((model.ref.id, entry.path))
                if held is not None and bad.get(held) == entry.sha256:
                    damage.models.setdefault(model.ref.id, []).append(entry.path)
        return damage
