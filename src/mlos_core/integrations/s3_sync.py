"""Instances that read models from S3: pull committed versions into the local models dir.

``mlos-core serve --models-url s3://bucket/prefix`` hands the core an :class:`S3Sync` (a
:class:`~mlos_core.core.ModelSource`). At start-up and on every scan (``POST /models/scan``,
which ``axon publish`` to S3 storage sends each of the target's ``notify_instances``) it lists
the committed versions in the bucket (those whose ``manifest.yaml`` exists: the bucket layout
is :mod:`modelpkg.s3`'s), and for each one the instance does not hold with the same manifest:

1. downloads each blob it lacks into its blob store (streamed, sha256 verified, then moved
   in with one rename; content it already has for any model is not fetched again);
2. builds the version directory from hard links in staging, fsynced;
3. swaps it in atomically and registers it (the same path as an upload commit), holding the
   model's lock as a commit does.

A bucket's manifest is input like an upload's: over the server's ``--max-files`` or
``--max-duplicates``, or an id whose directory would nest with another model's, that model is
refused (logged, reported as failed) and the others go on.

A failure (store unreachable, a corrupt object) is logged and leaves the instance serving
what it already has; the next scan tries again. Credentials come from the standard AWS chain.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Unpack

from mlos_core.core import Core
from modelpkg.atomic import remove_tree
from modelpkg.errors import PackageError
from modelpkg.layout import REMOTE_TMP_DIR
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef
from modelpkg.s3 import S3Access, S3Store

# log records keep the name they have always had: operators' log filters match it
log = logging.getLogger("mlos_core.remote_sync")


@dataclass
class SyncReport:
    """What one sync did: model ids fetched, already current, and failures with reasons."""

    fetched: list[str] = field(default_factory=list)
    current: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    bytes_fetched: int = 0


class S3Sync:
    """Pulls the models committed at an S3 ``url`` (``s3://bucket/prefix``) into a core.

    The bucket client is made at the first pull: a URL it cannot use fails the start-up
    (the first scan), not the construction.
    """

    def __init__(self, url: str, **access: Unpack[S3Access]) -> None:
        self.url = url
        self.access = access
        self._store: S3Store | None = None
        self._lock = threading.Lock()  # one sync at a time

    @property
    def store(self) -> S3Store:
        if self._store is None:
            self._store = S3Store.from_url(self.url, **self.access)
        return self._store

    def pull(self, core: Core) -> SyncReport:
        """Fetch every committed version ``core`` does not hold; never raises for one model."""
        with self._lock:
            return _Pull(core, self.store).run()


class _Pull:
    """One sync into one core."""

    def __init__(self, core: Core, store: S3Store) -> None:
        self.core = core
        self.store = store
        self.tmp_dir = core.state_dir / REMOTE_TMP_DIR  # same filesystem as the blob store
        self.report = SyncReport()

    def run(self) -> SyncReport:
        report = self.report
        remove_tree(self.tmp_dir)  # leftovers of an interrupted sync
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            refs = self.store.list_models()
        except PackageError as exc:
            log.warning("sync from %s failed: %s", self.store.describe(), exc)
            report.failed["*"] = str(exc)
            return report
        for ref in refs:
            try:
                if self._sync_one(ref):
                    report.fetched.append(ref.id)
                else:
                    report.current += 1
            except Exception as exc:  # one bad model must not stop the others
                log.warning("sync of %s from %s failed: %s", ref, self.store.describe(), exc)
                report.failed[ref.id] = str(exc)
        if report.fetched:
            log.info("fetched %s from %s", ", ".join(report.fetched), self.store.describe())
        return report

    def _sync_one(self, ref: ModelRef) -> bool:
        manifest = self.store.read_manifest(ref)
        if manifest is None:  # deleted since the listing
            return False
        manifest.validate(strict=True)
        manifest = manifest.with_identity(ref.namespace, ref.name, ref.version)
        if self.core.is_unchanged(ref, manifest):
            return False
        self.core.check_files(manifest.files)
        self.core.check_overlap(ref)  # before fetching anything (checked again when published)
        self.core.require_signature_file(ref, manifest, "s3")  # checked in full when published
        shas = [entry.sha256 for entry in manifest.files]
        self.core.pin(shas)  # fetched or present blobs stay until the version links them
        try:
            self._fetch_blobs(manifest)
            with self.core.model_lock_blocking(ref):
                staged = self.core.versions.stage(manifest)
                try:
                    self.core.publish_staged(staged, ref, manifest, "s3")
                except BaseException:
                    remove_tree(staged)
                    raise
        finally:
            self.core.unpin(shas)
        return True

    def _fetch_blobs(self, manifest: Manifest) -> None:
        seen: set[str] = set()
        for entry in manifest.files:
            if entry.sha256 in seen or self.core.blobs.has(entry.sha256, entry.size):
                continue
            seen.add(entry.sha256)
            tmp = self.tmp_dir / f"{entry.sha256}.{uuid.uuid4().hex[:8]}"
            try:
                self.store.download_blob(entry, tmp)  # streamed + sha256 checked
                self.core.blobs.adopt(tmp, entry.sha256)
            finally:
                tmp.unlink(missing_ok=True)
            self.report.bytes_fetched += entry.size
