"""``POST /models/upload``: a whole model in one ``multipart/form-data`` request.

Fields ``model_id`` and ``manifest`` must come before the files; each ``model_files`` part's
filename is the file's path relative to the model root. Parts are parsed by python-multipart's
streaming parser in a worker thread and written straight into temp files on the models
filesystem while hashed, then moved into the blob store: nothing is ever held in memory.
Files the manifest lists but the request omits are taken from the blob store when the server
already holds their content (by sha256). Files received but not listed are added.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import ParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from mlos_core.core import Core, parse_manifest, parse_ref, register_answer
from mlos_core.errors import BadRequest, ChecksumMismatch, SizeMismatch, TooLarge, no_space
from mlos_core.http.errors import UnsupportedMediaType
from mlos_core.http.request import body_chunks
from mlos_core.storage.receive import pump
from mlos_core.tenants import Tenant
from modelpkg.atomic import remove_tree
from modelpkg.errors import ManifestError
from modelpkg.manifest import FileEntry, Manifest, check_relpath
from modelpkg.refs import ModelRef

MAX_FIELD = 16 * 1024 * 1024
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlos-mp-write")


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        offset += n
        data = data[n:]


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    fd: int = -1
    tmp: Path | None = None
    size: int = 0
    hash: Any = None


class OneShot:
    """State of one multipart upload; the parser callbacks run in a worker thread."""

    def __init__(self, core: Core, authorization: str | None, tmp_dir: Path) -> None:
        self.core = core
        self.authorization = authorization
        self.tmp_dir = tmp_dir
        self.ref: ModelRef | None = None
        self.manifest: Manifest | None = None
        self.tenant: Tenant | None = None
        self.received: dict[str, FileEntry] = {}
        self.new_blobs: list[str] = []
        self.pinned: list[str] = []  # kept from garbage collection until the commit
        self._listed_files: dict[str, FileEntry] | None = None
        self.total = 0
        self._part = _Part()
        self._hname = b""
        self._hvalue = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: setattr(self, "_hname", self._hname + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_hvalue", self._hvalue + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def _headers_done(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        part = self._part
        part.name = opts.get(b"name", b"").decode("utf-8", "replace")
        # ``curl -F manifest=@manifest.yaml`` sends a filename too: those two stay fields.
        if b"filename" in opts and part.name not in ("model_id", "manifest"):
            part.filename = opts[b"filename"].decode("utf-8", "replace")
            self._open_file(part)

    def _open_file(self, part: _Part) -> None:
        if self.ref is None or self.manifest is None:
            raise BadRequest(
                "send the model_id and manifest fields before the model_files parts",
                code="field_order",
            )
        try:
            check_relpath(part.filename or "", field=f"filename of part {part.name!r}")
        except ManifestError as exc:
            raise BadRequest(str(exc), code="invalid_path") from exc
        if part.filename in self.received:
            raise BadRequest(f"file {part.filename!r} sent twice", code="duplicate_file")
        part.tmp = self.tmp_dir / f"part-{len(self.received)}"
        part.fd = os.open(part.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        part.hash = hashlib.sha256()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        chunk = memoryview(data)[start:end]
        if part.fd < 0:
            if len(part.data) + len(chunk) > MAX_FIELD:
                raise TooLarge(f"form field {part.name!r} over {MAX_FIELD} bytes")
            part.data += chunk
            return
        # write in another thread while this one hashes (both release the GIL)
        written = _WRITERS.submit(_write_all, part.fd, chunk, part.size)
        part.hash.update(chunk)
        part.size += len(chunk)
        try:
            written.result()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space(f"file {part.filename!r}") from exc
            raise

    def _end(self) -> None:
        part = self._part
        if part.fd >= 0:
            self._finish_file(part)
        elif part.name == "model_id":
            self.ref = parse_ref(part.data.decode("utf-8", "replace").strip())
            self.tenant = self.core.tenants.authorize(self.authorization, self.ref.namespace)
        elif part.name == "manifest":
            if self.ref is None:
                raise BadRequest("send the model_id field before the manifest")
            self.manifest = parse_manifest(bytes(part.data), self.ref, strict=False)

    def _finish_file(self, part: _Part) -> None:
        assert self.manifest is not None and part.tmp is not None and part.filename
        if self.core.settings.durable:
            os.fsync(part.fd)
        os.close(part.fd)
        part.fd = -1
        sha = part.hash.hexdigest()
        listed = self._listed().get(part.filename)
        if listed is not None and listed.known and listed.sha256 != sha:
            raise ChecksumMismatch(
                f"{part.filename}: received content hashes to {sha}, manifest says "
                f"{listed.sha256}; nothing stored"
            )
        if listed is not None and listed.size and listed.size != part.size:
            raise SizeMismatch(
                f"{part.filename}: received {part.size} bytes, manifest says {listed.size}",
            )
        self._pin(sha)
        if not self.core.blobs.has(sha):
            self.new_blobs.append(sha)
        self.core.blobs.adopt(part.tmp, sha)
        self.received[part.filename] = FileEntry(part.filename, part.size, sha)

    def final_manifest(self) -> Manifest:
        """The manifest with every file's real size and sha256; 400 when files are missing."""
        if self.ref is None or self.manifest is None:
            raise BadRequest("model_id and manifest fields are required", code="missing_field")
        files = dict(self.received)
        missing = []
        for entry in self.manifest.files:
            if entry.path in files:
                continue
            if entry.known:
                self._pin(entry.sha256)  # before looking: gc cannot take it after
            if entry.known and self.core.blobs.has(entry.sha256, entry.size):
                files[entry.path] = entry  # content already on the server
            else:
                missing.append(entry.path)
        if missing:
            raise BadRequest(
                f"files listed in the manifest were not sent: {', '.join(missing[:10])}",
                code="missing_files",
            )
        final = self.manifest.with_files(files.values())
        try:  # files received but not listed join it: "a" and "a/b" cannot both exist
            return final.validate(strict=True)
        except ManifestError as exc:
            raise BadRequest(f"invalid set of files: {exc}", code="invalid_manifest") from exc

    def _listed(self) -> dict[str, FileEntry]:
        """The manifest's files by path, built once (not once per file received)."""
        assert self.manifest is not None
        if self._listed_files is None:
            self._listed_files = {f.path: f for f in self.manifest.files}
        return self._listed_files

    def _pin(self, sha: str) -> None:
        self.core.pin([sha])
        self.pinned.append(sha)

    def unpin(self) -> None:
        self.core.unpin(self.pinned)
        self.pinned = []

    def close(self) -> None:
        if self._part.fd >= 0:
            os.close(self._part.fd)
            self._part.fd = -1


def _boundary(request: Request) -> bytes:
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise UnsupportedMediaType(
            "POST /models/upload needs multipart/form-data (curl -F ...)",
        )
    return opts[b"boundary"]


@contextlib.contextmanager
def _malformed_is_400() -> Iterator[None]:
    """A body that is not multipart/form-data is the client's error (400), not ours (500)."""
    try:
        yield
    except ParseError as exc:
        raise BadRequest(
            f"not a valid multipart/form-data body: {exc}", code="invalid_multipart"
        ) from exc


async def upload_multipart(request: Request, core: Core) -> dict[str, Any]:
    boundary = _boundary(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        core.check_size(int(declared))
    core.tenants.authenticate(request.headers.get("authorization"))
    tmp_dir = core.versions.staging_dir / f"mp-{uuid.uuid4().hex}"
    tmp_dir.mkdir()
    state = OneShot(core, request.headers.get("authorization"), tmp_dir)
    parser = MultipartParser(boundary, state.callbacks())  # type: ignore[arg-type]

    def feed(batch: bytearray) -> None:
        state.total += len(batch)
        core.check_size(state.total)
        with _malformed_is_400():
            parser.write(bytes(batch))

    try:
        await pump(
            body_chunks(request),
            lambda batch: [functools.partial(feed, batch)],
            core.metrics.received,
            idle=core.settings.body_timeout,
        )
        with _malformed_is_400():
            await asyncio.to_thread(parser.finalize)
        manifest = state.final_manifest()
        assert state.ref is not None
        ref = state.ref
        async with core.model_lock(ref):
            staged = await asyncio.to_thread(_build, core, manifest)
            entry = await asyncio.to_thread(core.publish_staged, staged, ref, manifest)
    except BaseException:
        state.close()
        state.unpin()  # before the discard, which spares pinned blobs
        core.metrics.upload("multipart", False)
        await asyncio.to_thread(_discard, core, state.new_blobs)
        raise
    finally:
        state.unpin()
        remove_tree(tmp_dir)
    core.metrics.upload("multipart", True)
    answer = register_answer(entry, "uploaded")
    answer.update(files=len(manifest.files), bytes=manifest.total_size)
    return answer


def _build(core: Core, manifest: Manifest) -> Path:
    staged = core.versions.new_staging()
    try:
        core.versions.build(staged, manifest)
    except BaseException:
        remove_tree(staged)
        raise
    return staged


def _discard(core: Core, shas: list[str]) -> None:
    """Drop blobs a failed request brought in (unless something links to them now)."""
    protected = core.protected_blobs()
    for sha in shas:
        path = core.blobs.path(sha)
        try:
            if sha not in protected and path.stat().st_nlink == 1:
                path.unlink()
        except FileNotFoundError:
            pass
