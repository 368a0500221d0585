"""The relay's routes (docs/relay.md, "Protocol"): what this instance is (``/v1/relay``), its
blobs served to peers (``/v1/blobs/{sha256}``, with ranges), and pull jobs (``/v1/pulls``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from mlos_core.core import Core, parse_manifest
from mlos_core.errors import BadRequest, NotFound
from mlos_core.http.errors import JSONAnswer
from mlos_core.http.request import byte_count, core_of, json_body
from mlos_core.http.routes_v1 import check_digest
from mlos_core.relay import ON_BEHALF, PullJob, Relay
from mlos_core.storage.blobs import check_sha256

log = logging.getLogger("mlos_core.relay")

MAX_SOURCES = 16
MAX_WAIT = 30.0  # seconds a GET /v1/pulls/{id}?wait= may hold the answer
SERVE_CHUNK = 1024 * 1024  # bytes read from a blob per step while it is served
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def relay_of(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {str(value)[:40]!r}")
    return value


def _sources(body: dict[str, Any]) -> list[str]:
    raw = body.get("sources", [])
    if "source" in body:  # one source, as a convenience
        raw = [body["source"], *(raw if isinstance(raw, list) else [])]
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        raise BadRequest("sources must be a list of peer URLs", code="invalid_source")
    if len(raw) > MAX_SOURCES:
        raise BadRequest(
            f"{len(raw)} sources, at most {MAX_SOURCES}: name the nearest peers",
            code="invalid_source",
        )
    return raw


async def relay_info(request: Request) -> JSONAnswer:
    return JSONAnswer(await relay_of(request).info())


async def start_pull(request: Request) -> JSONAnswer:
    core = core_of(request)
    relay = relay_of(request)
    body = await json_body(request)
    ref = core.parse_ref(body.get("model_id"))
    authorization = request.headers.get("authorization")
    tenant = core.tenants.authorize(authorization, ref.namespace)
    if "manifest_sha256" not in body:
        raise BadRequest(
            "manifest_sha256 is required: the digest of the build to pull (the commit "
            "answer's manifest_sha256)",
            code="invalid_digest",
        )
    digest = check_digest(body["manifest_sha256"])
    commit = _flag(body, "commit", True)
    fallback = _flag(body, "fallback", True)
    sources: list[str] = []
    for url in _sources(body):
        checked = await relay.peers.check(url)  # 403 not_a_peer before anything starts
        if checked not in sources:
            sources.append(checked)
    if not sources and not fallback:
        raise BadRequest(
            "no sources and fallback is false: name at least one peer", code="invalid_source"
        )
    manifest = None
    if body.get("manifest") is not None:
        manifest = parse_manifest(body["manifest"], ref, strict=True)
        if manifest.digest() != digest:
            raise BadRequest(
                "manifest_sha256 is not the digest of the manifest sent (docs/upload-protocol.md:"
                " the canonical JSON of the manifest as stored, identity set from the model id)",
                code="invalid_digest",
            )
    settled = await asyncio.to_thread(core.unchanged_answer, ref, digest)
    if settled is not None:  # the visible version is that build: nothing to fetch
        return JSONAnswer({**settled, "pull_id": None, "state": "committed"})
    joined = relay.running_for(ref.id, digest, tenant.name, commit=commit)
    if joined is not None:
        return _accepted(joined, joined=True)
    job = PullJob(
        ref=ref,
        digest=digest,
        tenant=tenant.name,
        sources=sources,
        commit=commit,
        fallback=fallback,
        manifest=manifest,
        authorization=authorization,
    )
    if manifest is not None:  # checked as an upload's open, answered as one
        await relay.puller.open_upload(job)
    return _accepted(relay.submit(job), joined=False)


def _accepted(job: PullJob, *, joined: bool) -> JSONAnswer:
    return JSONAnswer(
        {**job.to_dict(), "joined": joined},
        status_code=202,
        headers={"Location": f"/v1/pulls/{job.pull_id}"},
    )


def _owned_job(request: Request) -> PullJob:
    core = core_of(request)
    job = relay_of(request).get(request.path_params["pull_id"])
    core.tenants.authorize(request.headers.get("authorization"), job.ref.namespace)
    return job


async def get_pull(request: Request) -> JSONAnswer:
    job = _owned_job(request)
    raw = request.query_params.get("wait")
    if raw is not None:
        try:
            wait = min(MAX_WAIT, max(0.0, float(raw)))
        except ValueError:
            raise BadRequest(f"wait must be seconds (0 to 30), got {raw[:40]!r}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not job.final and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - loop.time()):
                    await job.changed.wait()
            if job.state == "prepared":
                break
    return JSONAnswer(job.to_dict())


async def cancel_pull(request: Request) -> JSONAnswer:
    job = _owned_job(request)
    await relay_of(request).cancel(job)
    return JSONAnswer(job.to_dict())


async def list_pulls(request: Request) -> JSONAnswer:
    core = core_of(request)
    relay = relay_of(request)
    tenant = core.tenants.authenticate(request.headers.get("authorization"))
    jobs = [
        j.to_dict()
        for j in list(relay.jobs.values())
        if not core.tenants.enabled or tenant.owns(j.ref.namespace)
    ]
    return JSONAnswer({"status": "success", "pulls": jobs, "total": len(jobs)})


# ---- blobs served to peers -----------------------------------------------------------
def _open_blob(core: Core, sha: str) -> tuple[int, int] | None:
    """(fd, size) of a complete blob of the store; None when it has none. The open file
    stays readable while it is served even if it is collected meanwhile."""
    try:
        fd = os.open(core.blobs.path(sha), os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return fd, os.fstat(fd).st_size


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) of a single ``Range: bytes=`` request; None to answer the whole blob
    (no Range, or one we ignore as RFC 9110 allows: several ranges, another unit, bad
    syntax); ``"unsatisfiable"`` for a range outside the blob."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # bytes=-N: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, min(last, size - 1)


async def get_blob(request: Request) -> Response:
    core = core_of(request)
    relay = relay_of(request)
    sha = check_sha256(request.path_params["sha256"])
    missing = NotFound(
        f"blob {sha} is not on this instance (only complete blobs are served, and with tokens "
        "only to a tenant that holds the content, or to the peer token reading for one)",
        code="unknown_blob",
    )
    authorization = request.headers.get("authorization")
    on_behalf = unquote(request.headers.get(ON_BEHALF, ""))  # read for, with the peer token
    opened = None
    if relay.may_read(authorization, sha, on_behalf):
        opened = await asyncio.to_thread(_open_blob, core, sha)
    hint = request.query_params.get("model")
    if opened is None and hint:  # a file of a model that was placed, not uploaded
        ref = core.parse_ref(hint)
        if relay.may_read_model(authorization, ref.namespace, on_behalf):
            opened = await asyncio.to_thread(relay.open_placed, ref, sha)
    following: Path | None = None
    if opened is None and request.query_params.get("follow") == "1":
        size = byte_count(request.query_params.get("size", ""), "size")
        incoming = await asyncio.to_thread(relay.incoming, authorization, on_behalf, sha, size)
        if incoming == "pending":
            return JSONAnswer(
                {
                    "status": "error",
                    "code": "blob_pending",
                    "message": f"blob {sha[:12]} is listed by an upload this instance is "
                    "receiving, and none of its bytes has arrived yet: ask again",
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
        if isinstance(incoming, Path):
            opened = await asyncio.to_thread(_open_incoming, incoming, size)
            following = incoming if opened is not None else None
    if opened is None:
        raise missing
    fd, size = opened
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha}"'}
    wanted = _byte_range(request.headers.get("range"), size)
    if wanted == "unsatisfiable":
        os.close(fd)
        return JSONAnswer(
            {
                "status": "error",
                "code": "range_not_satisfiable",
                "message": f"blob {sha[:12]} has {size} bytes; the range asked for is outside it",
            },
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    status = 200
    first, last = 0, size - 1
    if isinstance(wanted, tuple):
        first, last = wanted
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    if request.method == "HEAD":
        os.close(fd)
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    body = _read(fd, first, last + 1, relay)
    if following is not None:
        idle = core.settings.body_timeout
        body = _follow(fd, first, last + 1, relay, following, core.blobs.path(sha), idle)
    answer = StreamingResponse if following is None else _FollowAnswer
    return answer(
        body,
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


async def _read(fd: int, start: int, end: int, relay: Relay) -> AsyncIterator[bytes]:
    try:
        offset = start
        while offset < end:
            chunk = await asyncio.to_thread(os.pread, fd, min(SERVE_CHUNK, end - offset), offset)
            if not chunk:
                raise OSError(f"blob shorter than its size at {offset}")
            offset += len(chunk)
            relay.metrics.served(len(chunk))
            yield chunk
    finally:
        os.close(fd)


ROUTES = [
    Route("/v1/relay", relay_info, methods=["GET"]),
    Route("/v1/blobs/{sha256}", get_blob, methods=["GET", "HEAD"]),
    Route("/v1/pulls", start_pull, methods=["POST"]),
    Route("/v1/pulls", list_pulls, methods=["GET"]),
    Route("/v1/pulls/{pull_id}", get_pull, methods=["GET"]),
    Route("/v1/pulls/{pull_id}", cancel_pull, methods=["DELETE"]),
]


# ---- cut-through: a blob served while it is still being received ----------------------
FOLLOW_POLL = 0.02  # seconds between two looks at a partial blob that has not grown


def _open_incoming(path: Path, size: int) -> tuple[int, int] | None:
    """(fd, size) of a partial blob being received, its final ``size`` to be served."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW), size
    except OSError:
        return None


def _same_file(fd: int, *paths: Path) -> bool:
    """Is the file open as ``fd`` still at one of ``paths`` (the partial blob, or the store,
    where a verified blob is renamed)? False once it was dropped."""
    ino = os.fstat(fd).st_ino
    for path in paths:
        try:
            if os.stat(path).st_ino == ino:
                return True
        except OSError:
            continue
    return False


class _Dropped(Exception):
    """The blob being followed was dropped, cut back or went quiet: the answer ends short
    (the connection is closed mid-body) and the puller resumes or switches source."""


class _FollowAnswer(StreamingResponse):
    """A followed blob's answer: when the blob is dropped or goes quiet under it, one warning
    and the answer stops short (the server closes the connection: the follower sees a cut and
    resumes), instead of an exception's traceback in the log."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.body_iterator:
                assert isinstance(chunk, bytes)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except _Dropped as exc:
            log.warning("cut-through answer ended short (the follower resumes): %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _follow(
    fd: int, start: int, end: int, relay: Relay, partial: Path, final: Path, idle: float
) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` of a blob still being received, as they land: what is
    written is read, then the file is watched until it grows. Unverified bytes are safe to
    forward: the puller hashes every byte and stores nothing that does not match."""
    loop = asyncio.get_running_loop()
    offset = start
    quiet_since = loop.time()
    try:
        while offset < end:
            held = os.fstat(fd).st_size
            if held > offset:
                n = min(SERVE_CHUNK, held - offset, end - offset)
                chunk = await asyncio.to_thread(os.pread, fd, n, offset)
                offset += len(chunk)
                relay.metrics.served(len(chunk))
                quiet_since = loop.time()
                yield chunk
                continue
            if held < offset or not _same_file(fd, partial, final):
                raise _Dropped(f"blob {final.name[:12]} was dropped or cut back while followed")
            if loop.time() - quiet_since > idle:
                raise _Dropped(f"blob {final.name[:12]}: no byte arrived for {idle:g} s")
            await asyncio.sleep(FOLLOW_POLL)
    finally:
        os.close(fd)
