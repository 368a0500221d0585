"""The routes of the upstream MLOS Core API (docs/compatibility.md): health, stats, the model
list, register, scan, one-shot upload, a model's record, delete and inference.

Model ids in paths may be percent-encoded (``/models/hf%2Fbert%40latest``) or raw
(``/models/hf/bert@latest/inference``): the ASGI server decodes the path, so both arrive as
the same string. The resumable upload protocol is in :mod:`mlos_core.http.routes_v1`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlos_core import __version__
from mlos_core.errors import Forbidden, NotFound
from mlos_core.http import routes_inference
from mlos_core.http.errors import JSONAnswer
from mlos_core.http.metrics import metrics
from mlos_core.http.multipart import upload_multipart
from mlos_core.http.openapi import openapi_document
from mlos_core.http.request import core_of, json_body

STARTED = time.time()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def health(request: Request) -> JSONAnswer:
    body: dict[str, Any] = {
        "status": "healthy",
        "service": "mlos-core",
        "version": __version__,
        "timestamp": _now(),
    }
    relay = getattr(request.app.state, "relay", None)
    if relay is not None:  # pulls and catch-up progress (docs/relay.md)
        body["relay"] = relay.health()
    damaged = [m for m in core_of(request).registry.all() if m.damaged]
    if damaged:  # another tool rewrote stored bytes in place (mlos_core.storage.damage)
        body["storage"] = {
            "status": "degraded",
            "damaged_models": len(damaged),
            "damaged_files": sum(len(m.damaged) for m in damaged),
        }
    return JSONAnswer(body)


async def stats(request: Request) -> JSONAnswer:
    core = core_of(request)
    models = core.registry.all()
    return JSONAnswer(
        {
            "status": "success",
            "instance_id": core.settings.instance_id,
            "default_namespace": core.settings.default_namespace,  # of a bare model id
            "uptime_seconds": round(time.time() - STARTED, 1),
            "models": len(models),
            "model_bytes": sum(m.size for m in models),
            "open_uploads": core.uploads.count(),
            "uploads": {f"{k}_{r}": n for (k, r), n in core.metrics.uploads.items()},
            "upload_bytes": core.metrics.upload_bytes,
            "dedup_bytes": core.metrics.dedup_bytes,
        }
    )


async def list_models(request: Request) -> JSONAnswer:
    models = [m.summary() for m in core_of(request).registry.all()]
    return JSONAnswer({"status": "success", "models": models, "total": len(models)})


async def register(request: Request) -> JSONAnswer:
    core = core_of(request)
    body = await json_body(request)
    ref = core.parse_ref(body.get("model_id"))
    core.tenants.authorize(request.headers.get("authorization"), ref.namespace)
    answer = await asyncio.to_thread(core.register, body)
    if body.get("load") is True:  # its session loaded now, not at the first inference
        answer.update(await routes_inference.preload(request, ref))
    return JSONAnswer(answer)


async def scan(request: Request) -> JSONAnswer:
    """Registers every model in the models dir, of every namespace: with tokens, only a tenant
    allowed every namespace (``"*"``) may ask for it."""
    core = core_of(request)
    tenant = core.tenants.authenticate(request.headers.get("authorization"))
    if not tenant.owns_every_namespace:
        raise Forbidden(
            f"tenant {tenant.name!r} may not scan: a scan registers the models of every "
            'namespace (it needs a tenant with namespaces ["*"]); register your own '
            "models with POST /models/register",
        )
    found, new = await asyncio.to_thread(core.scan)
    return JSONAnswer(
        {"status": "success", "found": found, "new": new, "total": len(core.registry)}
    )


async def upload(request: Request) -> JSONAnswer:
    return JSONAnswer(await upload_multipart(request, core_of(request)), status_code=201)


async def model_route(request: Request) -> Response:
    """GET/DELETE ``/models/{id}``, POST ``/models/{id}/inference``."""
    core = core_of(request)
    rest: str = request.path_params["rest"]
    if request.method == "POST":
        if not rest.endswith("/inference"):
            raise NotFound(f"no such endpoint: POST /models/{rest}")
        return await routes_inference.inference(request, rest.removesuffix("/inference"))
    ref = core.parse_ref(rest)
    if request.method == "DELETE":
        core.tenants.authorize(request.headers.get("authorization"), ref.namespace)
        answer = await core.delete_model(ref)
        routes_inference.forget(request, ref.id)  # its loaded session goes too
        return JSONAnswer(answer)
    entry = core.get_entry(ref)
    data = entry.to_dict()
    return JSONAnswer({**data, "model_status": entry.status, "status": "success", "model": data})


async def openapi(_request: Request) -> JSONAnswer:
    return JSONAnswer(openapi_document(__version__))


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/stats", stats, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/models", list_models, methods=["GET"]),
    Route("/models/register", register, methods=["POST"]),
    Route("/models/scan", scan, methods=["POST"]),
    Route("/models/upload", upload, methods=["POST"]),
]
# after the /v1 routes and every other /models/... route: it takes any path below /models/
MODEL_ROUTE = Route("/models/{rest:path}", model_route, methods=["GET", "DELETE", "POST"])
