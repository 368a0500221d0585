"""The S3 object layout, and a bucket + prefix read and written with it.

Layout under ``s3://<bucket>/<prefix>/`` (drawn with the rest in :mod:`modelpkg.layout`)::

    <prefix>/
    ├── .blobs/sha256/<hex>                      file contents, named by their sha256
    │                                            (immutable; shared by every model/version)
    └── <ns>/<name...>/<version>/manifest.yaml   the version: a strict manifest whose files
                                                 name their blobs by sha256 (the COMMIT POINT)

A writer (axon's S3 transport) uploads the blobs the bucket lacks, then writes
``manifest.yaml`` last, in one PUT: a single PUT is atomic, so a reader that lists
``*/manifest.yaml`` (mlos-core's S3 sync) sees either no version, the old manifest or the
new one, and every blob a manifest names is already complete. Nothing here deletes a blob.

:class:`S3Store` is what both sides share: the keys, the client, reads (every blob read is
checked against its name) and one translation of botocore's exceptions into ours, naming
the bucket and key and what to do next. boto3 is imported lazily
(``pip install 'axon-publish[s3]'``). Credentials come from the standard AWS chain (env,
``~/.aws``, ``profile``, instance roles); ``endpoint_url`` and ``region`` select an
S3-compatible store.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import urlparse

from modelpkg.errors import (
    AuthenticationError,
    BucketNotFoundError,
    ConfigError,
    IntegrityError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
    TransportError,
)
from modelpkg.layout import MANIFEST_NAME, S3_BLOBS
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

MiB = 1024 * 1024
INSTALL_HINT = "S3 targets need boto3: pip install 'axon-publish[s3]'"
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (prefix without slashes)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(
            f"not an S3 URL: {url!r}", hint="use s3://bucket/prefix, e.g. s3://mlos-models/models"
        )
    return parsed.netloc, parsed.path.strip("/")


class S3Access(TypedDict, total=False):
    """How to reach a bucket besides its URL, as the writer (axon) and a reading instance
    (mlos-core) are both given it: ``endpoint_url`` and ``region`` select an S3-compatible
    store, ``profile`` the AWS credentials; None or absent: the AWS defaults."""

    endpoint_url: str | None
    region: str | None
    profile: str | None


@dataclass
class S3Settings:
    """Tuning: files of ``multipart_threshold`` bytes or more go up in ``part_size`` parts,
    ``max_concurrency`` at a time (memory: about ``(max_concurrency + 1) * part_size``)."""

    # 8 MiB parts x 8 in flight: as fast as boto3's 10 against a local store (1 GiB, moto:
    # 14.7-21.6 s against 17.9-24.1 s), and the command's peak RSS 145 MB instead of 159 MB.
    # The whole file is never in memory: about 72 MiB at most per large file.
    multipart_threshold: int = 16 * MiB
    part_size: int = 8 * MiB
    max_concurrency: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3  # botocore's own retries of one request (the publish retries too)
    part_checksum: str = "CRC32"  # or "SHA256": the checksum each multipart part carries

    def __post_init__(self) -> None:
        if self.part_checksum not in ("CRC32", "SHA256"):
            raise ConfigError(
                f"unsupported S3 part checksum {self.part_checksum!r}", hint="use CRC32 or SHA256"
            )

    def part_size_for(self, size: int) -> int:
        # S3 allows at most 10,000 parts per upload and at least 5 MiB per part.
        part = max(self.part_size, 5 * MiB, -(-size // 10_000))
        return part


class S3Store:
    """A bucket + prefix with our layout: key helpers, reads, writes; errors translated."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        settings: S3Settings | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.settings = settings or S3Settings()
        self._client = client
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls, url: str, *, settings: S3Settings | None = None, **access: Unpack[S3Access]
    ) -> S3Store:
        """The store at ``s3://bucket/prefix`` (ConfigError for another URL)."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, settings=settings, **access)

    # ---- naming --------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def blob_key(self, sha256: str) -> str:
        return self.key(S3_BLOBS, sha256)

    def manifest_key(self, ref: ModelRef) -> str:
        return self.key(str(ref.relpath), MANIFEST_NAME)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.url}{where}"

    # ---- the client ----------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def close(self) -> None:
        """Close the client's connections, if a client was made (never making one to close)."""
        client = self._client
        if client is not None:
            client.close()

    def _make_client(self) -> Any:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise TransportError(
                "boto3 is not installed", target=self.url, hint=INSTALL_HINT
            ) from exc
        s = self.settings
        config = botocore.config.Config(
            max_pool_connections=s.max_concurrency + 4,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retries={"mode": "standard", "max_attempts": s.max_attempts},
            # every write carries its own checksum, so the payload need not be hashed a
            # second time for the signature (botocore otherwise does so over plain http)
            s3={"payload_signing_enabled": False},
        )
        try:
            session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
        except botocore.exceptions.ProfileNotFound as exc:
            raise AuthenticationError(
                f"AWS profile {self.profile!r} not found",
                target=self.url,
                hint="add it to ~/.aws/config, or fix the target's 'profile' key",
            ) from exc
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def translate(self, exc: Exception, *, key: str | None = None) -> Exception:
        """Turn a botocore exception into an axon error naming bucket/key and what next."""
        import botocore.exceptions as bx

        where = f"s3://{self.bucket}/{key}" if key else self.url
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return AuthenticationError(
                f"no usable AWS credentials for {self.url}",
                target=self.url,
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, or the "
                "target's 'profile'",
            )
        if isinstance(
            exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ProxyConnectionError
        ):
            return TargetUnreachableError(
                f"cannot connect to the S3 endpoint {self.endpoint_url or 'AWS'}: {exc}",
                target=self.url,
                url=self.endpoint_url,
                hint="check endpoint_url in the target config and that the store is running",
            )
        if isinstance(exc, bx.ReadTimeoutError | bx.ConnectionClosedError | bx.HTTPClientError):
            return TargetUnreachableError(
                f"connection to the S3 endpoint lost while writing {where}: {exc}",
                target=self.url,
                url=self.endpoint_url,
                hint="retry; the publish resumes with what is already uploaded",
            )
        if isinstance(exc, bx.ClientError):
            return self._translate_client_error(exc, where)
        if isinstance(exc, bx.BotoCoreError):
            return TransportError(f"S3 error on {where}: {exc}", target=self.url)
        return exc

    def _translate_client_error(self, exc: Any, where: str) -> Exception:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = err.get("Message") or code
        if code in _AUTH_CODES:
            return AuthenticationError(
                f"S3 refused the credentials for {self.url} ({code}: {msg})",
                target=self.url,
                status=status,
                hint="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the target's 'profile'",
            )
        if code in _MISSING_BUCKET_CODES or (code in ("404", "NotFound") and where == self.url):
            return BucketNotFoundError(
                f"bucket {self.bucket!r} does not exist"
                + (f" at {self.endpoint_url}" if self.endpoint_url else ""),
                target=self.url,
                status=404,
                hint=f"create it (aws s3 mb s3://{self.bucket}) or fix the bucket in the "
                "target URL",
            )
        if code in _DENIED_CODES:
            return TargetPermissionError(
                f"S3 denied access to {where} ({code}: {msg})",
                target=self.url,
                status=status,
                hint="the credentials need s3:GetObject, s3:PutObject and s3:ListBucket on "
                f"{self.bucket}",
            )
        return RemoteError(f"S3 error on {where}: {code}: {msg}", target=self.url, status=status)

    def call(self, op: str, *, key: str | None = None, **kw: Any) -> Any:
        """``client.<op>(Bucket=..., **kw)`` with errors translated."""
        try:
            return getattr(self.client, op)(
                Bucket=self.bucket, **({"Key": key} if key else {}), **kw
            )
        except Exception as exc:
            translated = self.translate(exc, key=key)
            if translated is exc:
                raise
            raise translated from exc

    # ---- reads ---------------------------------------------------------------------
    def check_bucket(self) -> None:
        """Raise a clear error when the bucket is missing or the credentials are refused.

        A GET, not HEAD: a HEAD error has no body, so a bad key and a denied one look alike.
        """
        self.call("list_objects_v2", Prefix=self.key(), MaxKeys=1)

    def head(self, key: str) -> dict[str, Any] | None:
        """HEAD ``key``: its metadata, or None when absent."""
        try:
            return dict(self.call("head_object", key=key))
        except RemoteError as exc:
            if exc.status == 404 and not isinstance(exc, BucketNotFoundError):
                return None
            raise

    def has_blob(self, entry: FileEntry) -> bool:
        meta = self.head(self.blob_key(entry.sha256))
        return meta is not None and int(meta.get("ContentLength", -1)) == entry.size

    def read_manifest(self, ref: ModelRef) -> Manifest | None:
        key = self.manifest_key(ref)
        try:
            body = self.call("get_object", key=key)["Body"].read()
        except RemoteError as exc:
            if exc.status == 404 and not isinstance(exc, BucketNotFoundError):
                return None
            raise
        return Manifest.from_text(body, source=f"s3://{self.bucket}/{key}")

    def list_models(self) -> list[ModelRef]:
        """Every committed version (one whose manifest.yaml exists), sorted."""
        refs: list[ModelRef] = []
        for key in self._list_keys(self.key()):
            rel = key[len(self.prefix) + 1 :] if self.prefix else key
            parts = rel.split("/")
            if parts[-1] != MANIFEST_NAME or parts[0].startswith(".") or len(parts) < 4:
                continue
            try:
                refs.append(ModelRef.from_parts(parts[:-1]))
            except ValueError:
                continue  # not one of ours
        return sorted(refs)

    def _list_keys(self, prefix: str) -> Iterator[str]:
        token: dict[str, str] = {}
        start = f"{prefix}/" if prefix else ""
        while True:
            page = self.call("list_objects_v2", Prefix=start, **token)
            for item in page.get("Contents", []):
                yield str(item["Key"])
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def download_blob(self, entry: FileEntry, dest: Path, on_bytes: OnBytes = ignore_bytes) -> None:
        """Stream blob ``entry.sha256`` into ``dest``; raise IntegrityError on a mismatch."""
        key = self.blob_key(entry.sha256)
        body = self.call("get_object", key=key)["Body"]
        h = hashlib.sha256()
        size = 0
        try:
            with open(dest, "wb") as fh:
                for chunk in body.iter_chunks(chunk_size=4 * MiB):
                    h.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
                    on_bytes(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        except Exception as exc:
            translated = self.translate(exc, key=key)
            if translated is exc:
                raise
            raise translated from exc
        if size != entry.size or h.hexdigest() != entry.sha256:
            raise IntegrityError(
                f"blob s3://{self.bucket}/{key} does not match its name "
                f"({size} bytes, sha256 {h.hexdigest()[:12]}...)",
                target=self.url,
                path=entry.path,
                hint="the object was modified in the bucket; re-publish the model",
            )

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/yaml") -> None:
        self.call(
            "put_object",
            key=key,
            Body=data,
            ChecksumSHA256=b64_sha256(data),
            ContentType=content_type,
        )


def b64_sha256(data: bytes | memoryview) -> str:
    """The base64 sha256 S3 wants in ``ChecksumSHA256``."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def hex_to_b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
