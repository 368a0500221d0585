"""The HTTP app (Starlette on uvicorn): routes, the error answers, one log line per request.

:func:`create_app` serves one :class:`~mlos_core.core.Core`: it starts the core (and an
upload-expiry sweeper) in the app's lifespan, routes the upstream MLOS Core API
(:mod:`mlos_core.http.routes`) and the upload protocol (:mod:`mlos_core.http.routes_v1`),
and answers errors as :mod:`mlos_core.http.errors` maps them (what no code expected too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlos_core import __version__
from mlos_core.core import Core
from mlos_core.http import routes, routes_cluster, routes_inference, routes_relay, routes_v1
from mlos_core.http.errors import EXCEPTION_HANDLERS, CatchAll
from mlos_core.http.routes_signing import ROUTES as SIGNING_ROUTES
from mlos_core.relay import Relay

log = logging.getLogger("mlos_core.http")


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


def create_app(core: Core, relay: Relay | None = None) -> ASGIApp:
    """The ASGI app serving ``core``; the lifespan starts it (crash recovery, first scan)."""
    settings = core.settings
    relay = relay if relay is not None else Relay(core)  # static --peer peers only

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
        await relay.start()
        yield
        await relay.stop()
        task.cancel()

    app = Starlette(
        routes=[
            *routes.ROUTES,
            *routes_v1.ROUTES,
            *routes_cluster.ROUTES,
            *routes_inference.ROUTES,
            *routes_relay.ROUTES,
            *SIGNING_ROUTES,  # after the other /v1/models/... routes: GET /v1/models/{id}
            routes.MODEL_ROUTE,
        ],
        lifespan=lifespan,
        # inside Starlette's outermost error middleware, which drops the connection after
        # answering: what no handler took is answered here and the connection stays usable
        middleware=[Middleware(CatchAll)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.core = core
    app.state.relay = relay
    app.state.settings = settings
    return AccessLog(app, core)
