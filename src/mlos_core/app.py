"""The HTTP app (Starlette): routes, error handling, one log line per request."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlos_core import __version__
from mlos_core.settings import Settings


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def health(_request: Request) -> JSONResponse:
    return JSONResponse(
        {"status": "healthy", "service": "mlos-core", "version": __version__, "timestamp": _now()}
    )


def create_app(settings: Settings) -> Starlette:
    app = Starlette(routes=[Route("/health", health, methods=["GET"])])
    app.state.settings = settings
    return app
