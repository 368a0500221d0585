"""The transport contract: how the bytes of one model get to one place.

A transport only moves bytes. It does not print (it reports through ``on_bytes``), read
config (it is built from a resolved target), or decide retries (the publish orchestrator
in :mod:`axon.publish` does, by opening a new session which resumes). Each transport
translates its backend's exceptions into :mod:`axon.errors` at one boundary.

Life of a publish on one target::

    session = transport.open(ref, manifest)      # what does the target already have?
    for entry in session.needed:                 # only what is missing
        session.send(entry, local_path, on_bytes)  # resumes from session.offset(entry)
    # or many at once: session.send_many([Outgoing(entry, local_path), ...], on_bytes, on_file)
    session.prepare()                            # staged + verified, not visible yet
    info = session.commit()                      # visible in one atomic step
    # or session.abort() on any failure: nothing partial is ever visible

``open`` is cheap to call again after a failure: files fully sent before are not needed any
more, and a partly sent file resumes at ``offset``. Re-publishing an unchanged model yields
``session.unchanged`` true and nothing needed.

A transport is built from a resolved target, never from config: :meth:`Transport.from_target`
for an MLOS Core instance, :meth:`Transport.from_storage` for network storage. The registry in
:mod:`axon.transports` picks the class (by access method or storage scheme) and calls them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axon.errors import ConfigError
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from typing import Self

    from axon.targets import InstanceTarget, StorageTarget

FileKey = tuple[int, int, int, int, int]  # (dev, ino, size, mtime_ns, ctime_ns)


@dataclass
class CommitInfo:
    """Where the model became visible. ``path`` is the path *as the instance sees it*."""

    location: str  # human-readable: "ssh://mlos@host/var/lib/mlos/models/ns/name/v1"
    path: str | None = None  # instance-side directory, for POST /models/register
    registered: bool = False  # the target registered it itself (API upload)
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Outgoing:
    """One file for :meth:`Session.send_many`: the entry, the local file holding it, and the
    identity at which the caller verified it (see :meth:`Session.send`)."""

    entry: FileEntry
    source: Path
    verified: FileKey | None = None


class Session(ABC):
    """One attempt at publishing one model version to one place."""

    #: files (unique by sha256 for content-addressed targets) that must still be sent
    needed: list[FileEntry]
    #: True when the target already holds exactly this manifest: nothing to send
    unchanged: bool = False

    def offset(self, entry: FileEntry) -> int:
        """Bytes of ``entry`` already on the target (resume point). 0 by default."""
        return 0

    @abstractmethod
    def send(
        self,
        entry: FileEntry,
        source: Path,
        on_bytes: OnBytes = ignore_bytes,
        *,
        verified: FileKey | None = None,
    ) -> None:
        """Send ``source`` (the local file for ``entry``) from :meth:`offset` to its end.

        Must stream (bounded memory). Verifies size (and sha256 where the target can) before
        returning; raises :class:`axon.errors.TransportError` subclasses on failure.

        ``verified``: the identity (:func:`axon.hashing.file_key`) at which the caller
        checked ``source`` against ``entry.sha256`` just before. A local copy may then skip
        hashing the bytes again as long as the file keeps that identity; a transport whose
        bytes cross a network hashes them on the far side regardless.
        """

    def send_many(
        self,
        items: Sequence[Outgoing],
        on_bytes: OnBytes = ignore_bytes,
        on_file: Callable[[FileEntry], None] = lambda entry: None,
    ) -> None:
        """Send many files (each as :meth:`send` would), ``on_file(entry)`` once each one is
        on the target, verified. Raises at the first failure; the files reported before it
        are sent (a new session does not need them again).

        By default one :meth:`send` after another; a transport that can move many small
        files in one stream or request overrides it (the per-file round trip, commit or
        fsync is what many small files cost)."""
        for item in items:
            self.send(item.entry, item.source, on_bytes, verified=item.verified)
            on_file(item.entry)

    @abstractmethod
    def prepare(self) -> None:
        """Stage everything, verified, without making it visible (for ``--atomic``)."""

    @abstractmethod
    def commit(self) -> CommitInfo:
        """Make the staged model visible in one atomic step (calls :meth:`prepare` if needed)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything staged; the previous version stays as it was."""


class Transport(ABC):
    """A way of moving bytes to one place (a directory, an SSH host, an API, a bucket).

    A transport implements the builders for the targets it can reach: an instance
    (:meth:`from_target`), network storage (:meth:`from_storage`), or both. The default
    builder refuses with a :class:`~axon.errors.ConfigError`: the target names an access
    method or storage scheme this transport does not serve.
    """

    #: "filesystem", "nfs", "ssh", "api", "s3" ...
    method: str = "abstract"

    @classmethod
    def from_target(cls, target: InstanceTarget) -> Self:
        """The transport reaching MLOS Core instance ``target`` (by its ``access_method``)."""
        raise ConfigError(
            f"access method {target.access_method!r} cannot publish to an instance",
            key="access_method",
            target=target.name,
            hint="publish there through a network_storage target instead",
        )

    @classmethod
    def from_storage(cls, target: StorageTarget, tuning: Mapping[str, Any] | None = None) -> Self:
        """The transport writing network storage ``target`` (by its ``scheme``).

        ``tuning``: settings of this kind of storage by field name (e.g. S3 part sizes);
        a transport with nothing to tune ignores it.
        """
        raise ConfigError(
            f"{cls.method} cannot write {target.scheme}:// network storage",
            key="storage_path",
            target=target.name,
            hint="network storage is a directory, file://, nfs://server/export or s3://bucket",
        )

    @abstractmethod
    def describe(self) -> str:
        """Where this transport writes, for messages (``ssh://mlos@host/var/lib/mlos/models``)."""

    @abstractmethod
    def open(self, ref: ModelRef, manifest: Manifest) -> Session:
        """Start (or resume) publishing ``ref``; ``manifest`` is strict (real sizes, sha256)."""

    @abstractmethod
    def fetch_manifest(self, ref: ModelRef) -> Manifest | None:
        """The manifest of ``ref`` as published on the target now, or None if absent."""

    def matches(self, ref: ModelRef, manifest: Manifest) -> bool | None:
        """Does the target hold exactly ``manifest`` for ``ref``? For targets that may not
        hand their manifest out (an older MLOS Core answers through an upload's
        ``unchanged``). None: this target is compared by :meth:`fetch_manifest` only."""
        return None

    def missing_content(self, manifest: Manifest, remote: Manifest | None) -> set[str]:
        """The sha256s of ``manifest``'s files the target lacks, given ``remote``, the
        manifest it holds for this model. A directory holds what ``remote`` lists; a
        content-addressed store (S3) overrides this to ask for each blob."""
        have = {f.sha256 for f in remote.files} if remote is not None else set()
        return {f.sha256 for f in manifest.files} - have

    def location(self, ref: ModelRef) -> str:
        """Where ``ref`` is once published, for messages and results."""
        where = self.describe().rstrip("/")
        return f"{where}/{ref.relpath}" if self.instance_path(ref) else where

    def instance_path(self, ref: ModelRef) -> str | None:
        """The model directory as the instance sees it (for register), if it has one."""
        return None

    def connect_early(self) -> None:  # noqa: B027 - optional hook
        """Start connecting in the background (an SSH login takes a few hundred ms), so it
        overlaps with the caller's local work. Never raises: a failure shows at first use."""

    def close(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release connections. Transports are also context managers."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
