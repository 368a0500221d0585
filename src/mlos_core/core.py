"""The server's state and operations, independent of HTTP: storage, registry, uploads, locks.

Blocking file work runs in worker threads; the event loop only coordinates. A per-model
lock serialises commits of one model (two concurrent uploads end with one complete version);
different models never wait for each other. Two ids whose directories would nest
(``n/b@v1`` at ``n/b/v1/`` holds ``n/b/v1@x``) are never both published: the second is refused
(:class:`~mlos_core.errors.ModelOverlap`) at open and, race-free, right before its rename.

With a tokens file, deduplication is per tenant: a tenant links content the store holds
without sending it only if the content is in one of its own models or it sent the bytes for
an upload still open (:meth:`Core.holds`; :mod:`mlos_core.storage.tenancy`). Without one it is
global: every upload may link anything the store holds.

Models arrive by upload, by a copy into the models dir (found by a scan), or from a
:class:`ModelSource` the core is handed (the command line hands it the S3 sync when
``--models-url`` is set): the core does not know what is behind a source.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Any, NoReturn, Protocol

from mlos_core.errors import (
    BadRequest,
    ChecksumMismatch,
    CorruptState,
    MissingBlob,
    NoSpace,
    NotFound,
    TooLarge,
)
from mlos_core.metrics import Metrics
from mlos_core.registration import find_model_dir
from mlos_core.settings import Settings
from mlos_core.signatures import SignatureRefused, TrustPolicy, refusal
from mlos_core.storage.blobs import BlobStore, BlobWriter
from mlos_core.storage.damage import Damage, DamageCheck
from mlos_core.storage.locks import KeyedLocks
from mlos_core.storage.ondisk import OnDisk
from mlos_core.storage.placed import adopt_placed, written_by_a_publish
from mlos_core.storage.registry import ModelEntry, Registry, entry_from_manifest, inference_endpoint
from mlos_core.storage.tenancy import SentIndex, tenant_key
from mlos_core.storage.uploads import Upload, UploadStore, expires_at, new_upload_id
from mlos_core.storage.versions import FoundModel, VersionStore
from mlos_core.tenants import Tenants
from modelpkg.atomic import clean_leftovers, remove_tree
from modelpkg.errors import ManifestError, PackageError
from modelpkg.layout import REGISTRY_FILE
from modelpkg.manifest import API_VERSION, MANIFEST_NAME, FileEntry, Manifest
from modelpkg.refs import ModelRef
from modelpkg.signing import (
    MAX_SIGNATURE_BYTES,
    MISMATCH,
    REQUIRED,
    SIGNATURE_NAME,
    SignatureError,
    check_signature_bytes,
    signature_entry,
    unsigned_names,
)
from modelpkg.signing import verify as verify_bundle

log = logging.getLogger("mlos_core")

# Staging dirs in the models tree idle longer than this are leftovers; younger ones may be a
# writer at work on a shared models dir (axon drops its own stale ones after a day too).
SHARED_LEFTOVER_AGE = 24 * 3600.0
# how long the S3 sync waits for a model an upload is committing before it skips it (the next
# scan tries again): a worker thread waiting on a coroutine must not wait forever
SOURCE_LOCK_TIMEOUT = 60.0
VISIBLE_CACHED = 16  # visible manifests kept for the unchanged check (most recently used)


def parse_ref(model_id: Any, *, default_namespace: str) -> ModelRef:
    """A model id from a request (path or body): a bare name (``federated-model@v1.0``) is
    in ``default_namespace``, as for axon. Routes call :meth:`Core.parse_ref`, which passes
    the server's ``--default-namespace``; there is deliberately no default here."""
    if not isinstance(model_id, str) or not model_id:
        raise BadRequest("model_id is required: 'namespace/name@version'", code="invalid_id")
    try:
        return ModelRef.parse(model_id, default_namespace=default_namespace)
    except PackageError as exc:
        raise BadRequest(str(exc), code="invalid_id") from exc


def parse_manifest(raw: Any, ref: ModelRef, *, strict: bool) -> Manifest:
    """A manifest from text or a mapping, validated, with its identity set to ``ref``."""
    try:
        if isinstance(raw, str | bytes):
            manifest = Manifest.from_text(raw, source="manifest")
        elif isinstance(raw, dict):
            manifest = Manifest(raw, source="manifest")
        else:
            raise BadRequest("manifest is required (manifest.yaml text or a JSON object)")
        # the model id is authoritative for the identity (metadata may be missing); set in
        # place: the Manifest holds its own copy (a copy more costs seconds at 100,000 files)
        meta = manifest.data.get("metadata")
        if not isinstance(meta, dict):
            meta = manifest.data["metadata"] = {}
        meta.update(namespace=ref.namespace, name=ref.name, version=ref.version)
        manifest.data.setdefault("apiVersion", API_VERSION)
        manifest.data.setdefault("kind", "Model")
        manifest.validate(strict=strict)
    except ManifestError as exc:
        raise BadRequest(f"invalid manifest: {exc}", code="invalid_manifest") from exc
    return manifest


class ModelSource(Protocol):
    """Somewhere models come from besides uploads, such as an S3 bucket.

    The core calls :meth:`pull` at start-up and on every scan, before it registers what the
    models dir holds: the source brings what is new into the core (blobs, then a version
    made visible with :meth:`Core.publish_staged`). It blocks (the core calls it in a worker
    thread), and it logs and reports its failures rather than raise them for one model.
    """

    def pull(self, core: Core) -> object: ...


class Core:
    """One instance's models: the stores, the registry, tenants, counters, locks, and the
    operations of the API on them."""

    def __init__(self, settings: Settings, sources: Sequence[ModelSource] = ()) -> None:
        if settings.models_url and not sources:
            # the core does not build its sources (that is the CLI's wiring): a models URL
            # with none would silently never be pulled
            raise ValueError(
                f"models_url {settings.models_url!r} is set but no model source was given: "
                "pass sources=mlos_core.cli.model_sources(settings)"
            )
        self.settings = settings
        self.sources = tuple(sources)
        self.models_dir = settings.models_dir
        self.state_dir = settings.state_dir
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.tenants = Tenants(settings.tokens_file)
        # who may sign which namespace (--trusted-keys, trusted_keys: in the tokens file)
        self.trust = TrustPolicy(settings.trusted_keys, settings.tokens_file)
        self.blobs = BlobStore(self.state_dir, durable=settings.durable)
        self.versions = VersionStore(
            self.models_dir,
            self.blobs,
            durable=settings.durable,
            track_contents=self.tenants.enabled,  # per-tenant dedup asks what models hold
        )
        self.registry = Registry(self.state_dir / REGISTRY_FILE, durable=settings.durable)
        self.uploads = UploadStore(self.state_dir, ttl=settings.upload_ttl)
        self.sent = SentIndex(self.state_dir)
        # per tenant: (versions.generation, what its models hold), rebuilt when that changes
        self._held_cache: dict[str, tuple[int, set[str]]] = {}
        # the visible manifests last read, by model id, with the identity of the file each
        # was read from (a publish makes a new file): an unchanged re-publish compares its
        # manifest at open and at commit, and a 3,000-file manifest.yaml took ~0.2 s to read
        self._visible_cache: collections.OrderedDict[str, _Visible] = collections.OrderedDict()
        self._visible_lock = threading.Lock()
        self.metrics = Metrics()
        self.damage = DamageCheck(self.blobs, self.state_dir)
        # the files of signed directories another tool placed, hashed once (storage/ondisk.py)
        self.ondisk = OnDisk(self.blobs, self.state_dir, self.metrics)
        self._model_locks = KeyedLocks()
        self.blob_locks = KeyedLocks()
        self.gc_lock = asyncio.Lock()
        # blobs a request has brought into the store but not yet linked into a version
        # (one-shot uploads, S3 syncs): garbage collection must not take them meanwhile
        self._pins: collections.Counter[str] = collections.Counter()
        self._pins_lock = threading.Lock()

    # ---- life cycle -----------------------------------------------------------------
    def startup(self) -> None:
        """Clean crash leftovers, expire old uploads, load the registry, scan the models."""
        restored = self.versions.recover()
        for path in restored:
            log.warning("restored %s (a crash interrupted its replacement)", path)
        removed = self.versions.clean_leftovers() + self.blobs.clean_leftovers()
        # Outside our own state dir, staging dirs may belong to a writer still at work on a
        # shared models dir (axon publishing to it): only remove those idle for a day.
        removed += clean_leftovers(self.models_dir, min_age=SHARED_LEFTOVER_AGE)
        for upload in self.uploads.all():
            if upload.staged:  # staging was just wiped: the upload must prepare again
                upload.staged = None
                self.uploads.save(upload)
        if removed:
            log.info("removed %d leftover(s) of interrupted writes", len(removed))
        self.expire_uploads()
        self.registry.load()
        self.versions.note_previous()
        self.scan()

    def scan(self) -> tuple[int, int]:
        """Pull from the sources, then register every complete model under the models dir;
        return (found, new)."""
        for source in self.sources:  # first bring in what is new elsewhere
            source.pull(self)
        incomplete: list[FoundModel] = []
        found = self.versions.scan(incomplete)
        self.versions.note_found(found)
        damage = self._damage_everywhere(found, incomplete)
        entries = []
        for f in found:
            entry = entry_from_manifest(f.ref, f.path, f.manifest, "scan")
            _mark_damaged(entry, damage)
            try:
                entry.signer = self.verify_signature(f.ref, f.manifest, "scan", model_dir=f.path)
            except SignatureRefused:  # counted and logged; what it replaced is not served
                old = self.registry.get(f.ref.id)
                if old is not None and Path(old.path) == Path(f.path):
                    self.registry.remove(f.ref.id)
                continue
            entries.append(entry)
        for f in incomplete:  # a signed model registered there lost files: refused
            old = self.registry.get(f.ref.id)
            if old is None or Path(old.path) != Path(f.path):
                continue  # a copy in progress is not refused on every scan
            if self.trust.required(f.ref.namespace):
                with contextlib.suppress(SignatureRefused):  # counted and logged
                    self.verify_signature(f.ref, f.manifest, "scan", model_dir=f.path)
                self.registry.remove(f.ref.id)
        new = self.registry.put_many(entries)
        if self.trust.enabled:  # forget the hashes of files of models no longer registered
            self.ondisk.retain(e.path for e in self.registry.all())
        return len(found), new

    def check_damage(self, found: list[FoundModel]) -> Damage:
        """Blobs another tool rewrote in place through these versions' hard links: taken
        out of the store, and the versions holding them named (mlos_core.storage.damage)."""
        damage = self.damage.check(found)
        if damage.quarantined:
            self.metrics.rewritten(len(damage.quarantined))
        return damage

    def _damage_everywhere(
        self, found: list[FoundModel] | None = None, incomplete: list[FoundModel] | None = None
    ) -> Damage:
        """:meth:`check_damage` of every visible version, the versions a scan skips as
        incomplete too (a rewrite may change sizes), their registrations updated."""
        if found is None:
            incomplete = []
            found = self.versions.scan(incomplete)
        versions = [*found, *(incomplete or [])]
        damage = self.check_damage(versions)
        for model in versions:
            entry = self.registry.get(model.ref.id)
            wrong = entry is not None and entry.damaged != damage.models.get(entry.id, [])
            if entry is not None and wrong and Path(entry.path) == model.path:
                self.registry.put(_mark_damaged(entry, damage))
        return damage

    def expire_uploads(self) -> int:
        expired = self.uploads.expired()
        for upload in expired:
            log.info("upload %s of %s expired", upload.upload_id, upload.model_id)
            self._forget_upload(upload)
        # what the uploads still open (and pins) need, read once for all the expired ones
        protected, by_tenant = self._listed()
        self.sent.retain(by_tenant)
        for upload in expired:
            self._drop_partials(upload, protected)
        self.blobs.gc_partials(protected, min_age=self.settings.upload_ttl)
        self.gc_blobs(protected, min_age=self.settings.upload_ttl)
        return len(expired)

    def protected_blobs(self) -> set[str]:
        return self._listed()[0]

    def _collect(self) -> None:
        """After a delete: unlinked blobs go, and what tenants sent is trimmed to what their
        open uploads list (a deleted model no longer vouches for content it sent)."""
        protected, by_tenant = self._listed()
        self.sent.retain(by_tenant)
        self.gc_blobs(protected)

    def _listed(self) -> tuple[set[str], dict[str, set[str]]]:
        """What the open uploads (and pins) need, and per tenant key what its uploads list."""
        out: set[str] = set()
        by_tenant: dict[str, set[str]] = {}
        for u in self.uploads.all():
            shas = u.blobs()
            out.update(shas)
            by_tenant.setdefault(tenant_key(u.tenant), set()).update(shas)
        with self._pins_lock:
            out.update(sha for sha, n in self._pins.items() if n > 0)
        return out, by_tenant

    def gc_blobs(self, protected: set[str], *, min_age: float = 0.0) -> int:
        """Garbage-collect unlinked blobs; one pinned while the scan runs is kept."""
        return self.blobs.gc(
            protected,
            min_age=min_age,
            pinned=lambda sha: self._pins.get(sha, 0) > 0,  # called under _pins_lock
            pin_lock=self._pins_lock,
        )

    def pin(self, shas: Iterable[str]) -> None:
        """Keep ``shas`` from garbage collection until :meth:`unpin` (counted: nestable)."""
        with self._pins_lock:
            self._pins.update(shas)

    def unpin(self, shas: Iterable[str]) -> None:
        with self._pins_lock:
            self._pins.subtract(shas)
            for sha in [k for k, n in self._pins.items() if n <= 0]:
                del self._pins[sha]

    def drop_upload(self, upload: Upload) -> None:
        self._forget_upload(upload)
        protected, by_tenant = self._listed()
        self.sent.retain(by_tenant)  # what it sent for this upload must be sent again
        self._drop_partials(upload, protected)

    def _forget_upload(self, upload: Upload) -> None:
        if upload.staged:
            remove_tree(Path(upload.staged))
        self.uploads.delete(upload.upload_id)

    def _drop_partials(self, upload: Upload, protected: set[str]) -> None:
        """Drop the partly received blobs of a finished/dropped ``upload`` no one else needs."""
        scope = self.scope(upload.tenant)
        for sha in upload.blobs():
            if sha not in protected:
                self.blobs.drop_partial(sha, scope)

    def model_lock(self, ref: ModelRef) -> AbstractAsyncContextManager[None]:
        """Held while a model's visible directory or registration changes."""
        return self._model_locks.hold(ref.id)

    def model_lock_blocking(self, ref: ModelRef) -> AbstractContextManager[None]:
        """:meth:`model_lock` for a worker thread (a model source); TimeoutError after
        :data:`SOURCE_LOCK_TIMEOUT` seconds."""
        return self._model_locks.hold_blocking(ref.id, timeout=SOURCE_LOCK_TIMEOUT)

    def check_overlap(self, ref: ModelRef) -> None:
        """ModelOverlap when ``ref``'s directory nests with another model's (an early answer:
        publishing checks again, race-free, right before its rename)."""
        self.versions.refuse_overlap(ref)

    # ---- per-tenant deduplication -----------------------------------------------------
    def scope(self, tenant: str) -> str | None:
        """Where ``tenant``'s partial blobs and records live; None without tenants (shared)."""
        return tenant_key(tenant) if self.tenants.enabled else None

    def holds(self, tenant: str, sha256: str, size: int | None = None) -> bool:
        """True when ``tenant`` may link content ``sha256`` without sending it: the store has
        it and, with tenants, it is in one of the tenant's models or the tenant sent it."""
        if not self.blobs.has(sha256, size):
            return False
        if not self.tenants.enabled:
            return True
        return self.sent.has(tenant_key(tenant), sha256) or sha256 in self._held_by(tenant)

    def _held_by(self, tenant: str) -> set[str]:
        generation = self.versions.generation
        cached = self._held_cache.get(tenant)
        if cached is not None and cached[0] == generation:
            return cached[1]
        owner = self.tenants.by_name.get(tenant)
        held = self.versions.held_in(owner.owns) if owner is not None else set()
        self._held_cache[tenant] = (generation, held)
        return held

    def blob_offset(self, upload: Upload, sha256: str, size: int) -> int:
        """Bytes of ``sha256`` the upload's tenant need not send again (``size``: none).
        Cheap (no hashing): a full-length partial answers ``size``, and a PUT at that offset
        finishes it."""
        if self.holds(upload.tenant, sha256, size):
            return size
        return self.blobs.partial_offset(sha256, size, self.scope(upload.tenant))

    def _finish_partial(self, upload: Upload, sha256: str, size: int) -> bool:
        """True when the upload's tenant had sent all of ``sha256`` without it being checked
        (the server died between the last byte and the check): finished here, verified and
        moved into the store. A full-length partial that does not match is dropped (sent
        again from 0); one a request is receiving right now is left to that request."""
        scope = self.scope(upload.tenant)
        partial = self.blobs.partial_path(sha256, scope)
        if self.blobs.partial_offset(sha256, size, scope) < size or not partial.exists():
            return False
        key = sha256 if scope is None else f"{scope}/{sha256}"
        try:
            with self.blob_locks.hold_blocking(key, timeout=0):
                writer = self.blob_writer(upload, sha256, size, size)
                writer.open()
                writer.finish()
        except TimeoutError:
            return False  # being received
        except ChecksumMismatch:
            log.warning("dropped partial blob %s: full length, wrong sha256", sha256[:12])
            return False
        return True

    def blob_writer(self, upload: Upload, sha256: str, size: int, offset: int) -> BlobWriter:
        """Receives ``sha256`` for ``upload`` from ``offset`` (hold :meth:`blob_lock`)."""
        scope = self.scope(upload.tenant)
        if scope is None:
            return BlobWriter(self.blobs, sha256, size, offset)

        def stored() -> None:
            self.sent.add(scope, sha256)

        return BlobWriter(self.blobs, sha256, size, offset, scope=scope, on_stored=stored)

    def blob_lock(self, upload: Upload, sha256: str) -> AbstractAsyncContextManager[None]:
        """Held while ``sha256`` is received for ``upload``: per tenant with tenants (one
        tenant's slow upload never holds up another's)."""
        scope = self.scope(upload.tenant)
        return self.blob_locks.hold(sha256 if scope is None else f"{scope}/{sha256}")

    def _check_held(self, upload: Upload) -> None:
        """MissingBlob unless the upload's tenant holds all of its content."""
        if not self.tenants.enabled:
            return  # building the version finds what the store lacks
        paths = upload.paths_by_blob()
        for sha, size in upload.blobs().items():
            if not self.holds(upload.tenant, sha, size):
                raise MissingBlob(
                    f"{paths[sha][0]}: content {sha[:12]} has not been uploaded; "
                    "send it, then commit again",
                )

    # ---- limits -----------------------------------------------------------------------
    def check_files(self, files: list[FileEntry]) -> None:
        """TooLarge when a manifest lists more files than ``--max-files``, or more files with
        one content than ``--max-duplicates``."""
        limit = self.settings.max_files
        if len(files) > limit:
            raise TooLarge(
                f"the manifest lists {len(files)} files, over this server's --max-files of "
                f"{limit}; nothing was stored (ask the operator to raise --max-files)",
                code="too_many_files",
            )
        counts = collections.Counter(f.sha256 for f in files if f.known)
        if counts:
            sha, n = counts.most_common(1)[0]
            if n > self.settings.max_duplicates:
                raise TooLarge(
                    f"{n} files of the manifest have the same content (sha256 {sha[:12]}), "
                    f"over this server's --max-duplicates of {self.settings.max_duplicates}; "
                    "nothing was stored (ask the operator to raise --max-duplicates)",
                    code="too_many_duplicates",
                )

    # ---- uploads --------------------------------------------------------------------
    def check_size(self, total: int) -> None:
        limit = self.settings.max_upload_size
        if limit is not None and total > limit:
            raise TooLarge(
                f"model is {total} bytes, over this server's --max-upload-size of {limit} bytes"
            )

    def _check_free_space(self, blobs: dict[str, int]) -> None:
        """NoSpace at open when the content still needed cannot fit on the models filesystem: a
        clear answer up front instead of a disk filled to the brim by a doomed upload."""
        needed = sum(size for sha, size in blobs.items() if not self.blobs.has(sha, size))
        free = shutil.disk_usage(self.models_dir).free
        if needed > free:
            raise NoSpace(
                f"the upload needs {needed} bytes, the models filesystem has {free} free; "
                "nothing was stored (free space on the server, or publish elsewhere)",
            )

    def open_upload(self, ref: ModelRef, manifest: Manifest, tenant: str) -> Upload:
        files = manifest.files
        self.check_files(files)
        self.check_overlap(ref)
        self.require_signature_file(ref, manifest, "upload")  # before any byte is sent
        self.check_size(sum(f.size for f in files))
        self._check_free_space({f.sha256: f.size for f in files})
        upload = Upload(new_upload_id(), ref.id, tenant, manifest.data)
        self.uploads.save(upload)
        return upload

    def describe(self, upload: Upload) -> dict[str, Any]:
        """The answer to open / GET: what is still needed, what the server has."""
        answer = self._describe(upload)
        if self.blobs.unsealed and self._settle_unsealed():
            answer = self._describe(upload)  # a blob it counted on left the store
        return answer

    def _settle_unsealed(self) -> bool:
        """Check the blobs the store found without its seal (mlos_core.storage.damage):
        True when one was rewritten in place, taken out, and the models holding it marked."""
        shas, self.blobs.unsealed = self.blobs.unsealed, set()
        taken = self.damage.settle(shas)
        if taken:
            self.metrics.rewritten(taken)
            self._damage_everywhere()
        return bool(taken)

    def _describe(self, upload: Upload) -> dict[str, Any]:
        needed, have = [], []
        paths = upload.paths_by_blob()
        for sha, size in upload.blobs().items():
            if (
                self.holds(upload.tenant, sha, size)
                or self._finish_partial(upload, sha, size)
                or self._adopt_placed(upload, sha, size, paths[sha])
            ):
                have += paths[sha]
            else:
                offset = self.blobs.partial_offset(sha, size, self.scope(upload.tenant))
                needed.append({"sha256": sha, "size": size, "offset": offset, "paths": paths[sha]})
        last = self.uploads.last_activity(upload.upload_id)
        return {
            "status": "success",
            "upload_id": upload.upload_id,
            "model_id": upload.model_id,
            "unchanged": self.is_unchanged(upload.ref, upload.manifest_obj()),
            "needed": needed,
            "have": sorted(have),
            "state": "prepared" if upload.staged else "open",
            "expires_at": expires_at(last, self.settings.upload_ttl),
            "manifest_sha256": upload.manifest_obj().digest(),  # what a commit will show
        }

    def _adopt_placed(self, upload: Upload, sha256: str, size: int, paths: list[str]) -> bool:
        """True when the visible version of the upload's model holds ``sha256`` at one of its
        ``paths``, put there by another tool (the upstream axon's publish copies files into
        the models dir): hashed, taken into the store, and counted as sent by the tenant."""
        if not adopt_placed(self.blobs, self.versions.path_for(upload.ref), sha256, size, paths):
            return False
        scope = self.scope(upload.tenant)
        if scope is not None:
            self.sent.add(scope, sha256)
        return True

    def is_unchanged(self, ref: ModelRef, manifest: Manifest) -> bool:
        visible = self._visible(ref)
        entry = self.registry.get(ref.id)
        return (
            visible is not None
            and visible.manifest.data == manifest.data
            and visible.ours(self.versions.path_for(ref))
            and not (entry is not None and entry.damaged)
        )

    def visible_digest(self, ref: ModelRef) -> str | None:
        """The manifest digest of ``ref``'s visible version (None: none, or not readable)."""
        visible = self._visible(ref)
        return visible.digest() if visible is not None else None

    def _visible(self, ref: ModelRef) -> _Visible | None:
        """The visible version's manifest (None: none, or not readable), read once while its
        file stays the same."""
        path = self.versions.path_for(ref) / MANIFEST_NAME
        try:
            st = os.stat(path)
        except OSError:
            return None
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._visible_lock:
            cached = self._visible_cache.get(ref.id)
        if cached is not None and cached.identity == identity:
            return cached
        try:
            current = _Visible(identity, Manifest.load(path))
        except ManifestError:
            return None
        with self._visible_lock:
            self._visible_cache[ref.id] = current
            self._visible_cache.move_to_end(ref.id)
            while len(self._visible_cache) > VISIBLE_CACHED:
                self._visible_cache.popitem(last=False)
        return current

    def unchanged_answer(self, ref: ModelRef, manifest_sha256: str) -> dict[str, Any] | None:
        """The answer to an open that names ``manifest_sha256`` as the digest of its manifest,
        when that is the digest of the visible version and the model is registered as a
        commit of it would register it: nothing to send, nothing to commit, and no upload is
        opened. None otherwise: the open goes on as any other, its manifest checked in full.
        The digest only ever stands for what the server already holds, never for the
        manifest sent (docs/upload-protocol.md)."""
        visible = self._visible(ref)
        entry = self.registry.get(ref.id)
        if visible is None or entry is None or visible.digest() != manifest_sha256:
            return None
        if not visible.ours(self.versions.path_for(ref)) or entry.damaged:
            return None  # placed by another tool: an upload hashes its files (placed.py)
        if entry.signer is None and self.trust.required(ref.namespace):
            return None  # registered before signatures were required: a commit checks it
        if not visible.registers_as(entry, ref, self.versions.path_for(ref)):
            return None  # a commit would register it anew: let one do it
        self.metrics.upload("resumable", True)
        return {
            **register_answer(entry, "unchanged: this is the visible version"),
            "upload_id": None,
            "unchanged": True,
            "manifest_sha256": manifest_sha256,
        }

    def prepare(self, upload: Upload) -> Path:
        """Build the complete, verified model dir in staging (blocking: run in a thread)."""
        self.check_overlap(upload.ref)  # before a cluster's --atomic switch starts
        if upload.staged and Path(upload.staged).is_dir():
            return Path(upload.staged)
        self._check_held(upload)
        self.verify_signature(upload.ref, upload.manifest_obj(), "upload")  # before staging
        staged = self.versions.stage(upload.manifest_obj())
        upload.staged = str(staged)
        self.uploads.save(upload)
        return staged

    def publish_staged(
        self, staged: Path, ref: ModelRef, manifest: Manifest, source: str = "upload"
    ) -> ModelEntry:
        """Make a prepared dir visible and register it (blocking; hold the model lock).
        A model whose signature this instance refuses (:meth:`verify_signature`) is not:
        SignatureRefused, the staged dir left to the caller."""
        signer = self.verify_signature(ref, manifest, source)
        final = self.versions.publish(staged, ref, manifest)
        entry = entry_from_manifest(ref, final, manifest, "upload")
        entry.signer = signer
        self.registry.put(entry)
        return entry

    async def commit(self, upload: Upload) -> dict[str, Any]:
        ref, manifest = upload.ref, upload.manifest_obj()
        async with self.model_lock(ref):
            if self.is_unchanged(ref, manifest) and not upload.staged:
                entry = entry_from_manifest(ref, self.versions.path_for(ref), manifest, "upload")
                entry.signer = await asyncio.to_thread(
                    self.verify_signature, ref, manifest, "upload"
                )
                await asyncio.to_thread(self.registry.put, entry)
            else:
                staged = await asyncio.to_thread(self.prepare, upload)
                entry = await asyncio.to_thread(self.publish_staged, staged, ref, manifest)
            self.uploads.delete(upload.upload_id)
        self.metrics.upload("resumable", True)
        # the client checks it is the manifest it sent (docs/upload-protocol.md)
        return {**register_answer(entry, "committed"), "manifest_sha256": manifest.digest()}

    # ---- signatures -------------------------------------------------------------------
    def require_signature_file(self, ref: ModelRef, manifest: Manifest, source: str) -> None:
        """SignatureRefused (``signature_required``) when ``ref``'s namespace needs a
        signature and the manifest lists no ``model.sig``: the early answer, before any
        byte is sent or fetched (the signature itself is checked before the commit)."""
        if self.trust.required(ref.namespace) and signature_entry(manifest.files) is None:
            self._refuse(ref, source, _unsigned(ref))

    def verify_signature(
        self,
        ref: ModelRef,
        manifest: Manifest,
        source: str = "upload",
        *,
        model_dir: Path | None = None,
    ) -> dict[str, Any] | None:
        """Check ``ref``'s signature before it becomes visible (blocking): its signer, or
        None when its namespace needs none. SignatureRefused (counted in ``/metrics`` by
        ``source`` and reason) when ``model.sig`` is missing, does not verify, does not
        cover exactly the manifest's files with their sha256s, or was made by a key not
        trusted for the namespace.

        The manifest's digests are the ones checked. ``model.sig`` is read from the blob
        store (its content arrived verified), or from ``model_dir`` (a scan, a registration,
        a rollback), checked against its entry; a ``model_dir`` the server did not fill must
        then hold exactly the manifest's files with those digests (:meth:`_check_on_disk`).
        """
        if not self.trust.required(ref.namespace):
            return None
        try:
            entry = signature_entry(manifest.files)
            if entry is None:
                raise _unsigned(ref)
            data = self._signature_bytes(entry.sha256, model_dir)
            if model_dir is not None:
                check_signature_bytes(data, entry)
            signer = verify_bundle(data, manifest.files, self.trust.keys_for(ref.namespace))
            if model_dir is not None:
                self._check_on_disk(ref, manifest, model_dir)
        except SignatureError as exc:
            self._refuse(ref, source, exc)
        return signer.to_dict()

    def _check_on_disk(self, ref: ModelRef, manifest: Manifest, model_dir: Path) -> None:
        """SignatureError (``signature_mismatch``) unless ``model_dir`` holds exactly the
        manifest's files with its sha256s: each file hashed once, then remembered by its
        identity (:mod:`mlos_core.storage.ondisk`)."""
        ignored = unsigned_names(ref, manifest)
        problems = self.ondisk.check(model_dir, list(manifest.files), ignored)
        if problems:
            raise SignatureError(
                "the files on disk are not the ones its manifest lists and its signature "
                f"covers: {'; '.join(problems[:5])}"
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
                code=MISMATCH,
                problems=problems,
                hint="copy the signed model again as it was signed (or re-sign it: axon sign "
                f"{ref.id} --key KEY.pem)",
            )

    def _refuse(self, ref: ModelRef, source: str, exc: SignatureError) -> NoReturn:
        self.metrics.refused(source, exc.code)
        log.warning("refused %s (%s): %s", ref.id, source, exc.message)
        raise refusal(exc, f"model {ref.id}") from None

    def _signature_bytes(self, sha256: str, model_dir: Path | None) -> bytes:
        """``model.sig``: from ``model_dir`` (not through a link), else the blob store."""
        path = model_dir / SIGNATURE_NAME if model_dir is not None else self.blobs.path(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SignatureError(
                f"model.sig cannot be read on this server ({exc.strerror})", code=REQUIRED
            ) from None
        with os.fdopen(fd, "rb") as fh:
            return fh.read(MAX_SIGNATURE_BYTES + 1)

    def _verify_registered(
        self, ref: ModelRef, manifest_text: bytes | None, signature: bytes | None, path: Path
    ) -> dict[str, Any] | None:
        """:meth:`verify_signature` of a directory named by ``POST /models/register``."""
        if manifest_text is None:
            self._refuse(ref, "register", _unsigned(ref))
        try:
            manifest = Manifest.from_text(manifest_text or b"", source=MANIFEST_NAME)
        except ManifestError as exc:
            self._refuse(ref, "register", SignatureError(f"its manifest.yaml: {exc}"))
        entry = signature_entry(manifest.files)
        if entry is None or signature is None:
            self._refuse(ref, "register", _unsigned(ref))
        assert entry is not None and signature is not None
        try:
            check_signature_bytes(signature, entry)
            signer = verify_bundle(signature, manifest.files, self.trust.keys_for(ref.namespace))
            self._check_on_disk(ref, manifest, path)
        except SignatureError as exc:
            self._refuse(ref, "register", exc)
        return signer.to_dict()

    # ---- registry operations ----------------------------------------------------------
    def parse_ref(self, model_id: Any) -> ModelRef:
        """A model id from a request; a bare name is in this server's default namespace
        (``--default-namespace``, ``local`` unless set: it must match axon's)."""
        return parse_ref(model_id, default_namespace=self.settings.default_namespace)

    def get_entry(self, ref: ModelRef) -> ModelEntry:
        entry = self.registry.get(ref.id)
        if entry is None:
            raise NotFound(
                f"model {ref.id} is not registered on this instance "
                "(GET /models lists what is; publish it or POST /models/scan)",
                code="unknown_model",
            )
        return entry

    async def delete_model(self, ref: ModelRef) -> dict[str, Any]:
        async with self.model_lock(ref):
            entry = self.registry.remove(ref.id)
            removed, other = await asyncio.to_thread(self.versions.delete, ref)
        if entry is None and not removed:
            raise NotFound(f"model {ref.id} is not registered on this instance")
        async with self.gc_lock:
            await asyncio.to_thread(self._collect)
        message = "deleted"
        if other is not None:
            message = (
                f"deleted the registration; its directory nests with model {other}'s and was "
                "left alone"
            )
        return {"status": "success", "model_id": ref.id, "message": message}

    async def rollback(self, ref: ModelRef) -> dict[str, Any]:
        async with self.model_lock(ref):
            final = await asyncio.to_thread(self.versions.rollback, ref)
            try:
                manifest = Manifest.load(final)
            except ManifestError as exc:
                raise CorruptState(f"{final}: {exc}", code="corrupt_model") from exc
            try:
                signer = await asyncio.to_thread(
                    self.verify_signature, ref, manifest, "rollback", model_dir=final
                )
            except SignatureRefused:
                await asyncio.to_thread(self.versions.rollback, ref)  # forward again
                raise
            entry = entry_from_manifest(ref, final, manifest, "upload")
            entry.signer = signer
            await asyncio.to_thread(self.registry.put, entry)
        return register_answer(entry, "rolled back to the previous version")

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /models/register`` (upstream payload: ``path`` or ``model_path``).

        The path must be the model's own directory in the models dir or, ending in the
        model's ``<ns>/<name>/<version>``, under a ``--register-root`` dir; it is walked and
        its manifest read without following links (:mod:`mlos_core.registration`).
        """
        ref = self.parse_ref(body.get("model_id"))
        for key in ("path", "model_path", "framework", "execution_format", "description"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise BadRequest(f"{key} must be a string, got {type(body[key]).__name__}")
        raw_path = body.get("path") or body.get("model_path") or None
        found = find_model_dir(self.settings, ref, raw_path)
        models_dir = os.path.realpath(self.settings.models_dir)
        if os.path.realpath(found.path).startswith(models_dir + os.sep):
            self.check_overlap(ref)  # never claim a directory inside (or around) another model
        signer = None
        if self.trust.required(ref.namespace):
            try:
                signer = self._verify_registered(
                    ref, found.manifest, found.signature, Path(found.path)
                )
            except SignatureRefused:
                old = self.registry.get(ref.id)
                if old is not None and old.path == found.path:  # its bytes are what was refused
                    self.registry.remove(ref.id)
                raise
        entry = ModelEntry(id=ref.id, name=ref.name, path=found.path, source="register")
        if found.manifest is not None:
            with contextlib.suppress(ManifestError):  # registered as it is, like upstream
                manifest = Manifest.from_text(found.manifest, source=MANIFEST_NAME)
                entry = entry_from_manifest(ref, Path(found.path), manifest, "register")
        if found.manifest is not None and entry.files:  # another tool may have just copied
            with contextlib.suppress(ManifestError):
                placed = Manifest.from_text(found.manifest, source=MANIFEST_NAME)
                damage = self.check_damage([FoundModel(ref, Path(found.path), placed)])
                if damage.quarantined:  # other models may share those bytes: name them all
                    damage = self._damage_everywhere()
                _mark_damaged(entry, damage)
        entry.signer = signer
        entry.framework = body.get("framework") or entry.framework
        entry.execution_format = body.get("execution_format") or entry.execution_format
        entry.description = body.get("description") or entry.description
        existed = self.registry.put(entry)
        return register_answer(entry, "already registered" if existed else "registered")


def _mark_damaged(entry: ModelEntry, damage: Damage) -> ModelEntry:
    """``entry`` with the files ``damage`` names for it (status "damaged"), or none."""
    entry.damaged = list(damage.models.get(entry.id, []))
    if entry.damaged:
        entry.status = "damaged"
    elif entry.status == "damaged":
        entry.status = "ready"
    return entry


class _Visible:
    """A model's visible manifest, read from the file of that ``identity``; its digest is
    taken when first asked for."""

    def __init__(self, identity: tuple[int, int, int, int], manifest: Manifest) -> None:
        self.identity = identity
        self.manifest = manifest
        self._digest: str | None = None
        self._entry: ModelEntry | None = None
        self._ours: bool | None = None

    def ours(self, final: Path) -> bool:
        """Was this version written by a publish (not placed by another tool)? See
        :func:`mlos_core.storage.placed.written_by_a_publish`."""
        if self._ours is None:
            self._ours = written_by_a_publish(final, self.manifest)
        return self._ours

    def digest(self) -> str:
        if self._digest is None:
            self._digest = self.manifest.digest()
        return self._digest

    def registers_as(self, entry: ModelEntry, ref: ModelRef, final: Path) -> bool:
        """Is ``entry`` what a commit of the visible version at ``final`` registers (its
        source and time aside)?"""
        if self._entry is None:
            self._entry = entry_from_manifest(ref, final, self.manifest, "upload")
        return entry == dataclasses.replace(
            self._entry, source=entry.source, registered_at=entry.registered_at, signer=entry.signer
        )


def _unsigned(ref: ModelRef) -> SignatureError:
    return SignatureError(
        f"it has no {SIGNATURE_NAME}, and namespace {ref.namespace!r} takes only models "
        "signed by a key this instance trusts",
        code=REQUIRED,
        hint=f"sign it, then publish again: axon sign {ref.id} --key KEY.pem",
    )


def register_answer(entry: ModelEntry, message: str) -> dict[str, Any]:
    return {
        "status": "success",
        "message": message,
        "model_id": entry.id,
        "name": entry.name,
        "path": entry.path,
        "framework": entry.framework,
        "inference_endpoint": inference_endpoint(entry.id),
    }
