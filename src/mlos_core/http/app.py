"""The HTTP app (Starlette on uvicorn): MLOS Core API routes, errors, one log line per request.

Routes of the upstream MLOS Core API (COMPAT.md) are here; the resumable upload protocol is
in :mod:`mlos_core.routes_v1`. Model ids in paths may be percent-encoded
(``/models/hf%2Fbert%40latest``) or raw (``/models/hf/bert@latest/inference``): the ASGI
server decodes the path, so both arrive as the same string.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlos_core import __version__
from mlos_core.core import Core, parse_ref
from mlos_core.errors import NotFound
from mlos_core.http.errors import EXCEPTION_HANDLERS
from mlos_core.http.multipart import upload_multipart
from mlos_core.http.openapi import openapi_document
from mlos_core.http.request import core_of, json_body
from mlos_core.http.routes_v1 import ROUTES as V1_ROUTES
from mlos_core.settings import Settings

log = logging.getLogger("mlos_core.http")
STARTED = time.time()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def health(_request: Request) -> JSONResponse:
    return JSONResponse(
        {"status": "healthy", "service": "mlos-core", "version": __version__, "timestamp": _now()}
    )


async def stats(request: Request) -> JSONResponse:
    core = core_of(request)
    models = core.registry.all()
    return JSONResponse(
        {
            "status": "success",
            "instance_id": core.settings.instance_id,
            "uptime_seconds": round(time.time() - STARTED, 1),
            "models": len(models),
            "model_bytes": sum(m.size for m in models),
            "open_uploads": core.uploads.count(),
            "uploads": {f"{k}_{r}": n for (k, r), n in core.metrics.uploads.items()},
            "upload_bytes": core.metrics.upload_bytes,
            "dedup_bytes": core.metrics.dedup_bytes,
        }
    )


async def list_models(request: Request) -> JSONResponse:
    models = [m.summary() for m in core_of(request).registry.all()]
    return JSONResponse({"status": "success", "models": models, "total": len(models)})


async def register(request: Request) -> JSONResponse:
    core = core_of(request)
    body = await json_body(request)
    ref = parse_ref(body.get("model_id"))
    core.tenants.authorize(request.headers.get("authorization"), ref.namespace)
    return JSONResponse(await asyncio.to_thread(core.register, body))


async def scan(request: Request) -> JSONResponse:
    core = core_of(request)
    core.tenants.authenticate(request.headers.get("authorization"))
    found, new = await asyncio.to_thread(core.scan)
    return JSONResponse(
        {"status": "success", "found": found, "new": new, "total": len(core.registry)}
    )


async def upload(request: Request) -> JSONResponse:
    return JSONResponse(await upload_multipart(request, core_of(request)), status_code=201)


async def model_route(request: Request) -> Response:
    """GET/DELETE ``/models/{id}``, POST ``/models/{id}/inference``."""
    core = core_of(request)
    rest: str = request.path_params["rest"]
    if request.method == "POST":
        if not rest.endswith("/inference"):
            raise NotFound(f"no such endpoint: POST /models/{rest}")
        return await inference(request, rest.removesuffix("/inference"))
    ref = parse_ref(rest)
    if request.method == "DELETE":
        core.tenants.authorize(request.headers.get("authorization"), ref.namespace)
        return JSONResponse(await core.delete_model(ref))
    entry = core.get_entry(ref)
    data = entry.to_dict()
    return JSONResponse({**data, "model_status": entry.status, "status": "success", "model": data})


async def inference(request: Request, model_id: str) -> JSONResponse:
    """A plausible answer: this server has no inference engine (it says so in the answer)."""
    core = core_of(request)
    entry = core.get_entry(parse_ref(model_id))
    body = await json_body(request)
    shapes = {k: _shape(v) for k, v in body.items()}
    answer: dict[str, Any] = {
        "status": "success",
        "model_id": entry.id,
        "input_shapes": shapes,
        "inference_time_ms": 0.0,
        "note": "mlos-core (Python) stores and registers models; it has no inference engine, "
        "so no real outputs are computed",
    }
    if request.query_params.get("include_outputs", "").lower() in ("1", "true", "yes"):
        answer["outputs"] = {"output": [[0.0]]}
    return JSONResponse(answer)


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


async def metrics(request: Request) -> PlainTextResponse:
    core = core_of(request)
    text = core.metrics.render(models=len(core.registry), open_uploads=core.uploads.count())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def openapi(_request: Request) -> JSONResponse:
    return JSONResponse(openapi_document(__version__))


class AccessLog:
    """Pure ASGI middleware: one log line per request, and the request counters."""

    def __init__(self, app: ASGIApp, core: Core) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info(
                '%s "%s %s" %d %.3fs',
                client[0],
                scope["method"],
                scope.get("raw_path", b"").decode("latin-1") or scope["path"],
                status,
                time.perf_counter() - started,
            )
            self.core.metrics.request(scope["method"], status)


async def _sweeper(core: Core) -> None:
    interval = max(0.5, min(core.settings.upload_ttl / 4, 60.0))
    while True:
        await asyncio.sleep(interval)
        try:
            async with core.gc_lock:
                await asyncio.to_thread(core.expire_uploads)
        except Exception:
            log.exception("upload expiry sweep failed")


def create_app(settings: Settings) -> ASGIApp:
    core = Core(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(core.startup)
        log.info(
            "mlos-core %s serving %s (%d models registered)",
            __version__,
            settings.models_dir,
            len(core.registry),
        )
        task = asyncio.create_task(_sweeper(core))
        yield
        task.cancel()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/models/register", register, methods=["POST"]),
        Route("/models/scan", scan, methods=["POST"]),
        Route("/models/upload", upload, methods=["POST"]),
        *V1_ROUTES,
        Route("/models/{rest:path}", model_route, methods=["GET", "DELETE", "POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.core = core
    app.state.settings = settings
    return AccessLog(app, core)
