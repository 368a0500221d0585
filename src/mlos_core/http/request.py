"""What every route reads from a request: the core behind the app, a JSON body, a byte count
in a header, body chunks."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request

from mlos_core.core import Core
from mlos_core.errors import BadRequest, TooLarge
from mlos_core.http.server import body_stream
from mlos_core.storage.receive import BodyInterrupted
from modelpkg.manifest import MAX_SIZE

JSON_LIMIT = 32 * 1024 * 1024
_COUNT = re.compile(r"[0-9]{1,19}")  # ASCII digits only; 19 of them hold every int64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \ud800-\udfff (maybe a valid pair)


def core_of(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


async def json_body(request: Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    body = bytearray()
    async for chunk in body_chunks(request):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"JSON body over {limit} bytes")
    try:
        data = json.loads(bytes(body) or b"{}")
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    if _SURROGATE_ESCAPE.search(body):
        try:  # a pair is a character; a lone half is not text a file or an answer can hold
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "body holds a string that is not valid Unicode (a lone surrogate escape such "
                "as \\ud800)",
                code="invalid_json",
            ) from None
    return data


def byte_count(raw: str, what: str) -> int:
    """A header's byte count (``Upload-Offset``, ``Content-Length``): ASCII digits, at most
    2^63 - 1; BadRequest otherwise (a 5000-digit number is not converted at all)."""
    if not _COUNT.fullmatch(raw) or int(raw) > MAX_SIZE:
        raise BadRequest(f"{what} must be a byte count (0 to 2^63 - 1), got {raw[:40]!r}")
    return int(raw)


class ClientGone(BodyInterrupted):
    """The client closed the connection in the middle of the body."""


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body as storage receives it: a dropped connection becomes
    :class:`ClientGone`, which storage knows (it keeps what arrived, for a resume)."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect as exc:
        raise ClientGone() from exc


async def body_batches(request: Request) -> AsyncIterator[bytes | list[bytes]]:
    """:func:`body_chunks` for a big body stored as it arrives: in batches (lists of chunks)
    from the connection layer's fast body path when the server has one (``mlos-core
    serve``: :class:`~mlos_core.http.server.BodyStream`), else chunk by chunk."""
    stream = body_stream(request.scope)
    if stream is None:
        async for chunk in body_chunks(request):
            yield chunk
        return
    try:
        async for batch in stream.batches():
            yield batch
    except ClientDisconnect as exc:
        raise ClientGone() from exc
