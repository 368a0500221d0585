"""The resumable upload protocol (docs/upload-protocol.md) and rollback: ``/v1/...`` routes."""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlos_core.core import Core, parse_manifest
from mlos_core.errors import BadRequest, CoreError, NotFound
from mlos_core.http.errors import BodyTimeout, JSONAnswer
from mlos_core.http.request import (
    ClientGone,
    body_batches,
    body_chunks,
    byte_count,
    core_of,
    json_body,
)
from mlos_core.registration import find_model_dir
from mlos_core.storage.batch import IN_FLIGHT, receive_batch
from mlos_core.storage.blobs import BlobWriter, check_sha256
from mlos_core.storage.receive import StalledBody, receive_blob
from mlos_core.storage.uploads import Upload

BATCHES = "blob_batches"  # the open answer's field saying PUT .../blobs takes a batch
SHA256 = re.compile(r"[0-9a-f]{64}")
TOUCH_EVERY = 4 * 1024 * 1024  # bytes of a batch between two marks of upload activity


def check_digest(value: object) -> str:
    """The ``manifest_sha256`` of an open request: 64 lowercase hex digits."""
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise BadRequest(
            f"manifest_sha256 must be 64 lowercase hex digits, got {str(value)[:80]!r}",
            code="invalid_digest",
        )
    return value


def owned_upload(core: Core, request: Request) -> Upload:
    """The upload named in the path, if the caller's tenant may write its namespace."""
    upload = core.uploads.get(request.path_params["upload_id"])
    core.tenants.authorize(request.headers.get("authorization"), upload.ref.namespace)
    return upload


async def open_upload(request: Request) -> JSONAnswer:
    core = core_of(request)
    body = await json_body(request)
    ref = core.parse_ref(body.get("model_id"))
    tenant = core.tenants.authorize(request.headers.get("authorization"), ref.namespace)
    claimed = body.get("manifest_sha256")
    if claimed is not None:  # a conditional open: nothing to do when that is what we show
        settled = await asyncio.to_thread(core.unchanged_answer, ref, check_digest(claimed))
        if settled is not None:
            return JSONAnswer(settled)  # 200: no upload opened, the sent manifest unused
    manifest = parse_manifest(body.get("manifest"), ref, strict=True)
    if claimed is not None and claimed != manifest.digest():
        raise BadRequest(
            "manifest_sha256 is not the digest of the manifest sent (docs/upload-protocol.md: "
            "the canonical JSON of the manifest as stored, identity set from the model id)",
            code="invalid_digest",
        )
    # after a cut batch: what it brought is stored before we say what is needed
    await IN_FLIGHT.settle(core, tenant.name, {f.sha256 for f in manifest.files})
    async with core.gc_lock:
        upload = core.open_upload(ref, manifest, tenant.name)
        answer = await asyncio.to_thread(core.describe, upload)
    answer[BATCHES] = True
    have = set(answer["have"])
    core.metrics.deduplicated(sum(f.size for f in manifest.files if f.path in have))
    return JSONAnswer(answer, status_code=201)


async def get_upload(request: Request) -> JSONAnswer:
    core = core_of(request)
    upload = owned_upload(core, request)
    await IN_FLIGHT.settle(core, upload.tenant, upload.blobs())
    answer = await asyncio.to_thread(core.describe, upload)
    answer[BATCHES] = True
    return JSONAnswer(answer)


def _blob_of(upload: Upload, request: Request) -> tuple[str, int]:
    sha = check_sha256(request.path_params["sha256"])
    size = upload.blobs().get(sha)
    if size is None:
        raise NotFound(
            f"upload {upload.upload_id} has no file with sha256 {sha}", code="unknown_blob"
        )
    return sha, size


async def head_blob(request: Request) -> Response:
    core = core_of(request)
    upload = owned_upload(core, request)  # the same tenant check as every other upload call
    sha, size = _blob_of(upload, request)
    offset = core.blob_offset(upload, sha, size)  # the upload's tenant's bytes
    return Response(headers={"Upload-Offset": str(offset), "Upload-Length": str(size)})


async def put_blob(request: Request) -> Response:
    core = core_of(request)
    upload = owned_upload(core, request)
    sha, size = _blob_of(upload, request)
    offset = byte_count(request.headers.get("upload-offset", "0"), "Upload-Offset")
    declared = request.headers.get("content-length")
    if declared is not None and offset + byte_count(declared, "Content-Length") > size:
        raise BadRequest(
            f"body of {declared} bytes from offset {offset} is longer than the blob "
            f"({size} bytes); nothing stored",
            code="size_mismatch",
        )
    core.uploads.touch(upload.upload_id)
    async with core.blob_lock(upload, sha):
        if core.holds(upload.tenant, sha, size):  # another upload completed it meanwhile
            async for _ in request.stream():
                pass
            return _blob_answer(sha, size, True, 201)
        return await _receive(request, core, upload, core.blob_writer(upload, sha, size, offset))


async def _receive(request: Request, core: Core, upload: Upload, writer: BlobWriter) -> Response:
    """Stream the body into ``writer`` (the blob's lock held by the caller)."""

    def on_bytes(n: int) -> None:
        core.metrics.received(n)
        core.uploads.touch(upload.upload_id)  # a long transfer is activity: no expiry

    try:
        complete = await receive_blob(
            body_batches(request), writer, on_bytes, idle=core.settings.body_timeout
        )
    except StalledBody:
        raise BodyTimeout(
            f"no body bytes for {core.settings.body_timeout:g} s; the bytes received are kept: "
            "resume from the Upload-Offset that HEAD reports",
        ) from None
    except ClientGone:
        return Response(status_code=499)  # nobody is listening any more
    finally:
        core.uploads.touch(upload.upload_id)
    return _blob_answer(writer.sha256, writer.offset, complete, 201 if complete else 200)


async def put_blobs(request: Request) -> Response:
    """Many blobs in one body, each answered on its own (:mod:`mlos_core.storage.batch`)."""
    core = core_of(request)
    upload = owned_upload(core, request)
    core.uploads.touch(upload.upload_id)
    unmarked = 0

    def on_bytes(n: int) -> None:
        nonlocal unmarked
        core.metrics.received(n)
        unmarked += n
        if unmarked >= TOUCH_EVERY:  # a long batch is activity: no expiry
            core.uploads.touch(upload.upload_id)
            unmarked = 0

    try:
        outcomes = await receive_batch(
            core,
            upload,
            body_chunks(request),
            on_bytes=on_bytes,
            idle=core.settings.body_timeout,
        )
    except StalledBody:
        raise BodyTimeout(
            f"no body bytes for {core.settings.body_timeout:g} s; the blobs received whole "
            "are kept, and the bytes of the one cut: GET the upload for what is still needed",
        ) from None
    except ClientGone:
        return Response(status_code=499)  # nobody is listening any more
    finally:
        core.uploads.touch(upload.upload_id)
    body = {
        "status": "success",
        "upload_id": upload.upload_id,
        "blobs": [o.answer() for o in outcomes],
    }
    return JSONAnswer(body)


def _blob_answer(sha: str, offset: int, complete: bool, status: int) -> JSONAnswer:
    body = {"status": "success", "sha256": sha, "offset": offset, "complete": complete}
    return JSONAnswer(body, status_code=status)


async def prepare_upload(request: Request) -> JSONAnswer:
    core = core_of(request)
    upload = owned_upload(core, request)
    async with core.model_lock(upload.ref):
        await asyncio.to_thread(core.prepare, upload)
    return JSONAnswer({"status": "success", "upload_id": upload.upload_id, "state": "prepared"})


async def commit_upload(request: Request) -> JSONAnswer:
    core = core_of(request)
    upload = owned_upload(core, request)
    try:
        return JSONAnswer(await core.commit(upload))
    except CoreError:
        core.metrics.upload("resumable", False)
        raise


async def abort_upload(request: Request) -> JSONAnswer:
    core = core_of(request)
    upload = owned_upload(core, request)
    await asyncio.to_thread(core.drop_upload, upload)
    return JSONAnswer({"status": "success", "upload_id": upload.upload_id, "state": "aborted"})


async def rollback_model(request: Request) -> JSONAnswer:
    core = core_of(request)
    ref = core.parse_ref(request.path_params["model_id"])
    core.tenants.authorize(request.headers.get("authorization"), ref.namespace)
    return JSONAnswer(await core.rollback(ref))


async def get_manifest(request: Request) -> Response:
    """The manifest.yaml of the visible version (what ``axon`` compares before publishing),
    read where the model is registered the way a registration reads it: inside the models dir
    or a --register-root, through no symbolic link (:mod:`mlos_core.registration`)."""
    core = core_of(request)
    ref = core.parse_ref(request.path_params["model_id"])
    entry = core.registry.get(ref.id)
    try:
        found = await asyncio.to_thread(
            find_model_dir, core.settings, ref, entry.path if entry else None
        )
    except CoreError:
        found = None
    if found is None or found.manifest is None:
        raise NotFound(f"model {ref.id} has no manifest on this instance", code="unknown_model")
    return Response(found.manifest, media_type="application/yaml")


ROUTES = [
    Route("/v1/uploads", open_upload, methods=["POST"]),
    Route("/v1/uploads/{upload_id}", get_upload, methods=["GET"]),
    Route("/v1/uploads/{upload_id}", abort_upload, methods=["DELETE"]),
    Route("/v1/uploads/{upload_id}/blobs", put_blobs, methods=["PUT"]),
    Route("/v1/uploads/{upload_id}/blobs/{sha256}", put_blob, methods=["PUT"]),
    Route("/v1/uploads/{upload_id}/blobs/{sha256}", head_blob, methods=["HEAD"]),
    Route("/v1/uploads/{upload_id}/prepare", prepare_upload, methods=["POST"]),
    Route("/v1/uploads/{upload_id}/commit", commit_upload, methods=["POST"]),
    Route("/v1/models/{model_id:path}/rollback", rollback_model, methods=["POST"]),
    Route("/v1/models/{model_id:path}/manifest", get_manifest, methods=["GET"]),
]
