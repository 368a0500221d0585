"""Publish to a directory on this machine: a local models dir, an NFS mount, a shared dir.

Serves instances whose ``access_method`` is ``filesystem`` or ``nfs``, and network storage
given as a path, ``file://`` or ``nfs://`` URL (an ``nfs://`` share must be mounted here:
:mod:`axon.mounts` finds where). The model lands at ``<root>/<ns>/<name>/<version>/``
through the staged-directory protocol (:mod:`axon.transports.stagedir`, driven by
:mod:`axon.transports.staged`): a deterministic staging dir next to the final one, resume by
offset, hash while writing, fsync, one atomic swap. A source file the caller has just
verified (``send(..., verified=identity)``: its sha256 checked at that inode, size, mtime and
ctime) is copied by the kernel without hashing it again, as long as it keeps that identity
before and after the copy. Files the current version already holds with the same sha256 (and
a matching size on disk) are hard-linked into the new version, not copied (published files
are immutable by convention: nothing ever rewrites one in place); re-publishing an unchanged
model writes nothing. A version some other tool put there (the upstream Go axon's publish
copies its cache dir into place: bookkeeping files, a manifest without sha256s) is not taken
at its word: a file at the same path with the same size is hashed where it lies and used
only when it matches (``stagedir.adopt``), so a publish after an upstream one sends nothing
that is already there.

On NFS the same protocol holds: hard links and renames are atomic on the server, but most
servers refuse ``RENAME_EXCHANGE``, so replacing a version there uses rename-aside +
rename-in (the path is absent for microseconds, never partial). Two publishes of the same
manifest share a staging dir; the partial file being written is locked, so they cannot
interleave bytes (the second waits or fails with a retryable "busy").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axon.errors import TransportError
from axon.transports import stagedir
from axon.transports.base import FileKey
from axon.transports.blobcopy import StageError
from axon.transports.staged import StagedSession, StagedTransport, StagePlan, translate
from modelpkg.layout import DEFAULT_MODELS_DIR
from modelpkg.manifest import FileEntry
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from typing import Self

    from axon.targets import InstanceTarget, StorageTarget


class FilesystemTransport(StagedTransport):
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
        location = target.storage_path or DEFAULT_MODELS_DIR
        root = Path(location)
        if location.startswith(("nfs://", "file://")):
            # imported only here: a plain local path (the common case) starts up without it
            from axon.mounts import resolve_location

            root = resolve_location(location, target=target.name)
        return cls(
            root,
            dir_mode=target.dir_mode,
            file_mode=target.file_mode,
            method="nfs" if target.access_method == "nfs" else "filesystem",
            name=target.name,
        )

    @classmethod
    def from_storage(cls, target: StorageTarget, tuning: Mapping[str, Any] | None = None) -> Self:
        """A shared directory, ``file://`` URL or ``nfs://`` share written through its mount
        here (``mount_path`` when configured); a directory has nothing to tune."""
        from axon.mounts import resolve_location

        root = resolve_location(target.location, mount_path=target.mount_path, target=target.name)
        method = "nfs" if target.scheme == "nfs" else "filesystem"
        return cls(root, method=method, name=target.name)

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

    def _status(self, ref: ModelRef, digest: str = "") -> dict[str, Any]:
        status: dict[str, Any] = self.call(
            stagedir.status, str(self.root), str(ref.relpath), digest
        )
        return status

    def _session(self, ref: ModelRef, plan: StagePlan) -> FilesystemSession:
        return FilesystemSession(self, ref, plan)


class FilesystemSession(StagedSession[FilesystemTransport]):
    """One publish of one model into a local models directory."""

    def _op(self, op: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.t.call(
            stagedir.OPERATIONS[op], str(self.t.root), self.rel, self.plan.digest, **params
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
                durable=False,  # prepare makes every file durable at once
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
