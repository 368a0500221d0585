"""Errors the server answers with: an HTTP status, a machine code and a message.

Every error body is ``{"status": "error", "code": ..., "message": ...}`` plus optional extra
fields (``offset`` for a 409 on a blob upload). The message says what was wrong, where, and
what to do next; the app turns any :class:`ApiError` into that JSON answer in one place.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"status": "error", "code": self.code, "message": self.message, **self.extra}


def bad_request(message: str, code: str = "bad_request", **extra: Any) -> ApiError:
    return ApiError(400, code, message, **extra)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, code, message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


def checksum_mismatch(message: str, **extra: Any) -> ApiError:
    return ApiError(422, "checksum_mismatch", message, **extra)


def no_space(where: str) -> ApiError:
    return ApiError(
        507,
        "insufficient_storage",
        f"the models filesystem is full while writing {where}; nothing was stored "
        "(free space on the server, then retry)",
    )
