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
import re
from collections.abc import Iterator
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
from mlos_core.storage.receive import StalledBody, pump

MAX_FIELD = 16 * 1024 * 1024
_PARAM = re.compile(rb"[ \t;]*([^=;]*)(=?)[ \t]*(.*)", re.DOTALL)  # key, "=", the rest
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPED = re.compile(rb'\\(["\\])')  # curl's escapes; browsers send "\" unescaped
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


async def upload_multipart(request: Request, core: Core) -> dict[str, Any]:
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    if declared is not None:
        core.check_size(byte_count(declared, "Content-Length"))
    core.tenants.authenticate(request.headers.get("authorization"))
    upload = OneShotUpload(core, request.headers.get("authorization"))
    reader = FormReader(upload)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]

    def feed(batch: list[bytes]) -> None:
        reader.total += sum(len(chunk) for chunk in batch)
        core.check_size(reader.total)
        with _malformed_is_400():
            for chunk in batch:
                parser.write(chunk)

    try:
        try:
            await pump(
                body_batches(request),
                lambda batch: [functools.partial(feed, batch)],
                core.metrics.received,
                idle=core.settings.body_timeout,
            )
        except StalledBody:
            raise BodyTimeout(
                f"no body bytes for {core.settings.body_timeout:g} s; nothing was stored "
                "from this upload: send it again",
            ) from None
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
