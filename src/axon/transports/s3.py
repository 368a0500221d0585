"""Publish to S3 and S3-compatible object stores: content-addressed blobs, the manifest as
the commit point (the layout and the shared bucket reader/writer are :mod:`modelpkg.s3`).

Serves network storage given as ``s3://bucket/prefix`` (not an instance: an MLOS Core
instance reading the bucket pulls what is published there). boto3 is needed
(``pip install 'axon-publish[s3]'``); the registry in :mod:`axon.transports` says so when
it is missing.

A publish uploads the blobs the bucket lacks (HEAD each first: dedupe across files, versions
and models), then writes ``manifest.yaml`` last, in one PUT. S3 has no rename, but a single
PUT is atomic: a reader that lists ``*/manifest.yaml`` sees either no version, the old
manifest or the new one, and every blob a manifest names is already complete. No per-path
objects are written: they would be visible before the commit and be overwritten in place
under a reader of the previous version. A publish never deletes a blob, so a reader still
fetching the previous version is never broken mid-read (garbage collection of unreferenced
blobs is a separate, explicit operation, not done by publish).

Integrity: a small file is sent in one PUT carrying its sha256 (``ChecksumSHA256``), which
the store checks. A large file goes up as a parallel multipart upload: each worker reads its
own part (``pread``) and sends it with a part checksum (``ChecksumCRC32`` by default, as
boto3 and the AWS CLI do; ``part_checksum="SHA256"`` for ``ChecksumSHA256``), while one
thread hashes the whole file with sha256; at most ``max_concurrency`` parts are in memory.
The upload is completed only if that sha256 matches the manifest, else aborted: CRC32 per
part catches transfer damage cheaply, the one sha256 pass makes a blob's name trustworthy.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from axon.errors import TransportError
from axon.transports.base import CommitInfo, FileKey, Session, Transport
from axon.transports.s3_multipart import MultipartUpload, check_content
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef
from modelpkg.s3 import S3Access, S3Settings, S3Store, hex_to_b64

if TYPE_CHECKING:
    from typing import Self

    from axon.targets import StorageTarget


def put_small(
    store: S3Store, entry: FileEntry, source: Path, on_bytes: OnBytes = ignore_bytes
) -> None:
    """Blob ``entry.sha256`` in one PUT, carrying the sha256 the store checks (small files:
    ``size < multipart_threshold``)."""
    with open(source, "rb") as fh:
        data = fh.read(entry.size + 1)
    check_content(store, entry, source, len(data), hashlib.sha256(data).hexdigest())
    store.call(
        "put_object",
        key=store.blob_key(entry.sha256),
        Body=data,
        ChecksumSHA256=hex_to_b64(entry.sha256),
    )
    on_bytes(len(data))


def put_multipart(
    store: S3Store, entry: FileEntry, source: Path, on_bytes: OnBytes = ignore_bytes
) -> None:
    """Parallel multipart upload of ``source`` as blob ``entry.sha256``, bounded memory."""
    key = store.blob_key(entry.sha256)
    algorithm = store.settings.part_checksum
    upload_id = store.call("create_multipart_upload", key=key, ChecksumAlgorithm=algorithm)[
        "UploadId"
    ]
    try:
        parts = MultipartUpload(store, key, upload_id, entry, source, on_bytes).run()
        store.call(
            "complete_multipart_upload",
            key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        # best effort: the original error is the one worth reporting
        with contextlib.suppress(Exception):
            store.call("abort_multipart_upload", key=key, UploadId=upload_id)
        raise


class S3Session(Session):
    """Blobs the bucket lacks are ``needed``; :meth:`commit` writes the manifest."""

    def __init__(self, transport: S3Transport, ref: ModelRef, manifest: Manifest) -> None:
        self.transport = transport
        self.store = transport.store
        self.ref = ref
        self.manifest = manifest
        self.prepared = False
        current = self.store.read_manifest(ref)
        self.unchanged = current is not None and current.data == manifest.data
        unique: dict[str, FileEntry] = {}
        for entry in manifest.files:
            unique.setdefault(entry.sha256, entry)
        self.blobs = list(unique.values())
        self.needed = [] if self.unchanged else self._missing(self.blobs)
        self._sent: set[str] = set()

    def _missing(self, blobs: list[FileEntry]) -> list[FileEntry]:
        if not blobs:
            return []
        workers = min(len(blobs), self.store.settings.max_concurrency)
        with ThreadPoolExecutor(workers, thread_name_prefix="axon-s3-head") as pool:
            present = list(pool.map(self.store.has_blob, blobs))
        return [b for b, have in zip(blobs, present, strict=True) if not have]

    def send(
        self,
        entry: FileEntry,
        source: Path,
        on_bytes: OnBytes = ignore_bytes,
        *,
        verified: FileKey | None = None,
    ) -> None:
        if entry.size >= self.store.settings.multipart_threshold:
            put_multipart(self.store, entry, source, on_bytes)
        else:
            put_small(self.store, entry, source, on_bytes)
        self._sent.add(entry.sha256)

    def prepare(self) -> None:
        """Check every blob the manifest names is in the bucket, complete: the ones sent
        here were checked as they were written; the ones found at open are asked again
        (another client may have removed one since). Nothing to check when unchanged."""
        if self.prepared or self.unchanged:
            self.prepared = True
            return
        unsent = [b for b in self.needed if b.sha256 not in self._sent]
        needed = {b.sha256 for b in self.needed}
        missing = unsent + self._missing([b for b in self.blobs if b.sha256 not in needed])
        if missing:
            raise TransportError(
                f"cannot commit {self.ref}: {len(missing)} file(s) not in {self.store.url} "
                f"({missing[0].path}, ...)",
                target=self.store.url,
                hint="send every file of session.needed before prepare/commit",
            )
        self.prepared = True

    def commit(self) -> CommitInfo:
        if not self.prepared:
            self.prepare()
        key = self.store.manifest_key(self.ref)
        if not self.unchanged:  # the bucket holds exactly this manifest already
            self.store.put_bytes(key, self.manifest.to_yaml().encode("utf-8"))
        return CommitInfo(
            location=f"s3://{self.store.bucket}/{key.rsplit('/', 1)[0]}",
            details={
                "manifest_key": key,
                "blobs": len(self.blobs),
                "bucket": self.store.bucket,
                "unchanged": self.unchanged,
            },
        )

    def abort(self) -> None:
        # Nothing to undo: blobs are content-addressed and harmless without a manifest.
        self.prepared = False


class S3Transport(Transport):
    """Publish to ``s3://bucket/prefix`` with the layout in the module docstring."""

    method = "s3"

    def __init__(
        self, url: str, *, settings: S3Settings | None = None, **access: Unpack[S3Access]
    ) -> None:
        self.store = S3Store.from_url(url, settings=settings, **access)

    @classmethod
    def from_storage(cls, target: StorageTarget, tuning: Mapping[str, Any] | None = None) -> Self:
        """``tuning``: :class:`~modelpkg.s3.S3Settings` fields (multipart threshold, part
        size, concurrency, part checksum); the rest of the defaults stay."""
        return cls(
            target.location,
            endpoint_url=target.endpoint_url,
            region=target.region,
            profile=target.profile,
            settings=S3Settings(**(tuning or {})),
        )

    def describe(self) -> str:
        return self.store.describe()

    def open(self, ref: ModelRef, manifest: Manifest) -> S3Session:
        self.store.check_bucket()
        return S3Session(self, ref, manifest)

    def missing_content(self, manifest: Manifest, remote: Manifest | None) -> set[str]:
        """Blobs are shared by every model and version in the bucket: ask for each."""
        return {f.sha256 for f in manifest.files if not self.store.has_blob(f)}

    def fetch_manifest(self, ref: ModelRef) -> Manifest | None:
        return self.store.read_manifest(ref)

    def close(self) -> None:
        self.store.close()
