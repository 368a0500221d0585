"""Version directories: build from blobs, make visible atomically, keep one previous generation.

Where visible versions, staging, previous generations and trash live: :mod:`modelpkg.layout`.
A visible version is manifest.yaml plus its files, hard links to blobs; a prepared version
waits in staging, complete and fsynced; a re-publish keeps the version it replaced as the
previous generation (for rollback).

A version becomes visible with one ``rename`` (new) or ``renameat2(RENAME_EXCHANGE)``
(replacement): a reader sees the old tree or the new one, never a mix. Everything under
staging and trash is a leftover after a crash and is removed at start-up.

A name may hold ``/``, so two model ids can map to nested directories (``n/b@v1`` at
``n/b/v1/``, ``n/b/v1@x`` at ``n/b/v1/x/``): a version is never made visible, rolled back or
deleted where it would replace, write into or remove another model's directory
(:func:`modelpkg.layout.overlapping_model`; :class:`~mlos_core.errors.ModelOverlap`). Every
change of the tree of visible versions happens under one store-wide lock, held only for the
check and the renames, so two overlapping ids published at once (they hold different model
locks) cannot both pass the check.

With ``track_contents``, the store also knows which content (sha256) each visible and
previous version holds, for per-tenant deduplication: :meth:`VersionStore.held_in`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mlos_core.errors import MissingBlob, ModelOverlap, NotFound, SizeMismatch, no_space
from mlos_core.storage.blobs import BlobStore
from modelpkg.atomic import exchange, fsync_dir, remove_tree
from modelpkg.errors import PackageError
from modelpkg.layout import PREVIOUS_DIR, STAGING_DIR, STATE_DIR, TRASH_DIR, overlapping_model
from modelpkg.manifest import MANIFEST_NAME, FileEntry, Manifest
from modelpkg.refs import ModelRef

log = logging.getLogger("mlos_core.versions")


def crashpoint(name: str) -> None:
    """Fault injection for the crash and race tests: ``MLOS_CORE_CRASHPOINT=<name>`` makes the
    server SIGKILL itself at that step of a publish (staged, swapped, kept-previous,
    moved-aside); ``MLOS_CORE_PAUSE=<name>:<seconds>`` makes it wait there (``staged`` is
    between the overlap check and the rename); ``MLOS_CORE_NO_EXCHANGE=1`` takes the path of
    filesystems without RENAME_EXCHANGE."""
    if os.environ.get("MLOS_CORE_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    step, _, seconds = os.environ.get("MLOS_CORE_PAUSE", "").partition(":")
    if step == name:
        time.sleep(float(seconds))


@dataclass
class FoundModel:
    ref: ModelRef
    path: Path
    manifest: Manifest


def contents(manifest: Manifest) -> frozenset[str]:
    """The sha256 of every file of ``manifest`` (interned: versions share them)."""
    return frozenset(sys.intern(f.sha256) for f in manifest.files)


def model_id_at(rel: str) -> str:
    """The model id whose directory is ``rel`` (the path itself if no id maps there)."""
    try:
        return ModelRef.from_parts(rel.split("/")).id
    except PackageError:
        return rel


class VersionStore:
    def __init__(
        self,
        models_dir: Path,
        blobs: BlobStore,
        *,
        durable: bool = True,
        track_contents: bool = False,
    ) -> None:
        self.models_dir = models_dir
        self.state_dir = models_dir / STATE_DIR
        self.staging_dir = self.state_dir / STAGING_DIR
        self.previous_dir = self.state_dir / PREVIOUS_DIR
        self.trash_dir = self.state_dir / TRASH_DIR
        self.blobs = blobs
        self.durable = durable
        for d in (self.staging_dir, self.previous_dir, self.trash_dir):
            d.mkdir(parents=True, exist_ok=True)
        # held for every check-and-rename of the tree of visible versions (see module doc)
        self._tree_lock = threading.Lock()
        self.track_contents = track_contents
        self._contents_lock = threading.Lock()
        self._visible: dict[ModelRef, frozenset[str]] = {}
        self._previous: dict[ModelRef, frozenset[str]] = {}
        self.generation = 0  # changes whenever what the versions hold may have changed

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

    # ---- overlapping ids ----------------------------------------------------------------
    def overlap(self, ref: ModelRef, root: Path | None = None) -> str | None:
        """The id of the model whose directory nests with ``ref``'s under ``root`` (the models
        dir by default), or None."""
        rel = overlapping_model(str(root or self.models_dir), ref.relpath.as_posix())
        return None if rel is None else model_id_at(rel)

    def refuse_overlap(self, ref: ModelRef) -> None:
        """ModelOverlap when ``ref``'s directory nests with another model's."""
        other = self.overlap(ref)
        if other is not None:
            raise ModelOverlap(
                f"model {ref.id} would live at {ref.relpath.as_posix()}/, which nests with "
                f"the directory of model {other}: two model ids may not share a directory; "
                f"nothing changed (choose another name or version, or delete {other} first)",
                overlaps=other,
            )

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
        checked: set[str] = set()  # contents found in the store, of the right size
        try:
            for entry in manifest.files:
                if entry.sha256 not in checked:
                    self._check_blob(entry)
                    checked.add(entry.sha256)
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

    def _check_blob(self, entry: FileEntry) -> None:
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

    def _link(self, staged: Path, entry: FileEntry, dirs: set[Path]) -> None:
        dest = staged / entry.path
        if dest.parent != staged and dest.parent not in dirs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            parent = dest.parent
            while parent != staged:
                dirs.add(parent)
                parent = parent.parent
        self.blobs.link(entry.sha256, dest)  # a blob out of links gets a fresh copy

    # ---- making visible ---------------------------------------------------------------
    def publish(self, staged: Path, ref: ModelRef, manifest: Manifest) -> Path:
        """Make ``staged`` (built for ``manifest``) the visible version of ``ref``; keep the
        replaced one as previous. ModelOverlap, nothing changed, when ``ref``'s directory
        nests with another model's."""
        final = self.path_for(ref)
        doomed: Path | None = None
        with self._tree_lock:
            self.refuse_overlap(ref)
            final.parent.mkdir(parents=True, exist_ok=True)
            crashpoint("staged")
            try:
                os.rename(staged, final)
                replaced = False
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                doomed = self._swap_in(staged, final, ref)
                replaced = True
            self._note_published(ref, manifest, replaced)
        if doomed is not None:
            remove_tree(doomed)
        if self.durable:
            fsync_dir(final.parent)
        return final

    def _swap_in(self, staged: Path, final: Path, ref: ModelRef) -> Path | None:
        """Swap ``staged`` in; the replaced tree becomes previous. Returns the generation
        before that, moved to trash (to remove once the tree lock is released)."""
        if os.environ.get("MLOS_CORE_NO_EXCHANGE") != "1" and exchange(staged, final):
            crashpoint("swapped")
            doomed = self._keep_previous(staged, ref)  # ``staged`` holds the old tree now
            crashpoint("kept-previous")
            return doomed
        # No RENAME_EXCHANGE (e.g. NFS): move the old tree to previous/, then the new one in.
        # A crash between the two renames leaves previous/ without a visible version, which
        # :meth:`recover` puts back at start-up (a microsecond gap, never a partial tree).
        doomed = self._keep_previous(final, ref)
        crashpoint("moved-aside")
        os.rename(staged, final)
        return doomed

    def _keep_previous(self, old: Path, ref: ModelRef) -> Path | None:
        prev = self.previous_dir / ref.relpath
        prev.parent.mkdir(parents=True, exist_ok=True)
        doomed = self._to_trash(prev)
        os.rename(old, prev)
        return doomed

    def _to_trash(self, path: Path) -> Path | None:
        """Move ``path`` (if there) to trash, where nothing reads it; remove it later."""
        if not path.exists():
            return None
        doomed = self.trash_dir / uuid.uuid4().hex
        os.rename(path, doomed)
        return doomed

    # ---- what the versions hold (per-tenant dedup) -------------------------------------
    def _note_published(self, ref: ModelRef, manifest: Manifest, replaced: bool) -> None:
        if not self.track_contents:
            return
        with self._contents_lock:
            if replaced:
                self._previous[ref] = self._visible.get(ref, frozenset())
            self._visible[ref] = contents(manifest)
            self.generation += 1

    def _note_rolled_back(self, ref: ModelRef) -> None:
        if not self.track_contents:
            return
        with self._contents_lock:
            visible = self._visible.pop(ref, frozenset())
            self._visible[ref] = self._previous.pop(ref, frozenset())
            self._previous[ref] = visible
            self.generation += 1

    def _note_deleted(self, ref: ModelRef) -> None:
        with self._contents_lock:
            self._visible.pop(ref, None)
            self._previous.pop(ref, None)
            self.generation += 1

    def note_found(self, found: Iterable[FoundModel]) -> None:
        """What a scan found in the models dir (models copied in by hand, or at start-up);
        a tracked model whose manifest is gone is forgotten."""
        if not self.track_contents:
            return
        with self._contents_lock:
            for model in found:
                self._visible[model.ref] = contents(model.manifest)
            for ref in list(self._visible):
                if not (self.path_for(ref) / MANIFEST_NAME).is_file():
                    del self._visible[ref]
            self.generation += 1

    def note_previous(self) -> None:
        """Read what the previous generations hold (start-up)."""
        if not self.track_contents:
            return
        for dirpath, dirs, files in os.walk(self.previous_dir):
            if MANIFEST_NAME not in files:
                continue
            dirs.clear()
            try:
                ref = ModelRef.from_parts(Path(dirpath).relative_to(self.previous_dir).parts)
                manifest = Manifest.load(dirpath)
            except PackageError as exc:
                log.warning("previous version %s unreadable: %s", dirpath, exc)
                continue
            with self._contents_lock:
                self._previous[ref] = contents(manifest)
                self.generation += 1

    def held_in(self, owns: Callable[[str], bool]) -> set[str]:
        """The sha256 of every file of the visible and previous versions whose namespace
        ``owns`` accepts."""
        with self._contents_lock:
            sets = [
                shas
                for table in (self._visible, self._previous)
                for ref, shas in table.items()
                if owns(ref.namespace)
            ]
        out: set[str] = set()
        out.update(*sets)
        return out

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
        """Swap the previous generation back in (rolling back twice rolls forward).
        NotFound without a previous version (a directory with a manifest); ModelOverlap,
        nothing changed, when ``ref``'s directory nests with another model's."""
        prev = self.previous_dir / ref.relpath
        final = self.path_for(ref)
        with self._tree_lock:
            if not (prev / MANIFEST_NAME).is_file():
                raise NotFound(f"{ref.id}: no previous version kept on this instance")
            self.refuse_overlap(ref)
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.exists():
                os.rename(prev, final)
            elif not exchange(prev, final):
                aside = self.trash_dir / uuid.uuid4().hex
                os.rename(final, aside)
                os.rename(prev, final)
                os.rename(aside, prev)
            self._note_rolled_back(ref)
        if self.durable:
            fsync_dir(final.parent)
        return final

    def delete(self, ref: ModelRef) -> tuple[bool, str | None]:
        """Remove the visible version and its previous generation: (whether a visible one
        was there, the id of another model whose directory nests with it). A directory that
        nests with another model's is left alone (removing it would remove that model, or
        part of it): only the registration goes."""
        found = False
        doomed: list[Path] = []
        with self._tree_lock:
            other = self.overlap(ref)
            # previous/ first: a crash in between must not look like an interrupted swap
            prev = self.previous_dir / ref.relpath
            if prev.is_dir() and self.overlap(ref, self.previous_dir) is None:
                doomed.append(self._to_trash(prev) or prev)
            final = self.path_for(ref)
            if final.is_dir() and other is None:
                doomed.append(self._to_trash(final) or final)
                found = True
            self._prune_empty(final.parent)
            self._note_deleted(ref)
        for path in doomed:
            remove_tree(path)
        return found, other

    def _prune_empty(self, d: Path) -> None:
        while d != self.models_dir and d.is_dir():
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    # ---- finding ----------------------------------------------------------------------
    def scan(self, incomplete: list[FoundModel] | None = None) -> list[FoundModel]:
        """Every complete model under the models dir (manifest.yaml + every listed file);
        the others that have a readable manifest are appended to ``incomplete``."""
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
                if incomplete is not None:
                    incomplete.append(FoundModel(ref, path, manifest))
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
