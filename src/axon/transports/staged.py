"""The client half of the staged-directory protocol, shared by the filesystem and SSH transports.

:mod:`axon.transports.stagedir` does the work where the models directory is (in this
process for a local or NFS directory, on the host for SSH); this module decides what to ask
of it and reads its answers, so both transports behave the same:

* :func:`plan_session`: from the target's ``status``, the files to send (one per missing
  sha256, resuming at the bytes already there), the ones to hard-link from the current
  version, or that the target already holds this manifest;
* :class:`StagedTransport`: opening a session and reading the published manifest, both from
  the target's ``status``; a subclass says how ``status`` reaches ``stagedir``;
* :class:`StagedSession`: the :class:`~axon.transports.base.Session` over those operations
  (bookkeeping of what was sent, prepare, commit, abort); a subclass says how one operation
  reaches ``stagedir`` and moves the bytes;
* :func:`translate` and :func:`error_from_code`: a ``stagedir`` failure (an OSError or
  :class:`~axon.transports.blobcopy.StageError` here, an error code from an SSH host) as
  one of :mod:`axon.errors`, naming the path, the host and what to do next.
"""

from __future__ import annotations

import errno
import hashlib
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from axon.errors import (
    AxonError,
    NoSpaceError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
    TransportError,
    retryable,
)
from axon.transports.base import CommitInfo, Session, Transport
from axon.transports.blobcopy import StageError
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.refs import ModelRef

_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


# ---- planning -----------------------------------------------------------------------------
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
    # sha256 -> files of a current version no trusted manifest vouches for that may hold
    # it (same path, same size): hashed on the target before any is used (``adopt``)
    candidates: dict[str, list[str]] = field(default_factory=dict)


def manifest_digest(text: str) -> str:
    """The sha256 of a manifest's text: it names the staging dir, so a retry finds it."""
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
    held = status.get("manifest")
    # the text this publish would write: the same manifest, without parsing it (thousands of
    # files make a parse cost more than the rest of an unchanged re-publish)
    current = None if held == text else _current_manifest(held)
    same = held == text or (current is not None and current.data == manifest.data)
    # the same manifest, and nothing else in the directory (see _written_by_a_publish): a
    # copy another tool made, bookkeeping and all, is rewritten once, its files hashed
    if same and len(on_disk) == len(files) and all(on_disk.get(f.path) == f.size for f in files):
        plan.unchanged = True
        return plan
    if held == text:
        current = _current_manifest(held)
    reusable: dict[str, str] = {}
    trusted = _written_by_a_publish(current, on_disk)
    for f in current.files if current is not None and trusted else []:
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
        if not trusted and on_disk.get(f.path) == f.size:
            plan.candidates.setdefault(f.sha256, []).append(f.path)
    return plan


def _written_by_a_publish(current: Manifest | None, on_disk: dict[str, int]) -> bool:
    """Whether the current version is one a publish wrote (axon's, or mlos-core's): a
    manifest that gives every file's size and sha256, and nothing else in the directory.
    Its files are then taken for what the manifest says (published files are immutable by
    convention). Anything else was put there another way: the upstream Go axon copies the
    whole cache dir (``.axon_metadata.json``, the ``.axon`` package, a manifest with sizes
    0 and no sha256) into place, file by file; such files are only used once hashed."""
    if current is None or not all(f.known for f in current.files):
        return False
    return len(on_disk) == len(current.files) and all(
        on_disk.get(f.path) is not None for f in current.files
    )


# ---- errors -------------------------------------------------------------------------------
def translate(exc: BaseException, *, target: str, root: str) -> AxonError:
    """Turn an OSError or :class:`StageError` raised in this process into our errors."""
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


# StageError code -> (text between message and path, hint, whether a new attempt can help)
_PROTOCOL_ERRORS = {
    "checksum_mismatch": (
        " at ",
        "the partial data was dropped; publish again (did the cached file change?)",
        True,
    ),
    "source_changed": (
        ": ",
        "a cached file changed during the publish: run `axon verify`, then publish again",
        False,
    ),
    "busy": (": ", "another publish of this model may be running; wait for it, then retry", True),
}
_PROTOCOL_ERRORS["offset_mismatch"] = _PROTOCOL_ERRORS["busy"]


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
    """Our error for a :mod:`stagedir` failure; ``host`` ("user@host:port") when remote.

    ``code`` is ``"oserror"`` (then ``err`` is its errno) or a :class:`StageError` code.
    """
    where = path or root
    on = f" on {host}" if host else ""
    if code == "oserror":
        return _os_error(message, err, where, on, target=target, root=root)
    if code == "overlap":
        return _overlap(message, path or "", root, on, target=target)
    known = _PROTOCOL_ERRORS.get(code)
    if known is None:
        return TransportError(f"{message} at {where}{on}", target=target, path=where)
    between, hint, again = known
    error = TransportError(f"{message}{between}{where}{on}", target=target, path=where, hint=hint)
    return retryable(error, again)


def _overlap(rel: str, other: str, root: str, on: str, *, target: str) -> AxonError:
    """The target holds a model (``other``) whose directory nests with that of the model
    being published (``rel``; both relative to ``root``): refused by the target, and no
    retry changes that."""
    model, named = _model_name(rel), _model_name(other)
    if len(other) < len(rel):
        clash = f"is inside that of {named}: publishing would write into that model"
    else:
        clash = f"holds {named}: publishing would replace that model"
    error = RemoteError(
        f"refusing to publish {model}: its directory {root.rstrip('/')}/{rel}{on} {clash}",
        target=target,
        path=f"{root.rstrip('/')}/{other}",
        hint=f"publish it under another name, or remove {named} from the target first",
    )
    return retryable(error, False)


def _model_name(rel: str) -> str:
    """``ns/name@version`` for a model directory relative to a models root."""
    try:
        return str(ModelRef.from_parts(rel.split("/")))
    except AxonError:
        return rel


def _os_error(
    message: str, err: int | None, where: str, on: str, *, target: str, root: str
) -> AxonError:
    """An OSError of ``stagedir`` at ``where`` (``on``: " on host", or "")."""
    if err in _PERMISSION:
        return TargetPermissionError(
            f"permission denied writing {where}{on} ({message})",
            target=target,
            path=where,
            hint=f"give the publishing user write access to {root}{on}, or publish through the API",
        )
    if err in _NO_SPACE:
        return NoSpaceError(
            f"no space left writing {where}{on}",
            target=target,
            path=where,
            hint=f"free space on the filesystem of {root}{on} (staging needs the model's size)",
        )
    if err == errno.ENOENT and where == root:
        missing = TargetUnreachableError(
            f"models directory {root}{on} does not exist",
            target=target,
            path=root,
            hint="create it, fix storage_path in ~/.axon/config.yaml, or mount the NFS share",
        )
        return retryable(missing, False)
    return TransportError(f"{message} at {where}{on}", target=target, path=where)


# ---- the transport and its session -------------------------------------------------------
class StagedTransport(Transport):
    """A transport to a models directory run by :mod:`stagedir`, here or on a host.

    Opening a session and reading the published manifest both start from the target's
    ``status``; a subclass says how that reaches ``stagedir`` (:meth:`_status`) and which
    session drives the rest (:meth:`_session`).
    """

    name: str
    dir_mode: int | None
    file_mode: int | None

    @abstractmethod
    def _status(self, ref: ModelRef, digest: str = "") -> dict[str, Any]:
        """``stagedir.status`` of ``ref`` (``digest``: of the manifest about to be staged)."""

    @abstractmethod
    def _session(self, ref: ModelRef, plan: StagePlan) -> StagedSession[Any]:
        """The session that carries out ``plan`` for ``ref``."""

    def open(self, ref: ModelRef, manifest: Manifest) -> StagedSession[Any]:
        text = manifest.to_yaml()
        status = self._status(ref, manifest_digest(text))
        session = self._session(ref, plan_session(manifest, status, text))
        if session.plan.candidates:
            session.adopt()
        return session

    def fetch_manifest(self, ref: ModelRef) -> Manifest | None:
        text = self._status(ref).get("manifest")
        if text is None:
            return None
        return Manifest.from_text(text, source=f"{self.describe()}/{ref.relpath}/manifest.yaml")


T = TypeVar("T", bound=StagedTransport)


class StagedSession(Session, Generic[T]):
    """One publish of one model through the staged-directory protocol, here or remote.

    Planning, bookkeeping, prepare, commit and abort are the same wherever :mod:`stagedir`
    runs; a subclass says how an operation reaches it (:meth:`_op`), where the model lands
    (:meth:`_location`), and moves the bytes (:meth:`send`, recording each with
    :meth:`_done`). ``t`` is the transport that opened it.
    """

    def __init__(self, transport: T, ref: ModelRef, plan: StagePlan) -> None:
        self.t = transport
        self.ref = ref
        self.rel = str(ref.relpath)
        self.plan = plan
        self.needed = list(plan.needed)
        self.unchanged = plan.unchanged
        self.target = transport.name
        self.dir_mode = transport.dir_mode
        self.file_mode = transport.file_mode
        self._sent: set[str] = set()
        self._prepared = False
        self.adopted = 0  # blobs found on the target, hashed there, not sent (``adopt``)

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

    def adopt(self) -> None:
        """Have the target hash the files the plan's ``candidates`` name and use those that
        match instead of sending them (:func:`stagedir.adopt`); the others stay needed."""
        blobs = [
            {
                "sha256": e.sha256,
                "size": e.size,
                "paths": self.plan.paths.get(e.sha256, [e.path]),
                "from": self.plan.candidates[e.sha256],
            }
            for e in self.needed
            if e.sha256 in self.plan.candidates
        ]
        if not blobs:
            return
        out = self._op("adopt", blobs=blobs, dir_mode=self.dir_mode, file_mode=self.file_mode)
        asked = {b["sha256"] for b in blobs}
        done = {str(sha) for sha in out.get("adopted") or ()} & asked
        self.adopted = len(done)
        self.needed = [e for e in self.needed if e.sha256 not in done]
        self.plan.needed = [e for e in self.plan.needed if e.sha256 not in done]

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
            details["adopted"] = self.adopted
        location, path = self._location()
        return CommitInfo(location=location, path=path, details=details)

    def abort(self) -> None:
        self._op("abort")
