"""From errors to HTTP answers: the one place that knows which status each error gets.

The core and storage raise :class:`~mlos_core.errors.CoreError` subclasses, which carry a
machine code but no status; :data:`STATUS` maps each class (and so its subclasses) to the
status code of the upstream MLOS Core API and of our upload protocol. Every error answer is
``{"status": "error", "code": ..., "message": ...}`` plus the error's ``extra`` fields.

Two conditions exist only in HTTP and are defined here: a request body that stalls
(:class:`BodyTimeout`) and a body of the wrong media type (:class:`UnsupportedMediaType`).
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mlos_core.errors import (
    BadRequest,
    Conflict,
    CoreError,
    CorruptState,
    Forbidden,
    NoSpace,
    NotFound,
    TooLarge,
    Unauthorized,
    Unprocessable,
    UploadAborted,
)

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
    NoSpace: 507,
}


def status_of(exc: CoreError) -> int:
    """The status of ``exc``'s class or its nearest mapped base; 500 for none (our bug)."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"status": "error", "code": code, "message": message, **extra}


async def core_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoreError)
    return JSONResponse(error_body(exc.code, exc.message, **exc.extra), status_of(exc))


async def http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (a method a route does not take, ...)."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "error")
    return JSONResponse(error_body("http", detail), status)


async def unexpected(_request: Request, exc: Exception) -> Response:
    """A disk that filled up where no code expected it is still 507; anything else is a bug."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JSONResponse(error_body(NoSpace.code, str(exc)), STATUS[NoSpace])
    log.exception("unexpected error")
    return JSONResponse(error_body("internal", f"internal error: {exc!r}"), status_code=500)


EXCEPTION_HANDLERS = {
    CoreError: core_error,
    HTTPException: http_error,
    Exception: unexpected,
}
