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
import posixpath
import stat
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from axon.errors import (
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_NOT_NOTIFIED,
    AxonError,
    NotifyError,
    OptionError,
    TransportError,
)
from axon.mlos_client import MlosClient, shown
from axon.progress import NULL_PROGRESS, Progress
from axon.publish.instance import StagedPublish, is_transient
from axon.publish.notify import is_registered, notify_instance, registry_client
from axon.publish.options import PublishOptions
from axon.publish.plan import InstancePlan, PlannedFile, compare
from axon.publish.prepared import PreparedModel
from axon.publish.results import InstanceResult, Line, error_text, size_text
from axon.targets import ClusterTarget, InstanceTarget, StorageTarget, Target, resolve_target
from axon.transports.base import Transport

if TYPE_CHECKING:
    from axon.config import Config
    from modelpkg.manifest import Manifest


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
    # why no instance was told, when none was ("--no-notify", none configured)
    nobody_reason: str = ""

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
            return [Line(error_text(self.error, self.target), error=True)]
        sent = f"{self.files_sent} sent, {self.files_skipped} skipped"
        lines = [
            Line(
                f"published {self.model_id} -> {self.target} ({self.method}): {sent}, "
                f"{size_text(self.bytes_sent)} in {self.seconds:.2f} s"
            ),
            Line(f"  at {self.location}"),
        ]
        for n in self.instances:
            who = n.target if n.target == n.endpoint else f"{n.target} ({n.endpoint})"
            if n.ok:
                lines.append(Line(f"  {who}: {n.action} -> registered"))
            else:  # the storage write is done; this reader was not told (exit 8)
                lines.append(Line(error_text(n.error or {}, n.target), error=True))
        if not self.instances and self.nobody_reason:
            lines.append(Line(f"  notified: nobody ({self.nobody_reason})"))
        return lines

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


def nobody_reason(storage: StorageTarget, options: PublishOptions) -> str:
    """Why a publish to ``storage`` tells no instance ("" when it tells some)."""
    if not options.notify:
        return "--no-notify: no instance was told"
    if storage.notify_instances:
        return ""
    if storage.name == storage.location or "://" in storage.name or storage.name[:1] in "/.~":
        where = "an ad-hoc storage location has no notify_instances"
    else:
        where = f"mlos_targets.{storage.name} lists no notify_instances"
    return (
        f"{where}; instances that read it pick the model up on their next scan, or name them "
        "with --notify-instance URL"
    )


def with_readers(target: Target, specs: Sequence[str], config: Config) -> StorageTarget:
    """``target`` (network storage) with the instances ``specs`` name added to the ones it
    notifies (``--notify-instance``, each a configured instance name, host[:port] or URL).
    An OptionError (exit 2) for any other kind of target, or a spec that is not an
    instance."""
    if not isinstance(target, StorageTarget):
        raise OptionError(
            f"--notify-instance applies to network storage, and {target.name!r} is "
            f"{'a cluster' if isinstance(target, ClusterTarget) else 'an instance'}",
            hint="an instance registers what it receives; drop --notify-instance",
        )
    readers = list(target.notify_instances)
    for spec in specs:
        reader = resolve_target(spec, config)
        if not isinstance(reader, InstanceTarget):
            raise OptionError(
                f"--notify-instance {spec!r} is not an instance (it names "
                f"{'a cluster' if isinstance(reader, ClusterTarget) else 'storage'})",
                hint="give an instance: a configured name, host[:port] or http(s)://host:port",
            )
        if all(r.endpoint != reader.endpoint for r in readers):
            # only its API is used: a reader is told over HTTP, never written to
            readers.append(dataclasses.replace(reader, access_method="api"))
    return dataclasses.replace(target, notify_instances=readers)


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
        result.nobody_reason = nobody_reason(storage, options)
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
        # StagedPublish needs a target for its name and messages only: the storage is no
        # instance ("api": nothing to ask before the write; each reader checks what it is
        # told of), and storage notifications are ours (below).
        writer = InstanceTarget(name=storage.name, endpoint=storage.location, access_method="api")
        staged = StagedPublish(
            model, writer, dataclasses.replace(options, notify=False), progress, transport
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
                again=_publish_again(instance, storage, model),
            )
        notice.registered = True
    except AxonError as exc:
        notice.error = {**exc.to_dict(), "exit_code": exc.exit_code}
    notice.seconds = round(time.monotonic() - started, 3)
    return notice


def _publish_again(instance: InstanceTarget, storage: StorageTarget, model: PreparedModel) -> str:
    """The command that tells ``instance`` later: the same publish (the files are there, so
    only the instances are told), naming the instance when it was typed for this publish."""
    from axon.targets import ADHOC_ORIGINS

    typed = f" --notify-instance {instance.name}" if instance.origin in ADHOC_ORIGINS else ""
    return (
        f"axon publish {model.ref} --target {storage.name}{typed} again (the files are there: "
        "only the instances are told)"
    )


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


# ---- axon status REF --target STORAGE ------------------------------------------------------
@dataclass
class ReaderStatus:
    """Whether one of the storage's ``notify_instances`` has the model registered."""

    target: str
    endpoint: str
    registered: bool | None  # None: the instance could not be asked (see error)
    error: dict[str, Any] | None = None
    #: why a reader that has the model id registered does not count: "another path" (it
    #: registered the id from a directory other than this storage's) or "another build"
    #: (its manifest lists other files than the storage's)
    other: str | None = None
    detail: str | None = None  # that, in words: which path / which files differ


@dataclass
class StorageStatus:
    """``axon status`` for network storage: is the model there, do its files match the
    cache file by file, and which of the storage's readers have it registered."""

    target: str
    storage_type: str
    method: str
    model_id: str
    location: str
    present: bool
    version: str | None = None
    checksums_match: bool | None = None
    mismatched: list[str] = field(default_factory=list)  # listed differently, or extra
    missing: list[str] = field(default_factory=list)  # listed, but its bytes are not there
    files_checked: int = 0
    bytes_hashed: int = 0  # --full-verify: bytes read back from the storage
    #: what was compared with the cache: "sizes" (the manifest, and each file's presence and
    #: size: a same-size change goes unnoticed) or "sha256" (--full-verify read every byte back)
    checked: str = "sizes"
    readers: list[ReaderStatus] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Present and matching, and every reader has it registered."""
        return (
            self.present and bool(self.checksums_match) and all(r.registered for r in self.readers)
        )

    @property
    def exit_code(self) -> int:
        """0 ok, 3 absent, 5 differs, 8 present and matching but a reader has not
        registered it (or could not be asked)."""
        if not self.present:
            return EXIT_NOT_FOUND
        if not self.checksums_match:
            return EXIT_INTEGRITY
        return 0 if self.ok else EXIT_NOT_NOTIFIED

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ok=self.ok, exit_code=self.exit_code)
        return data

    def lines(self) -> list[Line]:
        """The human report; problems are error lines (``axon: error:`` on stderr)."""
        head = f"{self.model_id} on {self.target} ({self.method})"
        if not self.present:
            return [
                Line(f"{head}: not present at {self.location}"),
                *self._reader_lines(),
            ]
        counted = f"{self.files_checked} files"
        if self.checked == "sha256":
            match = {True: "yes", False: "NO", None: "unknown"}[self.checksums_match]
            verdict = f"checksums match cache: {match} ({counted} hashed, "
            verdict += f"{size_text(self.bytes_hashed)} re-read)"
        elif self.checksums_match:
            verdict = "manifest and sizes match (not re-read; --full-verify hashes them), "
            verdict += f"{counted} checked"
        else:
            verdict = f"matches cache: NO ({counted} checked by manifest and size)"
        out = [
            Line(f"{head}: present at {self.location}"),
            Line(f"  version: {self.version or '?'}  {verdict}"),
        ]
        out += [Line(f"  differs: {p}") for p in self.mismatched]
        out += [Line(f"  missing or damaged: {p}") for p in self.missing]
        out += self._reader_lines()
        return out

    def _reader_lines(self) -> list[Line]:
        if not self.readers:
            return [Line("  readers: none configured (notify_instances; --notify-instance)")]
        out = []
        for r in self.readers:
            who = r.target if r.target == r.endpoint else f"{r.target} ({r.endpoint})"
            state = {True: "registered", False: "NOT registered", None: "unknown"}[r.registered]
            if r.other is not None:
                state = f"registered from {r.other}, not from this storage ({r.detail})"
            out.append(Line(f"  reader {who}: {state}"))
            if r.error is not None:
                out.append(Line(error_text(r.error, r.target), error=True))
        return out


def storage_status(
    model: PreparedModel,
    storage: StorageTarget,
    *,
    full: bool = False,
    options: PublishOptions | None = None,
) -> StorageStatus:
    """Compare what ``storage`` holds for ``model.ref`` with the cache, file by file, and
    ask each of its readers whether it has the model registered. Reads only.

    A directory (shared, file://, NFS): each listed file must be there with its size (and,
    with ``full``, its sha256, read back). S3: each blob the manifest names must be in the
    bucket with its size (blobs are named by their sha256, checked by the store on write).
    """
    with storage_transport(storage, options) as transport:
        remote = transport.fetch_manifest(model.ref)
        where = transport.describe().rstrip("/")
        status = StorageStatus(
            target=storage.name,
            storage_type=storage.storage_type,
            method=transport.method,
            model_id=model.ref.id,
            location=f"{where}/{model.ref.relpath}",
            present=remote is not None,
        )
        dir_root = _dir_root(transport)
        if remote is not None:
            status.version = remote.version
            ours = {f.path for f in model.manifest.files}
            status.mismatched = [f.path for f in compare(model, remote) if f.send]
            status.mismatched += sorted(f.path for f in remote.files if f.path not in ours)
            status.missing, status.bytes_hashed = _missing_bytes(transport, model, remote, full)
            status.checked = "sha256" if full and dir_root is not None else "sizes"
            status.files_checked = len(remote.files)
            status.checksums_match = not status.mismatched and not status.missing
    status.readers = [
        _reader_status(inst, model, dir_root, remote) for inst in storage.notify_instances
    ]
    return status


def _dir_root(transport: Transport) -> str | None:
    """The storage's directory on this machine; None on S3. ``--full-verify`` reads a
    directory's bytes back; S3 blobs are named by sha256 and checked by the store on write."""
    from axon.transports.filesystem import FilesystemTransport

    return str(transport.root) if isinstance(transport, FilesystemTransport) else None


def _missing_bytes(
    transport: Transport, model: PreparedModel, remote: Manifest, full: bool
) -> tuple[list[str], int]:
    """The files of ``remote`` whose bytes the storage lacks (or, with ``full``, holds
    with another sha256); and the bytes read to tell."""
    from axon.transports.filesystem import FilesystemTransport

    if not isinstance(transport, FilesystemTransport):
        lacking = transport.missing_content(remote, remote)
        return sorted(f.path for f in remote.files if f.sha256 in lacking), 0
    from axon.hashing import sha256_file

    root = transport.root / model.ref.relpath
    missing: list[str] = []
    hashed = 0
    for entry in remote.files:
        path = root / entry.path
        try:
            st = path.lstat()
        except OSError:
            missing.append(entry.path)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            missing.append(entry.path)
        elif full:
            try:
                if sha256_file(path) != entry.sha256:
                    missing.append(entry.path)
            except OSError:
                missing.append(entry.path)
            hashed += st.st_size
    return missing, hashed


def _reader_status(
    instance: InstanceTarget,
    model: PreparedModel,
    dir_root: str | None,
    remote: Manifest | None,
) -> ReaderStatus:
    """Has ``instance`` registered ``model`` *from this storage*? A 200 for the id is not
    enough: it may have registered the same id from its own models dir (another path) or
    another build of it (another manifest). ``dir_root``: the storage's directory here (None
    on S3, where a reader keeps its own copy); ``remote``: the storage's manifest."""
    reader = ReaderStatus(instance.name, instance.endpoint, registered=None)
    try:
        with registry_client(instance) as client:
            record = client.model_info(model.ref)
            reader.registered = record is not None
            if record is None:
                return reader
            path = record.get("path")
            expected = None
            if dir_root is not None:
                expected = _reader_path(instance, model, f"{dir_root}/{model.ref.relpath}")
            if expected and isinstance(path, str) and path and _norm(path) != _norm(expected):
                reader.registered = False
                reader.other = "another path"
                reader.detail = f"it reads {shown(path)}; this storage's copy is {expected}"
                return reader
            if remote is None:
                return reader
            served, theirs = client.manifest(model.ref)
            if served and theirs is not None:
                differ = sorted(_file_set(theirs) ^ _file_set(remote))
                if differ:
                    reader.registered = False
                    reader.other = "another build"
                    names = sorted({path for path, _size, _sha in differ})
                    listed = ", ".join(shown(n, 80) for n in names[:3])
                    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                    reader.detail = f"its files differ from this storage's: {listed}{more}"
    except AxonError as exc:
        reader.error = {**exc.to_dict(), "exit_code": exc.exit_code}
    return reader


def _file_set(manifest: Manifest) -> set[tuple[str, int, str]]:
    """A build's files: (path, size, sha256) of each (the manifest's other fields, such as
    timestamps, may be written differently by each side)."""
    return {(f.path, f.size, f.sha256) for f in manifest.files}


def _norm(path: str) -> str:
    return posixpath.normpath(path)


def storage_status_for(
    ref: str,
    target_spec: str,
    *,
    full: bool = False,
    readers: Sequence[str] = (),
    config: Config | None = None,
) -> StorageStatus | None:
    """:func:`storage_status` when ``target_spec`` names network storage (with ``readers``
    added to its notify_instances), None for any other target."""
    from axon.cache import Cache
    from axon.config import load_config
    from axon.publish.prepared import prepare_model
    from modelpkg.refs import ModelRef

    config = config if config is not None else load_config()
    target = resolve_target(target_spec, config)
    if not isinstance(target, StorageTarget):
        return None
    if readers:
        target = with_readers(target, readers, config)
    model = prepare_model(Cache.from_config(config), ModelRef.parse(ref), validate=True, full=full)
    return storage_status(model, target, full=full)
