"""``POST /models/upload``: a whole model in one ``multipart/form-data`` request.

Fields ``model_id`` and ``manifest`` must come before the files; each ``model_files`` part's
filename is the file's path relative to the model root. python-multipart's streaming parser
runs in a worker thread; this module turns its callbacks into the calls of a
:class:`~mlos_core.oneshot.OneShotUpload`, which stores the files as they stream in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import ParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from mlos_core.core import Core
from mlos_core.errors import BadRequest, TooLarge
from mlos_core.http.errors import UnsupportedMediaType
from mlos_core.http.request import body_chunks
from mlos_core.oneshot import OneShotUpload
from mlos_core.storage.receive import pump

MAX_FIELD = 16 * 1024 * 1024
_FIELDS = ("model_id", "manifest")


class FormReader:
    """python-multipart's callbacks, in a worker thread: gathers each part's headers, keeps a
    field's value (bounded), and streams a file part into the upload."""

    def __init__(self, upload: OneShotUpload) -> None:
        self.upload = upload
        self.total = 0  # body bytes fed so far
        self._name = ""
        self._is_file = False
        self._value = bytearray()
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
        self._name, self._is_file, self._value = "", False, bytearray()
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def _headers_done(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace")
        # ``curl -F manifest=@manifest.yaml`` sends a filename too: those two stay fields.
        if b"filename" in opts and self._name not in _FIELDS:
            filename = opts[b"filename"].decode("utf-8", "replace")
            self.upload.open_file(filename, self._name)
            self._is_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = memoryview(data)[start:end]
        if self._is_file:
            self.upload.write(chunk)
            return
        if len(self._value) + len(chunk) > MAX_FIELD:
            raise TooLarge(f"form field {self._name!r} over {MAX_FIELD} bytes")
        self._value += chunk

    def _end(self) -> None:
        if self._is_file:
            self.upload.finish_file()
        elif self._name == "model_id":
            self.upload.set_model_id(self._value.decode("utf-8", "replace"))
        elif self._name == "manifest":
            self.upload.set_manifest(bytes(self._value))


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
    upload = OneShotUpload(core, request.headers.get("authorization"))
    reader = FormReader(upload)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]

    def feed(batch: bytearray) -> None:
        reader.total += len(batch)
        core.check_size(reader.total)
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
        answer = await upload.commit()
    except BaseException:
        core.metrics.upload("multipart", False)
        await upload.abort()
        raise
    finally:
        upload.close()
    core.metrics.upload("multipart", True)
    return answer
