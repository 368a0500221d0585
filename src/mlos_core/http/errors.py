"""From errors to HTTP answers: the one place that knows which status each error gets.

The core and storage raise :class:`~mlos_core.errors.CoreError` subclasses, which carry a
machine code but no status; :data:`STATUS` maps each class (and so its subclasses) to the
status code of the upstream MLOS Core API and of our upload protocol. Every error answer is
``{"status": "error", "code": ..., "message": ...}`` plus the error's ``extra`` fields.

Two conditions exist only in HTTP and are defined here: a request body that stalls
(:class:`BodyTimeout`) and a body of the wrong media type (:class:`UnsupportedMediaType`).

What no code expected (an ``OSError`` out of the filesystem, a bug) is answered by
:class:`CatchAll`, inside Starlette's outermost error middleware: a full disk is a 507, anything
else a 500, each with a fixed message; the detail (an OSError names server paths) goes to the
server's log only. The connection stays usable: Starlette's own 500 handler re-raises after
answering, and uvicorn then drops the keep-alive connection under the client's next request.
No answer carries the models dir's absolute path either (:func:`_scrub`).
"""

from __future__ import annotations

import errno
import json
import logging
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlos_core.errors import (
    BadRequest,
    Conflict,
    CoreError,
    CorruptState,
    Forbidden,
    NoSpace,
    NotFound,
    NotSupported,
    TooLarge,
    Unauthorized,
    Unprocessable,
    UploadAborted,
)
from mlos_core.storage.receive import BodyInterrupted, StalledBody

log = logging.getLogger("mlos_core.http")


class BodyTimeout(CoreError):
    """No body bytes for ``--body-timeout`` seconds (the bytes received are kept)."""

    code = "body_timeout"


class UnsupportedMediaType(CoreError):
    code = "unsupported_media_type"


STATUS: dict[type[CoreError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    BodyTimeout: 408,
    Conflict: 409,
    UploadAborted: 410,
    TooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    CorruptState: 500,
    NotSupported: 501,
    NoSpace: 507,
}


def status_of(exc: CoreError) -> int:
    """The status of ``exc``'s class or its nearest mapped base; 500 for none (our bug)."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


class JSONAnswer(JSONResponse):
    """A JSON answer that cannot fail to render: text that is not valid Unicode (a lone
    surrogate that came in as ``"\\ud800"``) is written as a ``\\u`` escape instead of
    making the answer a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
            return text.encode("ascii")


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"status": "error", "code": code, "message": message, **extra}


def _scrub(request: Request | None, message: str) -> str:
    """``message`` without the models dir's absolute path (an error naming a file there)."""
    settings = getattr(getattr(getattr(request, "app", None), "state", None), "settings", None)
    models_dir = getattr(settings, "models_dir", None)
    if models_dir is None:
        return message
    return message.replace(str(models_dir), "<models-dir>")


async def core_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoreError)
    body = error_body(exc.code, _scrub(request, exc.message), **exc.extra)
    return JSONAnswer(body, status_of(exc))


async def http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (a method a route does not take, ...)."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "error")
    return JSONAnswer(error_body("http", detail), status)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def unexpected_answer(exc: Exception, where: str) -> Response:
    """The answer to what no code expected in request ``where`` ("POST /models/scan"); the
    detail goes to the server's log only."""
    if isinstance(exc, StalledBody):
        message = "no body bytes for too long; nothing was stored from this request"
        return JSONAnswer(error_body(BodyTimeout.code, message), STATUS[BodyTimeout])
    if isinstance(exc, ClientDisconnect | BodyInterrupted):  # nobody is listening any more
        log.info("%s: the client went away in the middle of the body", where)
        return Response(status_code=499)
    if is_no_space(exc):
        log.warning("%s: the models filesystem is full: %s", where, exc)
        message = "the models filesystem is full (free space on the server, then retry)"
        return JSONAnswer(error_body(NoSpace.code, message), STATUS[NoSpace])
    incident = uuid.uuid4().hex[:12]
    log.error("%s: internal error %s", where, incident, exc_info=exc)
    message = f"internal error {incident}; the server's log has the details"
    return JSONAnswer(error_body("internal", message), status_code=500)


class CatchAll:
    """Pure ASGI middleware: an exception no handler took becomes :func:`unexpected_answer`,
    and the connection stays open for the client's next request. Once an answer has started
    there is no clean way out: the exception goes on (the server closes the connection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            where = f"{scope['method']} {scope['path']}"
            await unexpected_answer(exc, where)(scope, receive, send)


EXCEPTION_HANDLERS = {
    CoreError: core_error,
    HTTPException: http_error,
}
