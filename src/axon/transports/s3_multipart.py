"""The parallel multipart upload of one large file to S3 (used by :mod:`axon.transports.s3`).

Each worker reads its own part (``pread``) and sends it with a part checksum; one more
thread hashes the whole file with sha256 meanwhile. :meth:`MultipartUpload.run` returns
the parts for ``CompleteMultipartUpload`` only when that sha256 matches the manifest, so a
content-addressed blob's name can be trusted. Memory: one part per worker.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpkg.errors import IntegrityError
from modelpkg.manifest import FileEntry
from modelpkg.progress import OnBytes
from modelpkg.s3 import b64_sha256

if TYPE_CHECKING:
    from modelpkg.s3 import S3Store

MiB = 1024 * 1024


def part_checksum(algorithm: str, data: bytes) -> str:
    """The base64 checksum S3 expects in ``Checksum<algorithm>`` (CRC32 or SHA256)."""
    if algorithm == "CRC32":
        return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")
    return b64_sha256(data)


def check_content(store: S3Store, entry: FileEntry, source: Path, size: int, sha256: str) -> None:
    """Refuse to write a blob whose source no longer matches what the manifest says."""
    if size != entry.size or sha256 != entry.sha256:
        raise IntegrityError(
            f"{source} changed since it was hashed ({size} bytes, sha256 {sha256[:12]}..., "
            f"manifest says {entry.size} bytes, {entry.sha256[:12]}...)",
            path=entry.path,
            target=store.url,
            hint="run `axon verify` and publish again",
        )


class MultipartUpload:
    """Workers each read (``pread``) and send their own parts; meanwhile one thread hashes
    the whole file in order. Memory: one part per worker. The hash is off the upload's
    critical path, and :meth:`run` returns the parts only when it matches the manifest."""

    def __init__(
        self,
        store: S3Store,
        key: str,
        upload_id: str,
        entry: FileEntry,
        source: Path,
        on_bytes: OnBytes,
    ) -> None:
        self.store, self.key, self.upload_id = store, key, upload_id
        self.entry, self.source, self.on_bytes = entry, source, on_bytes
        self.part_size = store.settings.part_size_for(entry.size)
        self.workers = store.settings.max_concurrency
        self.failed = threading.Event()

    def _upload(self, fd: int, number: int) -> dict[str, Any]:
        if self.failed.is_set():  # another part failed: do not start new ones
            raise _Skipped
        try:
            data = os.pread(fd, self.part_size, (number - 1) * self.part_size)
            algorithm = self.store.settings.part_checksum
            checksum = part_checksum(algorithm, data)
            answer = self.store.call(
                "upload_part",
                key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                **{f"Checksum{algorithm}": checksum},
            )
            self.on_bytes(len(data))
        except BaseException:
            self.failed.set()
            raise
        return {"PartNumber": number, "ETag": answer["ETag"], f"Checksum{algorithm}": checksum}

    def _whole_file(self, fd: int) -> tuple[int, str]:
        """sha256 of the very file the parts are read from (the same fd: a file replaced by
        rename meanwhile cannot be hashed in place of the one uploaded)."""
        h = hashlib.sha256()
        size = 0
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        while not self.failed.is_set() and (n := os.preadv(fd, [view], size)):
            h.update(view[:n])
            size += n
        return size, h.hexdigest()

    def run(self) -> list[dict[str, Any]]:
        count = max(1, -(-self.entry.size // self.part_size))
        fd = os.open(self.source, os.O_RDONLY)
        try:
            pool = ThreadPoolExecutor(self.workers + 1, thread_name_prefix="axon-s3-part")
            try:
                whole = pool.submit(self._whole_file, fd)
                parts = [pool.submit(self._upload, fd, n) for n in range(1, count + 1)]
                pool.shutdown(wait=True)
            except BaseException:  # Ctrl-C: start no more parts, and let the running ones
                self.failed.set()  # end before the fd they read is closed
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            for fut in parts:
                error = fut.exception()
                if error is not None and not isinstance(error, _Skipped):
                    raise error
            size, sha256 = whole.result()
        finally:
            os.close(fd)
        check_content(self.store, self.entry, self.source, size, sha256)
        return [f.result() for f in parts]


class _Skipped(Exception):
    """A part not started because another one had failed already."""
