"""Instances that read models from S3: pull committed versions into the local models dir.

``mlos-core serve --models-url s3://bucket/prefix [--s3-endpoint-url URL] [--s3-region R]
[--s3-profile P]``: at start-up and on every scan (``POST /models/scan``, which
``axon publish`` to S3 storage sends each of the target's ``notify_instances``) the instance
lists the committed versions in the bucket (those whose ``manifest.yaml`` exists, see
:mod:`axon.transports.s3`), and for each one it does not hold with the same manifest:

1. downloads each blob it lacks into its blob store (streamed, sha256 verified, then moved
   in with one rename; content it already has for any model is not fetched again);
2. builds the version directory from hard links in staging, fsynced;
3. swaps it in atomically and registers it (the same path as an upload commit).

A failure (store unreachable, a corrupt object) is logged and leaves the instance serving
what it already has; the next scan tries again. Credentials come from the standard AWS chain.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from modelpkg.atomic import remove_tree
from modelpkg.errors import PackageError
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef
from modelpkg.s3 import S3Store

if TYPE_CHECKING:
    from mlos_core.core import Core

log = logging.getLogger("mlos_core.remote_sync")
F = TypeVar("F", bound=Callable[..., Any])
_OPTION_KEYS = ("models_url", "s3_endpoint_url", "s3_region", "s3_profile")


@dataclass
class SyncReport:
    """What one sync did: model ids fetched, already current, and failures with reasons."""

    fetched: list[str] = field(default_factory=list)
    current: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    bytes_fetched: int = 0


class RemoteSync:
    """Pulls committed models from an S3 ``models_url`` into one :class:`Core`."""

    def __init__(
        self,
        core: Core,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
    ) -> None:
        self.core = core
        self.store = S3Store.from_url(
            url, endpoint_url=endpoint_url, region=region, profile=profile
        )
        self.tmp_dir = core.state_dir / "remote-tmp"  # same filesystem as the blob store
        self._lock = threading.Lock()  # one sync at a time per instance

    def sync(self) -> SyncReport:
        """Fetch every committed version not held locally; never raises for one model."""
        report = SyncReport()
        with self._lock:
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
                    if self._sync_one(ref, report):
                        report.fetched.append(ref.id)
                    else:
                        report.current += 1
                except Exception as exc:  # one bad model must not stop the others
                    log.warning("sync of %s from %s failed: %s", ref, self.store.describe(), exc)
                    report.failed[ref.id] = str(exc)
        if report.fetched:
            log.info("fetched %s from %s", ", ".join(report.fetched), self.store.describe())
        return report

    def _sync_one(self, ref: ModelRef, report: SyncReport) -> bool:
        manifest = self.store.read_manifest(ref)
        if manifest is None:  # deleted since the listing
            return False
        manifest.validate(strict=True)
        manifest = manifest.with_identity(ref.namespace, ref.name, ref.version)
        if self.core.is_unchanged(ref, manifest):
            return False
        shas = [entry.sha256 for entry in manifest.files]
        self.core.pin(shas)  # fetched or present blobs stay until the version links them
        try:
            self._fetch_blobs(manifest, report)
            staged = self.core.versions.new_staging()
            try:
                self.core.versions.build(staged, manifest)
                self.core.publish_staged(staged, ref, manifest)
            except BaseException:
                remove_tree(staged)
                raise
        finally:
            self.core.unpin(shas)
        return True

    def _fetch_blobs(self, manifest: Manifest, report: SyncReport) -> None:
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
            report.bytes_fetched += entry.size


_syncers: weakref.WeakKeyDictionary[Core, RemoteSync] = weakref.WeakKeyDictionary()
_syncers_lock = threading.Lock()


def sync_models(core: Core) -> SyncReport | None:
    """Pull new models for ``core`` when it was started with ``--models-url``; else None."""
    settings = core.settings
    url = getattr(settings, "models_url", None)
    if not url:
        return None
    with _syncers_lock:
        syncer = _syncers.get(core)
        if syncer is None:
            syncer = RemoteSync(
                core,
                url,
                endpoint_url=getattr(settings, "s3_endpoint_url", None),
                region=getattr(settings, "s3_region", None),
                profile=getattr(settings, "s3_profile", None),
            )
            _syncers[core] = syncer
    return syncer.sync()


def remote_options(fn: F) -> F:
    """The ``mlos-core serve`` options of an instance that reads an S3 models URL."""
    options = [
        click.option(
            "--models-url",
            help="Also serve the models committed at s3://bucket/prefix (fetched into "
            "--models-dir at start-up and on every POST /models/scan).",
        ),
        click.option("--s3-endpoint-url", help="S3-compatible endpoint (default: AWS)."),
        click.option("--s3-region", help="S3 region (default: the AWS config's)."),
        click.option("--s3-profile", help="AWS profile for the credentials."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def pop_remote_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Take the :func:`remote_options` values out of ``opts`` (as Settings keyword args)."""
    url = opts.get("models_url")
    if url is not None and not str(url).startswith("s3://"):
        raise click.BadParameter("use s3://bucket/prefix", param_hint="--models-url")
    return {key: opts.pop(key, None) for key in _OPTION_KEYS}
