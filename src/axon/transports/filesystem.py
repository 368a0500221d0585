"""Publish to a directory on this machine: a local models dir, an NFS mount, a shared dir.

The model lands at ``<root>/<ns>/<name>/<version>/`` through the staged-directory protocol of
:mod:`axon.transports.stagedir` (deterministic staging dir next to the final one, resume by
offset, hash while writing, fsync, one atomic swap). A source file the caller has just
verified (``send(..., verified=identity)``: its sha256 checked at that inode, size, mtime and
ctime) is copied by the kernel without hashing it again, as long as it keeps that identity
before and after the copy. Files the current version already holds with the same sha256 (and
a matching size on disk) are hard-linked into the new version, not copied (published files
are immutable by convention: nothing ever rewrites one in place); re-publishing an unchanged
model writes nothing.

On NFS the same protocol holds: hard links and renames are atomic on the server, but most
servers refuse ``RENAME_EXCHANGE``, so replacing a version there uses rename-aside +
rename-in (the path is absent for microseconds, never partial). Two publishes of the same
manifest share a staging dir; the partial file being written is locked, so they cannot
interleave bytes (the second waits or fails with a retryable "busy").

The planning half (:func:`plan_session`) and the error translation (:func:`translate`) are
shared with :mod:`axon.transports.ssh`, which runs the same protocol on a remote host.
"""

from __future__ import annotations

import errno
import hashlib
import os
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axon.errors import (
    AxonError,
    NoSpaceError,
    TargetPermissionError,
    TargetUnreachableError,
    TransportError,
    retryable,
)
from axon.transports import stagedir
from axon.transports.base import CommitInfo, FileKey, Session, Transport
from axon.transports.blobcopy import StageError
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from typing import Self

    from axon.targets import InstanceTarget

DEFAULT_ROOT = "/var/lib/mlos/models"

_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


# ---- planning (shared with ssh) -----------------------------------------------------------
@dataclass
class StagePlan:
    """What a session must do, computed from the target's :func:`stagedir.status`."""

    digest: str  # sha256 of the manifest text: names the staging dir
    manifest_text: str
    unchanged: bool = False
    needed: list[FileEntry] = field(default_factory=list)  # one entry per missing sha256
    paths: dict[str, list[str]] = field(default_factory=dict)  # sha256 -> paths to place at
    offsets: dict[str, int] = field(default_factory=dict)  # sha256 -> bytes already there
    links: list[tuple[str, str]] = field(default_factory=list)  # (current path, new path)
    expected: list[tuple[str, int]] = field(default_factory=list)  # every (path, size)


def manifest_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _current_manifest(text: str | None) -> Manifest | None:
    if text is None:
        return None
    try:
        return Manifest.from_text(text)
    except AxonError:
        return None  # unreadable: treat the target as holding nothing reusable


def plan_session(manifest: Manifest, status: dict[str, Any], text: str) -> StagePlan:
    """Compare ``manifest`` (``text``: as it will be written) with what the target holds;
    trust sizes on disk, not names."""
    plan = StagePlan(digest=manifest_digest(text), manifest_text=text)
    files = manifest.files
    plan.expected = [(f.path, f.size) for f in files]
    on_disk: dict[str, int] = status.get("current") or {}
    current = _current_manifest(status.get("manifest"))
    same = current is not None and current.data == manifest.data
    if same and all(on_disk.get(f.path) == f.size for f in files):
        plan.unchanged = True
        return plan
    reusable: dict[str, str] = {}
    for f in current.files if current is not None else []:
        if f.known and on_disk.get(f.path) == f.size:
            reusable.setdefault(f.sha256, f.path)
    staged: dict[str, int] = status.get("staged") or {}
    partials: dict[str, int] = status.get("partials") or {}
    for f in files:
        if staged.get(f.path) == f.size:
            continue  # placed (verified) by an earlier attempt
        if f.sha256 in reusable:
            plan.links.append((reusable[f.sha256], f.path))
            continue
        if f.sha256 not in plan.paths:
            plan.paths[f.sha256] = []
            plan.needed.append(f)
            have = partials.get(f.sha256, 0)
            plan.offsets[f.sha256] = have if have <= f.size else 0
        plan.paths[f.sha256].append(f.path)
    return plan


# ---- errors (shared with ssh) -------------------------------------------------------------
def translate(exc: BaseException, *, target: str, root: str) -> AxonError:
    """Turn an OSError or :class:`StageError` (local or remote) into our errors."""
    if isinstance(exc, AxonError):
        return exc
    if isinstance(exc, StageError):
        return error_from_code(exc.code, exc.message, None, exc.path, target=target, root=root)
    if isinstance(exc, OSError):
        message = exc.strerror or str(exc)
        return error_from_code(
            "oserror", message, exc.errno, exc.filename, target=target, root=root
        )
    return TransportError(f"{type(exc).__name__}: {exc}", target=target, path=root)


def error_from_code(
    code: str,
    message: str,
    err: int | None,
    path: str | None,
    *,
    target: str,
    root: str,
    host: str = "",
) -> AxonError:
    """Our error for a :mod:`stagedir` failure; ``host`` ("user@host:port") when remote."""
    where = path or root
    on = f" on {host}" if host else ""
    if code == "oserror" and err in _PERMISSION:
        return TargetPermissionError(
            f"permission denied writing {where}{on} ({message})",
            target=target,
            path=where,
            hint=f"give the publishing user write access to {root}{on}, or publish through the API",
        )
    if code == "oserror" and err in _NO_SPACE:
        return NoSpaceError(
            f"no space left writing {where}{on}",
            target=target,
            path=where,
            hint=f"free space on the filesystem of {root}{on} (staging needs the model's size)",
        )
    if code == "oserror" and err == errno.ENOENT and where == root:
        missing = TargetUnreachableError(
            f"models directory {root}{on} does not exist",
            target=target,
            path=root,
            hint="create it, fix storage_path in ~/.axon/config.yaml, or mount the NFS share",
        )
        return retryable(missing, False)
    if code == "checksum_mismatch":
        mismatch = TransportError(
            f"{message} at {where}{on}",
            target=target,
            path=where,
            hint="the partial data was dropped; publish again (did the cached file change?)",
        )
        return retryable(mismatch, True)
    if code == "source_changed":
        changed = TransportError(
            f"{message}: {where}{on}",
            target=target,
            path=where,
            hint="a cached file changed during the publish: run `axon verify`, then publish again",
        )
        return retryable(changed, False)
    if code in ("busy", "offset_mismatch"):
        busy = TransportError(
            f"{message}: {where}{on}",
            target=target,
            path=where,
            hint="another publish of this model may be running; wait for it, then retry",
        )
        return retryable(busy, True)
    return TransportError(f"{message} at {where}{on}", target=target, path=where)


# ---- the session of the protocol (shared with ssh) ----------------------------------------
class StagedSession(Session):
    """One publish of one model through the staged-directory protocol, here or remote.

    Planning, bookkeeping, prepare, commit and abort are the same wherever :mod:`stagedir`
    runs; a subclass says how an operation reaches it (:meth:`_op`), where the model lands
    (:meth:`_location`), and moves the bytes (:meth:`send`, recording each with
    :meth:`_done`).
    """

    def __init__(
        self,
        ref: ModelRef,
        plan: StagePlan,
        *,
        target: str,
        dir_mode: int | None,
        file_mode: int | None,
    ) -> None:
        self.ref = ref
        self.plan = plan
        self.needed = list(plan.needed)
        self.unchanged = plan.unchanged
        self.target = target
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self._sent: set[str] = set()
        self._prepared = False

    @abstractmethod
    def _op(self, op: str, **params: Any) -> dict[str, Any]:
        """Run ``stagedir.<op>(root, rel, digest, **params)`` on the target."""

    @abstractmethod
    def _location(self) -> tuple[str, str | None]:
        """(where the model lands, for messages; the model directory as the instance sees it)."""

    def offset(self, entry: FileEntry) -> int:
        return self.plan.offsets.get(entry.sha256, 0)

    def _blob(self, entry: FileEntry) -> dict[str, Any]:
        return {
            "sha256": entry.sha256,
            "size": entry.size,
            "offset": self.offset(entry),
            "paths": self.plan.paths.get(entry.sha256, [entry.path]),
        }

    def _done(self, entry: FileEntry) -> None:
        self.plan.offsets[entry.sha256] = entry.size
        self._sent.add(entry.sha256)

    def prepare(self) -> None:
        if self.unchanged or self._prepared:
            return
        missing = [e.path for e in self.needed if e.sha256 not in self._sent]
        if missing:
            raise TransportError(
                f"cannot prepare {self.ref}: {len(missing)} file(s) not sent ({missing[0]}, ...)",
                target=self.target,
                hint="send every file of session.needed before prepare/commit",
            )
        self._op(
            "prepare",
            manifest=self.plan.manifest_text,
            expected=[list(e) for e in self.plan.expected],
            links=[list(link) for link in self.plan.links],
            dir_mode=self.dir_mode,
            file_mode=self.file_mode,
        )
        self._prepared = True

    def commit(self) -> CommitInfo:
        details: dict[str, object] = {"unchanged": self.unchanged}
        if not self.unchanged:
            self.prepare()
            out = self._op("commit")
            details["swap"] = out.get("how")
            details["linked"] = len(self.plan.links)
        location, path = self._location()
        return CommitInfo(location=location, path=path, details=details)

    def abort(self) -> None:
        self._op("abort")


# ---- the transport ----------------------------------------------------------------------
class FilesystemTransport(Transport):
    """A models directory on this machine (``method`` "filesystem" or "nfs")."""

    def __init__(
        self,
        root: Path,
        *,
        dir_mode: int | None = None,
        file_mode: int | None = None,
        method: str = "filesystem",
        name: str | None = None,
        instance_root: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self.method = method
        self.name = name or str(self.root)
        # the models dir as the instance sees it (an NFS mount may differ from ours)
        self.instance_root = instance_root or str(self.root)

    @classmethod
    def from_target(cls, target: InstanceTarget) -> Self:
        """``storage_path`` is a local path, or an ``nfs://``/``file://`` URL of a share
        mounted here (found through :mod:`axon.mounts`)."""
        location = target.storage_path or DEFAULT_ROOT
        root = Path(location)
        if location.startswith(("nfs://", "file://")):
            from axon.mounts import resolve_location

            root = resolve_location(location, target=target.name)
        return cls(
            root,
            dir_mode=target.dir_mode,
            file_mode=target.file_mode,
            method="nfs" if target.access_method == "nfs" else "filesystem",
            name=target.name,
        )

    def describe(self) -> str:
        return f"{self.method}://{self.root}" if self.method == "nfs" else str(self.root)

    def instance_path(self, ref: ModelRef) -> str | None:
        return f"{self.instance_root.rstrip('/')}/{ref.relpath}"

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run a :mod:`stagedir` operation, translating its failures at this one boundary."""
        try:
            return fn(*args, **kw)
        except (OSError, StageError) as exc:
            raise translate(exc, target=self.name, root=str(self.root)) from exc

    def open(self, ref: ModelRef, manifest: Manifest) -> FilesystemSession:
        text = manifest.to_yaml()
        status = self.call(stagedir.status, str(self.root), str(ref.relpath), manifest_digest(text))
        return FilesystemSession(self, ref, plan_session(manifest, status, text))

    def fetch_manifest(self, ref: ModelRef) -> Manifest | None:
        status = self.call(stagedir.status, str(self.root), str(ref.relpath))
        text = status.get("manifest")
        if text is None:
            return None
        return Manifest.from_text(text, source=f"{self.describe()}/{ref.relpath}/manifest.yaml")


class FilesystemSession(StagedSession):
    """One publish of one model into a local models directory."""

    def __init__(self, transport: FilesystemTransport, ref: ModelRef, plan: StagePlan) -> None:
        super().__init__(
            ref,
            plan,
            target=transport.name,
            dir_mode=transport.dir_mode,
            file_mode=transport.file_mode,
        )
        self.t = transport
        self.rel = str(ref.relpath)

    def _op(self, op: str, **params: Any) -> dict[str, Any]:
        fn = getattr(stagedir, op)
        result: dict[str, Any] = self.t.call(
            fn, str(self.t.root), self.rel, self.plan.digest, **params
        )
        return result

    def _location(self) -> tuple[str, str | None]:
        return str(self.t.root / self.ref.relpath), self.t.instance_path(self.ref)

    def send(
        self,
        entry: FileEntry,
        source: Path,
        on_bytes: OnBytes = ignore_bytes,
        *,
        verified: FileKey | None = None,
    ) -> None:
        blob = self._blob(entry)
        with open(source, "rb", buffering=0) as fh:
            result = self.t.call(
                stagedir.receive,
                str(self.t.root),
                self.rel,
                self.plan.digest,
                blob,
                fh.readinto,  # unused: with src_fd the bytes are read at explicit offsets
                on_bytes,
                dir_mode=self.dir_mode,
                file_mode=self.file_mode,
                src_fd=fh.fileno(),
                src_key=list(verified) if verified is not None else None,
            )
        if not result["complete"]:
            self.plan.offsets[entry.sha256] = int(result["offset"])
            raise TransportError(
                f"{source} ended after {result['offset']} of {entry.size} bytes",
                target=self.t.name,
                path=str(source),
                hint="the cached file changed since it was hashed: run `axon verify` and retry",
            )
        self._done(entry)

    def abort(self) -> None:
        if os.path.isdir(self.t.root):
            super().abort()
