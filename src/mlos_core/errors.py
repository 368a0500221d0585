"""The errors the server's core and storage raise: what went wrong, as a machine code.

They know nothing of HTTP. The HTTP layer maps each class to a status code in one place
(:mod:`mlos_core.http.errors`) and answers ``{"status": "error", "code": ..., "message":
...}`` plus the error's ``extra`` fields (``offset`` where a blob upload must resume from).
The message says what was wrong, where, and what to do next.

Hierarchy (each class has a default ``code``; a raise may name a more precise one)::

    CoreError (modelpkg PackageError)        a request the server cannot do
    ├── BadRequest (ValueError)              bad_request: the request itself is wrong
    ├── Unauthorized                         unauthorized: no or unknown token
    ├── Forbidden                            forbidden: the tenant may not write there
    ├── NotFound (LookupError)               not_found: no such model, upload, blob
    ├── Conflict                             conflict: the state differs from the request's
    │   ├── OffsetMismatch                   offset_mismatch: resume from ``offset``
    │   ├── MissingBlob                      missing_blob: content not uploaded yet
    │   └── ModelOverlap                     model_overlap: directories of two ids would nest
    ├── UploadAborted                        upload_aborted: dropped while being received
    ├── TooLarge                             too_large: over a size limit
    ├── Unprocessable (ValueError)           content that does not match its manifest
    │   ├── ChecksumMismatch                 checksum_mismatch
    │   └── SizeMismatch                     size_mismatch
    ├── CorruptState                         corrupt: the server's own state is unreadable
    ├── NoSpace                              insufficient_storage: the models filesystem is full
    └── NotSupported                         not_supported: nothing here can do it (a model
                                             format without a runtime)
"""

from __future__ import annotations

from typing import Any

from modelpkg.errors import PackageError


class CoreError(PackageError):
    """Base of the errors the server raises on purpose.

    ``code`` is the machine-readable reason (the class default unless a raise names a more
    precise one); ``extra`` holds structured fields the answer carries besides the message.
    """

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code  # a more precise reason than the class's
        self.extra = extra


class BadRequest(CoreError, ValueError):
    code = "bad_request"


class Unauthorized(CoreError):
    code = "unauthorized"


class Forbidden(CoreError):
    code = "forbidden"


class NotFound(CoreError, LookupError):
    code = "not_found"


class Conflict(CoreError):
    code = "conflict"


class OffsetMismatch(Conflict):
    """A blob upload that starts elsewhere than the bytes held; ``offset`` is where to resume."""

    code = "offset_mismatch"


class MissingBlob(Conflict):
    code = "missing_blob"


class ModelOverlap(Conflict):
    """The model's directory would nest with another model's (``n/b@v1`` lives at
    ``n/b/v1/``, which holds ``n/b/v1@x``); ``overlaps`` names the other model."""

    code = "model_overlap"


class UploadAborted(CoreError):
    code = "upload_aborted"


class TooLarge(CoreError):
    code = "too_large"


class Unprocessable(CoreError, ValueError):
    code = "unprocessable"


class ChecksumMismatch(Unprocessable):
    code = "checksum_mismatch"


class SizeMismatch(Unprocessable):
    code = "size_mismatch"


class CorruptState(CoreError):
    code = "corrupt"


class NoSpace(CoreError):
    code = "insufficient_storage"


class NotSupported(CoreError):
    """A request this server cannot carry out at all (inference of a format it has no
    runtime for): asking again will not help, publishing something else will."""

    code = "not_supported"


def no_space(where: str) -> NoSpace:
    """The models filesystem filled up while writing ``where``."""
    return NoSpace(
        f"the models filesystem is full while writing {where}; nothing was stored "
        "(free space on the server, then retry)"
    )
