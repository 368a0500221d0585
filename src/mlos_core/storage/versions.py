"""Version directories: build from blobs, make visible atomically, keep one previous generation.

Where visible versions, staging, previous generations and trash live: :mod:`modelpkg.layout`.
A visible version is manifest.yaml plus its files, hard links to blobs; a prepared version
waits in staging, complete and fsynced; a re-publish keeps the version it replaced as the
previous generation (for rollback).

A version becomes visible with one ``rename`` (new) or ``renameat2(RENAME_EXCHANGE)``
(replacement): a reader sees the old tree or the new one, never a mix. Everything under
staging and trash is a leftover after a crash and is removed at start-up.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlos_core.errors import MissingBlob, NotFound, SizeMismatch, no_space
from mlos_core.storage.blobs import BlobStore
from modelpkg.atomic import exchange, fsync_dir, remove_tree
from modelpkg.errors import PackageError
from modelpkg.layout import PREVIOUS_DIR, STAGING_DIR, STATE_DIR, TRASH_DIR
from modelpkg.manifest import MANIFEST_NAME, FileEntry, Manifest
from modelpkg.refs import ModelRef

log = logging.getLogger("mlos_core.versions")


def crashpoint(name: str) -> None:
    """Fault injection for the crash tests: ``MLOS_CORE_CRASHPOINT=<name>`` makes the server
    SIGKILL itself at that step of a publish (staged, swapped, kept-previous, moved-aside);
    ``MLOS_CORE_NO_EXCHANGE=1`` takes the path of filesystems without RENAME_EXCHANGE."""
    if os.environ.get("MLOS_CORE_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class FoundModel:
    ref: ModelRef
    path: Path
    manifest: Manifest


class VersionStore:
    def __init__(self, models_dir: Path, blobs: BlobStore, *, durable: bool = True) -> None:
        self.models_dir = models_dir
        self.state_dir = models_dir / STATE_DIR
        self.staging_dir = self.state_dir / STAGING_DIR
        self.previous_dir = self.state_dir / PREVIOUS_DIR
        self.trash_dir = self.state_dir / TRASH_DIR
        self.blobs = blobs
        self.durable = durable
        for d in (self.staging_dir, self.previous_dir, self.trash_dir):
            d.mkdir(parents=True, exist_ok=True)

    def clean_leftovers(self) -> list[Path]:
        """Remove staging and trash trees (crash leftovers); called at start-up."""
        removed = []
        for d in (self.staging_dir, self.trash_dir):
            for p in d.iterdir():
                remove_tree(p)
                removed.append(p)
        return removed

    def path_for(self, ref: ModelRef) -> Path:
        return self.models_dir / ref.relpath

    # ---- building -------------------------------------------------------------------
    def new_staging(self) -> Path:
        path = self.staging_dir / uuid.uuid4().hex
        path.mkdir()
        return path

    def stage(self, manifest: Manifest) -> Path:
        """A new staging dir built for ``manifest`` (:meth:`build`); removed on any failure."""
        staged = self.new_staging()
        try:
            self.build(staged, manifest)
        except BaseException:
            remove_tree(staged)
            raise
        return staged

    def build(self, staged: Path, manifest: Manifest) -> None:
        """Fill ``staged`` with hard links to each file's blob + manifest.yaml; fsync dirs."""
        dirs = {staged}
        try:
            for entry in manifest.files:
                self._link(staged, entry, dirs)
            with open(staged / MANIFEST_NAME, "w", encoding="utf-8") as fh:
                fh.write(manifest.to_yaml())
                if self.durable:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space("the staged model directory") from exc
            raise
        if self.durable:
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(d)

    def _link(self, staged: Path, entry: FileEntry, dirs: set[Path]) -> None:
        blob = self.blobs.path(entry.sha256)
        try:
            st = os.stat(blob)
        except FileNotFoundError:
            raise MissingBlob(
                f"{entry.path}: content {entry.sha256[:12]} has not been uploaded; "
                "send it, then commit again",
            ) from None
        if st.st_size != entry.size:
            raise SizeMismatch(
                f"{entry.path}: manifest says {entry.size} bytes, content {entry.sha256[:12]} "
                f"has {st.st_size}",
            )
        dest = staged / entry.path
        if dest.parent != staged:
            dest.parent.mkdir(parents=True, exist_ok=True)
            parent = dest.parent
            while parent != staged:
                dirs.add(parent)
                parent = parent.parent
        os.link(blob, dest)

    # ---- making visible ---------------------------------------------------------------
    def publish(self, staged: Path, ref: ModelRef) -> Path:
        """Make ``staged`` the visible version of ``ref``; keep the replaced one as previous."""
        final = self.path_for(ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        crashpoint("staged")
        try:
            os.rename(staged, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            self._swap_in(staged, final, ref)
        if self.durable:
            fsync_dir(final.parent)
        return final

    def _swap_in(self, staged: Path, final: Path, ref: ModelRef) -> None:
        if os.environ.get("MLOS_CORE_NO_EXCHANGE") != "1" and exchange(staged, final):
            crashpoint("swapped")
            self._keep_previous(staged, ref)  # ``staged`` holds the old tree now
            crashpoint("kept-previous")
            return
        # No RENAME_EXCHANGE (e.g. NFS): move the old tree to previous/, then the new one in.
        # A crash between the two renames leaves previous/ without a visible version, which
        # :meth:`recover` puts back at start-up (a microsecond gap, never a partial tree).
        self._keep_previous(final, ref)
        crashpoint("moved-aside")
        os.rename(staged, final)

    def _keep_previous(self, old: Path, ref: ModelRef) -> None:
        prev = self.previous_dir / ref.relpath
        prev.parent.mkdir(parents=True, exist_ok=True)
        self._drop(prev)
        os.rename(old, prev)

    def _drop(self, path: Path) -> None:
        if path.exists():
            doomed = self.trash_dir / uuid.uuid4().hex
            os.rename(path, doomed)
            remove_tree(doomed)

    def recover(self) -> list[Path]:
        """Put back a previous generation whose visible version is missing (a crash in the
        middle of a swap without RENAME_EXCHANGE); delete removes previous/ first, so this
        state never means "deleted"."""
        restored = []
        for dirpath, dirs, files in os.walk(self.previous_dir):
            if MANIFEST_NAME not in files:
                continue
            dirs.clear()
            rel = Path(dirpath).relative_to(self.previous_dir)
            final = self.models_dir / rel
            if not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(dirpath, final)
                restored.append(final)
        return restored

    def rollback(self, ref: ModelRef) -> Path:
        """Swap the previous generation back in (rolling back twice rolls forward)."""
        prev = self.previous_dir / ref.relpath
        final = self.path_for(ref)
        if not prev.is_dir():
            raise NotFound(f"{ref.id}: no previous version kept on this instance")
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            os.rename(prev, final)
        elif not exchange(prev, final):
            aside = self.trash_dir / uuid.uuid4().hex
            os.rename(final, aside)
            os.rename(prev, final)
            os.rename(aside, prev)
        if self.durable:
            fsync_dir(final.parent)
        return final

    def delete(self, ref: ModelRef) -> bool:
        """Remove the visible version and its previous generation. False if absent."""
        found = False
        # previous/ first: a crash in between must not look like an interrupted swap
        for path in (self.previous_dir / ref.relpath, self.path_for(ref)):
            if path.is_dir():
                self._drop(path)
                found = path == self.path_for(ref) or found
        self._prune_empty(self.path_for(ref).parent)
        return found

    def _prune_empty(self, d: Path) -> None:
        while d != self.models_dir and d.is_dir():
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    # ---- finding ----------------------------------------------------------------------
    def scan(self) -> list[FoundModel]:
        """Every complete model under the models dir (manifest.yaml + every listed file)."""
        found: list[FoundModel] = []
        for dirpath, dirs, files in os.walk(self.models_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if MANIFEST_NAME not in files:
                continue
            path = Path(dirpath)
            rel = path.relative_to(self.models_dir).parts
            dirs.clear()  # a model dir does not nest models
            try:
                ref = ModelRef.from_parts(rel)
                manifest = Manifest.load(path)
            except PackageError as exc:
                log.warning("scan: skipping %s: %s", path, exc)
                continue
            missing = incomplete_files(path, manifest)
            if missing:
                log.warning("scan: skipping incomplete %s: %s", path, ", ".join(missing[:5]))
                continue
            found.append(FoundModel(ref, path, manifest))
        return found


def incomplete_files(path: Path, manifest: Manifest) -> list[str]:
    """Listed files that are missing or (when a size is given) of the wrong size."""
    bad = []
    for entry in manifest.files:
        try:
            st = os.stat(path / entry.path)
        except OSError:
            bad.append(f"{entry.path} missing")
            continue
        if entry.size and st.st_size != entry.size:
            bad.append(f"{entry.path} has {st.st_size} bytes, manifest says {entry.size}")
    return bad
