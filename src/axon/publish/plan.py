"""Plans: what a publish would do, decided before anything moves.

* :class:`PublishOptions` is the contract between the CLI and the library (like twine's
  ``Settings``): every ``axon publish`` flag lands here; cluster and storage options too.
* :func:`prepare_model` hashes the model once per publish (the cache's hash index makes an
  unchanged model cheap) and, with ``validate``, checks the manifest and every sha256 before a
  single byte is sent.
* :func:`plan_instance` compares the cache with what the target holds now (without changing
  anything) for ``--dry-run``; :func:`instance_status` adds the registration for ``status``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axon.errors import AxonError, IntegrityError
from axon.hashing import file_key
from axon.mlos_client import quote_id
from axon.progress import NULL_PROGRESS, Progress
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.cache import Cache
    from axon.targets import InstanceTarget
    from axon.transports.base import FileKey, Transport


@dataclass
class PublishOptions:
    """Every knob of a publish. Cluster (H7) and storage (H5) options live here too."""

    validate: bool = True  # manifest + every sha256 checked before anything is sent
    notify: bool = True  # POST /models/register after a filesystem/SSH/NFS copy
    dry_run: bool = False  # plan only, change nothing
    retries: int = 5  # re-open + resume this many times on transient failures
    timeout: float = 30.0  # per network operation, seconds
    override_timeout: bool = False  # True: ``timeout`` replaces each target's own timeout
    full_verify: bool = False  # re-hash every file even when the hash index knows it
    backoff: float = 0.5  # first retry delay, doubling up to max_backoff
    max_backoff: float = 8.0
    # cluster publishing (axon.publish.cluster)
    atomic: bool = False  # stage on every instance, then commit everywhere or nowhere
    strategy: str | None = None  # override the cluster's strategy
    max_parallel: int | None = None
    fail_fast: bool = False  # the first failure cancels every instance not started yet
    min_success: str | int | None = None  # successes needed: N or "P%"; default: all targeted
    batch_size: int | None = None  # rolling: instances per batch
    # anything a newer module needs before it gets its own field
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedModel:
    """A cached model ready to publish: its strict manifest was built (hashed) once."""

    ref: ModelRef
    manifest: Manifest  # strict: every file with its real size and sha256
    source_dir: Path
    total_bytes: int
    # path -> identity (dev, ino, size, mtime_ns, ctime_ns) at which validation found the
    # file's sha256 to match the manifest; a local copy need not hash those bytes again
    verified: dict[str, FileKey] = field(default_factory=dict)

    def source(self, entry: FileEntry) -> Path:
        """The local file holding ``entry``."""
        return self.source_dir / entry.path


def prepare_model(
    cache: Cache,
    ref: ModelRef,
    *,
    validate: bool = True,
    full: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> PreparedModel:
    """Find ``ref`` in the cache and build its strict manifest (ModelNotFoundError if absent).

    With ``validate`` every file is checked against the manifest (IntegrityError listing each
    mismatch); without it, a manifest that already lists every size and sha256 is trusted.
    """
    cached = cache.get(ref)
    manifest = cached.manifest
    if validate or full or not all(f.known for f in manifest.files):
        total = sum(f.size for f in manifest.files) or None
        progress.begin("verify", f"checking {ref}", total)
        try:
            manifest = cache.checked_manifest(
                ref, full=full, on_bytes=lambda n: progress.advance("verify", n)
            )
        except AxonError:
            progress.end("verify", ok=False, note="model does not match its manifest")
            raise
        progress.end("verify")
    if not manifest.files:
        raise IntegrityError(
            f"{ref} lists no files in its manifest",
            path=str(cached.path),
            hint="reinstall the model with `axon install`",
        )
    return PreparedModel(
        ref=ref,
        manifest=manifest,
        source_dir=cached.path,
        total_bytes=sum(f.size for f in manifest.files),
        verified=_verified_identities(cache, cached.path, manifest)
        if validate and not full
        else {},
    )


def _verified_identities(cache: Cache, root: Path, manifest: Manifest) -> dict[str, FileKey]:
    """The identity of each file whose sha256 validation just vouched for (through the hash
    index: it was computed from these exact bytes). A file that changes afterwards gets a
    new identity (its mtime/ctime move), so the copy hashes it again and catches it."""
    out: dict[str, FileKey] = {}
    for entry in manifest.files:
        path = root / entry.path
        try:
            st = path.stat()
        except OSError:
            continue  # vanished: the copy reports it
        if st.st_size == entry.size and cache.index.lookup(path, st) == entry.sha256:
            out[entry.path] = file_key(st)
    return out


@dataclass
class InstanceResult:
    """The outcome of publishing to one instance (one object of ``--json`` output)."""

    target: str
    method: str
    location: str
    path: str | None
    files_sent: int = 0
    files_skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    notified: bool = False
    registered: bool = False
    attempts: int = 0
    error: dict[str, Any] | None = None
    ok: bool = False
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlannedFile:
    path: str
    size: int
    send: bool  # False: the target already holds this content


@dataclass
class InstancePlan:
    """What publishing to one instance would do (``--dry-run``); changes nothing."""

    target: str
    method: str
    location: str  # where the files would go
    path: str | None  # the model directory as the instance sees it, when known
    files: list[PlannedFile]
    unchanged: bool  # the target already has exactly this manifest

    @property
    def bytes_to_send(self) -> int:
        return sum(f.size for f in self.files if f.send)

    @property
    def files_to_send(self) -> int:
        return sum(1 for f in self.files if f.send)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(bytes_to_send=self.bytes_to_send, files_to_send=self.files_to_send)
        return data


def compare(model: PreparedModel, remote: Manifest | None) -> list[PlannedFile]:
    """Each file of ``model``, marked ``send`` unless ``remote`` has the same path and sha256."""
    have = {(f.path, f.sha256) for f in remote.files} if remote is not None else set()
    return [
        PlannedFile(f.path, f.size, send=(f.path, f.sha256) not in have)
        for f in model.manifest.files
    ]


def _location(transport: Transport, model: PreparedModel) -> tuple[str, str | None]:
    path = transport.instance_path(model.ref)
    where = transport.describe().rstrip("/")
    if path:
        return f"{where}/{model.ref.relpath}", path
    if transport.method == "api":  # where the instance serves it (as InstanceResult says)
        return f"{where}/models/{quote_id(model.ref.id)}", None
    return where, None


def plan_instance(model: PreparedModel, target: InstanceTarget) -> InstancePlan:
    """What :func:`~axon.publish.instance.publish_to_instance` would send; reads only.

    Content-addressed targets (the API) may need even less than planned: they also reuse
    blobs of other models.
    """
    from axon.transports import transport_for

    with transport_for(target) as transport:
        remote = transport.fetch_manifest(model.ref)
        location, path = _location(transport, model)
        files = compare(model, remote)
        return InstancePlan(
            target=target.name,
            method=transport.method,
            location=location,
            path=path,
            files=files,
            unchanged=remote is not None and not any(f.send for f in files),
        )


@dataclass
class InstanceStatus:
    """``axon status`` for one instance: present? which version? matching? registered?"""

    target: str
    method: str
    model_id: str
    location: str
    present: bool
    version: str | None  # the version in the target's manifest
    checksums_match: bool | None  # None when the target's manifest cannot be read
    mismatched: list[str]  # files that differ from (or are missing against) the cache
    registered: bool | None  # None when the instance's API could not be asked
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.present and bool(self.checksums_match) and self.error is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def instance_status(model: PreparedModel, target: InstanceTarget) -> InstanceStatus:
    """Compare what ``target`` holds for ``model.ref`` with the cache, and ask if registered."""
    from axon.publish.notify import is_registered
    from axon.transports import transport_for

    with transport_for(target) as transport:
        remote = transport.fetch_manifest(model.ref)
        location, _path = _location(transport, model)
        method = transport.method
        matches = getattr(transport, "matches", None)  # targets without a manifest download
        if remote is None and matches is not None and matches(model.ref, model.manifest):
            remote = model.manifest
    mismatched: list[str] = []
    if remote is not None:
        mismatched = [f.path for f in compare(model, remote) if f.send]
        ours = {f.path for f in model.manifest.files}
        mismatched += sorted(f.path for f in remote.files if f.path not in ours)
    status = InstanceStatus(
        target=target.name,
        method=method,
        model_id=model.ref.id,
        location=location,
        present=remote is not None,
        version=remote.version if remote is not None else None,
        checksums_match=not mismatched if remote is not None else None,
        mismatched=mismatched,
        registered=None,
    )
    try:
        status.registered = is_registered(target, model.ref)
    except AxonError as exc:
        status.error = exc.to_dict()
    if not status.present and matches is not None and status.registered:
        # registered on an API-only instance, but not with the cache's manifest
        status.present, status.checksums_match = True, False
        status.version = model.ref.version
    return status
