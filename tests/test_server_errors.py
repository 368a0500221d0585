"""The server's errors: core and storage raise domain errors, the HTTP layer alone maps them
to statuses and JSON bodies, and the layers below HTTP never load it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from mlos_core.errors import (
    BadRequest,
    ChecksumMismatch,
    CoreError,
    CorruptState,
    Forbidden,
    MissingBlob,
    NoSpace,
    NotFound,
    OffsetMismatch,
    SizeMismatch,
    TooLarge,
    Unauthorized,
    UploadAborted,
    no_space,
)
from mlos_core.http.errors import BodyTimeout, UnsupportedMediaType, core_error, status_of


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (BadRequest, 400, "bad_request"),
        (Unauthorized, 401, "unauthorized"),
        (Forbidden, 403, "forbidden"),
        (NotFound, 404, "not_found"),
        (BodyTimeout, 408, "body_timeout"),
        (OffsetMismatch, 409, "offset_mismatch"),
        (MissingBlob, 409, "missing_blob"),
        (UploadAborted, 410, "upload_aborted"),
        (TooLarge, 413, "too_large"),
        (UnsupportedMediaType, 415, "unsupported_media_type"),
        (ChecksumMismatch, 422, "checksum_mismatch"),
        (SizeMismatch, 422, "size_mismatch"),
        (CorruptState, 500, "corrupt"),
        (NoSpace, 507, "insufficient_storage"),
        (CoreError, 500, "error"),
    ],
)
def test_each_error_has_its_status_and_code(error: type[CoreError], status: int, code: str) -> None:
    exc = error("what went wrong")
    assert (status_of(exc), exc.code, str(exc)) == (status, code, "what went wrong")


def test_the_answer_carries_a_precise_code_and_extra_fields() -> None:
    exc = BadRequest("body longer than the blob", code="size_mismatch", offset=3)
    response = asyncio.run(core_error(None, exc))  # type: ignore[arg-type]
    assert response.status_code == 400
    assert json.loads(bytes(response.body)) == {
        "status": "error",
        "code": "size_mismatch",
        "message": "body longer than the blob",
        "offset": 3,
    }
    assert isinstance(exc, ValueError) and isinstance(NotFound("x"), LookupError)
    assert "free space on the server" in no_space("blob ab12").message


def test_core_and_storage_load_neither_http_nor_integrations() -> None:
    code = (
        "import sys, mlos_core.core, mlos_core.oneshot, mlos_core.storage.receive;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('starlette', 'uvicorn', 'multipart', 'python_multipart', 'click', 'axon')"
        " or m.startswith(('mlos_core.http', 'mlos_core.integrations', 'mlos_core.cli'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_answer_holding_a_lone_surrogate_still_renders() -> None:
    """Text that is not valid Unicode never makes an answer fail: it is written escaped."""
    from mlos_core.http.errors import JSONAnswer

    assert JSONAnswer({"a": "\ud800"}).body == b'{"a":"\\ud800"}'
    assert JSONAnswer({"a": "\u00e9"}).body == '{"a":"\u00e9"}'.encode()
