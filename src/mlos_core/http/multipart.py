"""``POST /models/upload``: a whole model in one ``multipart/form-data`` request.

Fields ``model_id`` and ``manifest`` must come before the files; each ``model_files`` part's
filename is the file's path relative to the model root. python-multipart's streaming parser
runs in the event loop, on batches of about 4 MiB of the body; this module turns its
callbacks into the calls of a :class:`~mlos_core.oneshot.OneShotUpload`, which stores the
files as they stream in: a file's data is hashed and written in two lanes of worker threads,
as a blob ``PUT``'s body is (:mod:`mlos_core.storage.receive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import ParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from mlos_core.core import Core
from mlos_core.errors import BadRequest, TooLarge
from mlos_core.http.errors import BodyTimeout, UnsupportedMediaType
from mlos_core.http.request import body_batches, byte_count
from mlos_core.oneshot import OneShotUpload
from mlos_core.storage.receive import BATCH, DEPTH, StalledBody, _Lane, _with_idle_timeout

MAX_FIELD = 16 * 1024 * 1024
_PARAM = re.compile(rb"[ \t;]*([^=;]*)(=?)[ \t]*(.*)", re.DOTALL)  # key, "=", the rest
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPED = re.compile(rb'\\(["\\])')  # curl's escapes; browsers send "\" unescaped
_FIELDS = ("model_id", "manifest")


Step = Callable[[], None]
Op = memoryview | Step  # a file part's data, or a step to take in order in a worker thread


def _raise(exc: BaseException) -> Step:
    def step() -> None:
        raise exc

    return step


class FormReader:
    """python-multipart's callbacks, in the event loop: gathers each part's headers, keeps a
    field's value (bounded), and turns the rest into :attr:`ops`, in body order: a file
    part's data, and the upload's steps (open a file, finish it, take a field), which block
    and run in a worker thread (:class:`_Ingest`)."""

    def __init__(self, upload: OneShotUpload, parser_of: Callable[[FormReader], Any]) -> None:
        self.upload = upload
        self.total = 0  # body bytes fed so far
        self.ops: list[Op] = []
        self.failed = False  # an error is in ops: the rest of the body is not parsed
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        self._hname = b""
        self._hvalue = b""
        self._headers: dict[bytes, bytes] = {}
        self._parser = parser_of(self)

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

    def feed(self, batch: list[bytes], size: int) -> list[Op]:
        """Parse the next ``batch`` of body chunks; what to do for them, in order. An error
        (a body too big, a malformed one) is the last step: the steps before it are taken
        first, as when each ran as soon as it was parsed."""
        if not self.failed:
            try:
                self.total += size
                self.upload.core.check_size(self.total)
                with _malformed_is_400():
                    for chunk in batch:
                        self._parser.write(chunk)
            except Exception as exc:
                self.ops.append(_raise(exc))
                self.failed = True
        return self.take()

    def finalize(self) -> list[Op]:
        if not self.failed:
            try:
                with _malformed_is_400():
                    self._parser.finalize()
            except Exception as exc:
                self.ops.append(_raise(exc))
                self.failed = True
        return self.take()

    def take(self) -> list[Op]:
        ops, self.ops = self.ops, []
        return ops

    def _begin(self) -> None:
        self._name, self._is_file, self._value = "", False, bytearray()
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def _headers_done(self) -> None:
        opts = disposition_params(self._headers.get(b"content-disposition", b""))
        self._name = opts.get("name", b"").decode("utf-8", "replace")
        # ``curl -F manifest=@manifest.yaml`` sends a filename too: those two stay fields.
        if "filename" in opts and self._name not in _FIELDS:
            try:
                filename = opts["filename"].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(
                    f"filename {opts['filename'][:300]!r} of part {self._name!r} is not UTF-8",
                    code="invalid_path",
                ) from None
            self.ops.append(functools.partial(self.upload.open_file, filename, self._name))
            self._is_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = memoryview(data)[start:end]
        if self._is_file:
            if chunk:
                self.ops.append(chunk)
            return
        if len(self._value) + len(chunk) > MAX_FIELD:
            raise TooLarge(f"form field {self._name!r} over {MAX_FIELD} bytes")
        self._value += chunk

    def _end(self) -> None:
        if self._is_file:
            self.ops.append(self.upload.finish_file)
        elif self._name == "model_id":
            value = self._value.decode("utf-8", "replace")
            self.ops.append(functools.partial(self.upload.set_model_id, value))
        elif self._name == "manifest":
            self.ops.append(functools.partial(self.upload.set_manifest, bytes(self._value)))


class _Ingest:
    """Takes the ops of each parsed batch. A file's data goes to two lanes of worker threads
    (:class:`~mlos_core.storage.receive._Lane`), hashing and writing side by side at their
    own pace, up to :data:`~mlos_core.storage.receive.DEPTH` batches in flight while the next
    batch arrives, as a blob ``PUT``'s body does (:func:`~mlos_core.storage.receive.pump`).
    The steps between (a file's end and the next file's start, the fields, the small files
    that begin and end in one batch) wait for the lanes, then run in one worker thread, in
    order."""

    def __init__(self, upload: OneShotUpload) -> None:
        loop = asyncio.get_running_loop()
        self.upload = upload
        self.lanes = [_Lane(loop), _Lane(loop)]
        self.in_flight: deque[asyncio.Future[list[BaseException | None]]] = deque()

    async def settle(self, keep: int = 0) -> None:
        while len(self.in_flight) > keep:
            for result in await self.in_flight.popleft():
                if isinstance(result, BaseException):
                    raise result

    async def take(self, ops: list[Op]) -> None:
        i, j = 0, len(ops)
        while i < j and isinstance(ops[i], memoryview):
            i += 1  # the data of the file the steps before opened
        while j > i and isinstance(ops[j - 1], memoryview):
            j -= 1  # the data of the file the steps in between open
        if i:
            await self._dispatch(ops[:i])
        if i < j:
            await self.settle()
            await asyncio.to_thread(self._steps, ops[i:j])
        if j < len(ops):
            await self._dispatch(ops[j:])

    async def _dispatch(self, pieces: list[Op]) -> None:
        await self.settle(DEPTH - 1)
        work = self.upload.write_jobs(pieces)  # type: ignore[arg-type]  # memoryviews only
        done = [lane.submit(job) for lane, job in zip(self.lanes, work, strict=True)]
        self.in_flight.append(asyncio.gather(*done, return_exceptions=True))

    def _steps(self, ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, memoryview):
                self.upload.write(op)
            else:
                op()

    async def close(self) -> None:
        """Let the jobs running in threads land (they use files the upload closes next)."""
        for lane in self.lanes:
            await lane.drain()
        for batch_done in self.in_flight:
            batch_done.cancel()


def disposition_params(header: bytes) -> dict[str, bytes]:
    """The parameters of a part's ``Content-Disposition`` (``form-data; name="x";
    filename="a/b.bin"``), each value exactly as sent (the quotes, and the ``\\"`` and
    ``\\\\`` escapes curl writes, undone; any other backslash stays).

    Not python-multipart's ``parse_options_header``: it cuts a filename such as
    ``C:\\evil`` down to ``evil`` (an old browser's habit), so a path the model would never
    list was stored under another name; here it reaches the path check, which refuses it.
    """
    params: dict[str, bytes] = {}
    rest = header.partition(b";")[2]
    while rest:
        key, eq, rest = _PARAM.match(rest).groups()  # type: ignore[union-attr]  # always matches
        quoted = _QUOTED.match(rest) if eq else None
        if quoted:
            value, rest = _ESCAPED.sub(rb"\1", quoted[1]), rest[quoted.end() :]
            rest = rest.partition(b";")[2]
        else:
            value, _, rest = rest.partition(b";")
            value = value.strip(b" \t")
        key = key.strip(b" \t").lower()
        # RFC 7578 forbids the extended form (filename*=...): the plain parameters rule
        if eq and key and not key.endswith(b"*"):
            params.setdefault(key.decode("latin-1"), value)
    return params


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


async def _batches(request: Request, idle: float) -> AsyncIterator[tuple[list[bytes], int]]:
    """The body in batches of about :data:`~mlos_core.storage.receive.BATCH` bytes (lists of
    chunks, not copied); :class:`StalledBody` after ``idle`` s without a byte."""
    buf: list[bytes] = []
    size = 0
    async for chunk in _with_idle_timeout(body_batches(request), idle):
        if isinstance(chunk, list):
            buf += chunk
            size += sum(len(c) for c in chunk)
        else:
            buf.append(chunk)
            size += len(chunk)
        if size >= BATCH:
            yield buf, size
            buf, size = [], 0
    if buf:
        yield buf, size


async def upload_multipart(request: Request, core: Core) -> dict[str, Any]:
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    if declared is not None:
        core.check_size(byte_count(declared, "Content-Length"))
    core.tenants.authenticate(request.headers.get("authorization"))
    upload = OneShotUpload(core, request.headers.get("authorization"))
    reader = FormReader(upload, lambda r: MultipartParser(boundary, r.callbacks()))  # type: ignore[arg-type]
    ingest = _Ingest(upload)
    try:
        try:
            try:
                async for batch, size in _batches(request, core.settings.body_timeout):
                    await ingest.take(reader.feed(batch, size))
                    core.metrics.received(size)
            except StalledBody:
                raise BodyTimeout(
                    f"no body bytes for {core.settings.body_timeout:g} s; nothing was stored "
                    "from this upload: send it again",
                ) from None
            await ingest.take(reader.finalize())
            await ingest.settle()
        finally:
            await ingest.close()
        answer = await upload.commit()
    except BaseException:
        core.metrics.upload("multipart", False)
        await upload.abort()
        raise
    finally:
        upload.close()
    core.metrics.upload("multipart", True)
    return answer
