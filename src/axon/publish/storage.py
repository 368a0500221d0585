"""Publishing to network storage that many instances read.

One publish writes the model once to the storage, then tells each of the target's
``notify_instances`` about it; the result reports the storage write and every instance::

    shared dir / file://   FilesystemTransport on the directory      then POST /models/register
    nfs://server/export     FilesystemTransport on its local mount    then POST /models/register
    s3://bucket/prefix      S3Transport (blobs, then manifest)        then POST /models/scan
                                                                       (the instance pulls) and
                                                                       GET /models/{id}

On a directory the write is the same stage -> fsync -> rename as for one instance, so an
instance scanning the share mid-publish sees the old version or the new one, complete. On S3
the manifest is written last (see :mod:`axon.transports.s3`). Retries and resume come from
:class:`axon.publish.instance.StagedPublish`, which works on any transport.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from axon.errors import EXIT_NOT_NOTIFIED, AxonError, NotifyError, TransportError
from axon.mlos_client import MlosClient
from axon.progress import NULL_PROGRESS, Progress
from axon.publish.instance import StagedPublish, is_transient
from axon.publish.notify import is_registered, notify_instance
from axon.publish.options import PublishOptions
from axon.publish.plan import InstancePlan, PlannedFile
from axon.publish.prepared import PreparedModel
from axon.publish.results import InstanceResult, Line
from axon.transports.base import Transport

if TYPE_CHECKING:
    from axon.targets import InstanceTarget, StorageTarget


@dataclass
class InstanceNotice:
    """How telling one instance about the published model went."""

    target: str
    endpoint: str
    action: str  # "register" (shared dir / NFS) or "scan" (S3: the instance pulls)
    registered: bool = False
    seconds: float = 0.0
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StorageResult:
    """The outcome of one storage publish: the write, then one notice per instance."""

    target: str
    storage_type: str
    location: str  # where the model is now: a directory or s3://bucket/prefix/ns/name/v
    model_id: str = ""
    method: str = ""  # the transport: "s3", "filesystem" or "nfs"
    files_sent: int = 0
    files_skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    attempts: int = 0
    published: bool = False
    error: dict[str, Any] | None = None
    instances: list[InstanceNotice] = field(default_factory=list)
    plans: list[InstancePlan] | None = None  # dry run only

    @property
    def ok(self) -> bool:
        return self.published and all(n.ok for n in self.instances)

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return int(self.error.get("exit_code") or 1)
        return 0 if self.ok else EXIT_NOT_NOTIFIED

    def lines(self, model_id: str = "") -> list[Line]:
        """Human summary: the write, then one line per notified instance."""
        if self.error is not None:
            hint = f" ({self.error['hint']})" if self.error.get("hint") else ""
            return [Line(f"{self.target}: publish failed: {self.error.get('message')}{hint}")]
        sent = f"{self.files_sent} sent, {self.files_skipped} skipped"
        lines = [
            f"published {self.model_id} -> {self.target} ({self.method}): {sent}, "
            f"{self.bytes_sent} bytes in {self.seconds:.2f} s",
            f"  at {self.location}",
        ]
        for n in self.instances:
            state = "registered" if n.ok else f"NOT notified: {(n.error or {}).get('message')}"
            who = n.target if n.target == n.endpoint else f"{n.target} ({n.endpoint})"
            lines.append(f"  {who}: {n.action} -> {state}")
        return [Line(text) for text in lines]

    def summary(self) -> str:
        """:meth:`lines` as one text."""
        return "\n".join(line.text for line in self.lines())

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "plans"}
        data["instances"] = [{**asdict(n), "ok": n.ok} for n in self.instances]
        data.update(ok=self.ok, exit_code=self.exit_code)
        if self.plans is not None:
            data["plans"] = [p.to_dict() for p in self.plans]
        return data


def storage_transport(storage: StorageTarget, options: PublishOptions | None = None) -> Transport:
    """The transport writing to ``storage`` (S3, or a directory: shared, file:// or NFS).

    The registry picks it by ``storage.scheme``; ``options.s3`` tunes an ``s3`` one (a
    dict of :class:`~modelpkg.s3.S3Settings` fields: multipart uploads).
    """
    from axon.transports import storage_transport_for

    tuning = (options.s3 if options and storage.scheme == "s3" else None) or {}
    return storage_transport_for(storage, tuning)


def plan_storage(
    model: PreparedModel, storage: StorageTarget, options: PublishOptions | None = None
) -> InstancePlan:
    """What a publish to ``storage`` would send (``--dry-run``); reads, never writes."""
    with storage_transport(storage, options) as transport:
        remote = transport.fetch_manifest(model.ref)
        unchanged = remote is not None and remote.data == model.manifest.data
        missing = transport.missing_content(model.manifest, remote) if not unchanged else set()
        location = transport.describe()
    files = [PlannedFile(f.path, f.size, send=f.sha256 in missing) for f in model.manifest.files]
    return InstancePlan(
        target=storage.name,
        method=transport.method,
        location=f"{location.rstrip('/')}/{model.ref.relpath}",
        path=None,
        files=files,
        unchanged=unchanged,
    )


def publish_to_storage(
    model: PreparedModel,
    storage: StorageTarget,
    options: PublishOptions,
    progress: Progress = NULL_PROGRESS,
) -> StorageResult:
    """Write ``model`` to ``storage`` once, then notify its instances. Never raises for
    target failures: they are in the result (one entry per instance)."""
    started = time.monotonic()
    result = StorageResult(
        target=storage.name,
        storage_type=storage.storage_type,
        location=storage.location,
        model_id=model.ref.id,
    )
    if options.dry_run:
        try:
            result.plans = [plan_storage(model, storage, options)]
            result.published = True
        except AxonError as exc:
            result.error = {**exc.to_dict(), "exit_code": exc.exit_code}
        return result
    written = _write(result, model, storage, options, progress)
    if written is not None:
        result.published = True
        result.location = written.location
        result.files_sent, result.files_skipped = written.files_sent, written.files_skipped
        result.bytes_sent, result.attempts = written.bytes_sent, written.attempts
        if options.notify:
            result.instances = [
                notify_reader(inst, storage, model, written.path, options)
                for inst in storage.notify_instances
            ]
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _write(
    result: StorageResult,
    model: PreparedModel,
    storage: StorageTarget,
    options: PublishOptions,
    progress: Progress,
) -> InstanceResult | None:
    """Stage and commit ``model`` on the storage (retried and resumed like an instance);
    None when that failed, with the error (and what was sent) in ``result``."""
    transport: Transport | None = None
    staged: StagedPublish | None = None
    try:
        transport = storage_transport(storage, options)
        result.method = transport.method
        # StagedPublish only uses the target's name; storage notifications are ours (below).
        staged = StagedPublish(
            model,
            cast("InstanceTarget", storage),
            dataclasses.replace(options, notify=False),
            progress,
            transport,
        )
        staged.stage()
        return staged.commit()
    except (AxonError, OSError) as exc:
        err = exc if isinstance(exc, AxonError) else _cache_read_error(exc, storage, model)
        if staged is not None:
            if not is_transient(err):
                staged.abort()  # keep partial data of transient failures: a re-run resumes
            result.attempts = staged.counters.attempts
            result.bytes_sent = staged.counters.bytes_sent
        result.error = {**err.to_dict(), "exit_code": err.exit_code}
        return None
    finally:
        if transport is not None:
            transport.close()


def notify_reader(
    instance: InstanceTarget,
    storage: StorageTarget,
    model: PreparedModel,
    written_path: str | None,
    options: PublishOptions,
) -> InstanceNotice:
    """Tell one reader of ``storage`` about ``model``: register its path, or (S3) ask it to
    scan, which makes it pull the new version, and check that it registered it."""
    started = time.monotonic()
    is_s3 = storage.scheme == "s3"
    notice = InstanceNotice(instance.name, instance.endpoint, "scan" if is_s3 else "register")
    timeout = min(options.timeout, 120.0)
    try:
        if is_s3:
            _scan(instance, timeout)
            if not is_registered(instance, model.ref, timeout=timeout):
                raise NotifyError(
                    f"{model.ref} is in {storage.location} but {instance.name} did not register "
                    "it after a scan",
                    target=instance.name,
                    url=instance.endpoint,
                    hint=f"start the instance with --models-url {storage.location} (and "
                    "--s3-endpoint-url for a non-AWS store), then run axon publish again",
                )
        else:
            notify_instance(
                instance,
                model.ref,
                _reader_path(instance, model, written_path),
                manifest=model.manifest,
                timeout=timeout,
            )
        notice.registered = True
    except AxonError as exc:
        notice.error = {**exc.to_dict(), "exit_code": exc.exit_code}
    notice.seconds = round(time.monotonic() - started, 3)
    return notice


def _reader_path(instance: InstanceTarget, model: PreparedModel, written: str | None) -> str | None:
    """The model directory as ``instance`` sees it: under its own ``storage_path`` when the
    share is mounted elsewhere there, else where we wrote it."""
    root = instance.storage_path
    if root and "://" not in root:
        return f"{root.rstrip('/')}/{model.ref.relpath}"
    return written


def _scan(instance: InstanceTarget, timeout: float) -> None:
    try:
        with MlosClient.for_target(instance, timeout) as client:
            client.scan()
    except AxonError as exc:
        raise NotifyError(
            f"could not ask {instance.name} to scan: {exc.message}",
            target=instance.name,
            url=f"{instance.endpoint.rstrip('/')}/models/scan",
            hint="once the instance is up, POST /models/scan or re-run the publish",
        ) from exc


def _cache_read_error(exc: OSError, storage: StorageTarget, model: PreparedModel) -> AxonError:
    """An OSError here is reading the cache (a file vanished mid-publish): ours, not theirs."""
    return TransportError(
        f"publish to {storage.name} stopped: {exc.strerror or exc} ({exc.filename or '?'})",
        target=storage.name,
        path=str(exc.filename) if exc.filename else None,
        hint=f"check the cached model with `axon verify {model.ref}`, then re-run",
    )
