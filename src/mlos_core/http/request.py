"""What every route reads from a request: the core behind the app, a JSON body, body chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request

from mlos_core.core import Core
from mlos_core.errors import BadRequest, TooLarge
from mlos_core.storage.receive import BodyInterrupted

JSON_LIMIT = 32 * 1024 * 1024


def core_of(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


async def json_body(request: Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"JSON body over {limit} bytes")
    try:
        data = json.loads(bytes(body) or b"{}")
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    return data


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
