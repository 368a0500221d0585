"""``GET /v1/cluster/members``: the members of this instance's cluster, from its discovery source.

An instance started with ``--cluster C --discovery URI`` answers with the members the source
lists (:func:`mlos_core.integrations.discovery.list_members`), each with the URL it advertised
and its health: what the source says (``status``) and, unless ``?probe=false``, the answer to
a ``GET /health`` sent to that URL now (``healthy``, ``health``)::

    {"status": "success", "cluster": "prod", "source": "etcd", "instance_id": "core-1",
     "members": [{"instance_id": "core-1", "endpoint": "http://10.0.0.5:8080",
                  "storage_path": "/var/lib/mlos/models", "status": "registered",
                  "is_self": true, "healthy": true, "health": "healthy"}, ...],
     "warnings": []}

Reads are open, like ``GET /models``. Errors: 404 ``not_clustered`` (no ``--cluster``),
501 ``members_unlisted`` (a source this server cannot list), 503 ``discovery_unavailable``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from mlos_core.http.errors import JSONAnswer, error_body
from mlos_core.http.request import core_of
from mlos_core.integrations.discovery import ClusterMember, DiscoveryUnavailable, list_members

SOURCE_TIMEOUT = 5.0  # seconds the discovery source has to answer
PROBE_TIMEOUT = 2.0  # seconds each member's /health has
PROBE_LIMIT = 64 * 1024  # bytes of a /health answer read


async def _probe(client: Any, member: ClusterMember) -> tuple[bool, str]:
    """(healthy, "healthy" or why not) from ``GET <endpoint>/health``."""
    import httpx

    try:
        async with client.stream("GET", f"{member.endpoint}/health") as response:
            body = b""
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > PROBE_LIMIT:
                    return False, "its /health answer is over 64 KiB"
    except httpx.TimeoutException:
        return False, f"no answer from /health within {PROBE_TIMEOUT:g} s"
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"
    if response.status_code != 200:
        return False, f"/health answered HTTP {response.status_code}"
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return False, "/health did not answer a JSON object"
    if status != "healthy":
        return False, f"/health says status {str(status)[:80]!r}"
    return True, "healthy"


async def _probe_all(members: list[ClusterMember]) -> list[tuple[bool, str]]:
    import httpx

    timeout = httpx.Timeout(PROBE_TIMEOUT)
    # peers are reached directly, never through an environment proxy
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        return list(await asyncio.gather(*(_probe(client, m) for m in members)))


async def cluster_members(request: Request) -> JSONAnswer:
    core = core_of(request)
    settings = core.settings
    probe = request.query_params.get("probe", "true").lower() not in ("false", "0", "no")
    try:
        listing = await asyncio.to_thread(list_members, settings, timeout=SOURCE_TIMEOUT)
    except DiscoveryUnavailable as exc:
        message = f"cannot ask the discovery source of cluster {settings.cluster!r}: {exc}"
        return JSONAnswer(error_body("discovery_unavailable", message[:1000]), status_code=503)
    except ValueError as exc:
        if not settings.cluster:
            message = f"{exc}; start it with --cluster NAME --discovery URI to list members"
            return JSONAnswer(error_body("not_clustered", message), status_code=404)
        return JSONAnswer(error_body("members_unlisted", str(exc)), status_code=501)
    health = (
        await _probe_all(listing.members)
        if probe
        else [(None, "not probed")] * len(listing.members)
    )
    members = [
        {**m.to_dict(), "healthy": ok, "health": why}
        for m, (ok, why) in zip(listing.members, health, strict=True)
    ]
    return JSONAnswer(
        {
            "status": "success",
            "cluster": listing.cluster,
            "source": listing.source,
            "instance_id": settings.instance_id,
            "members": members,
            "warnings": listing.warnings,
        }
    )


ROUTES = [Route("/v1/cluster/members", cluster_members, methods=["GET"])]
