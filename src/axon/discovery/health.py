"""Health of discovered members: ``GET <endpoint>/health`` on each, in parallel."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from axon.discovery._model import Member, describe_http_error


@dataclass
class MemberHealth:
    """One member and what its ``/health`` said (``healthy`` only for 200 + status healthy)."""

    member: Member
    healthy: bool
    status: str  # "healthy", the server's own status word, or "unreachable"
    version: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self.member.to_dict()
        data.update(
            healthy=self.healthy,
            status=self.status,
            version=self.version,
            seconds=round(self.seconds, 4),
            error=self.error,
        )
        return data


def check_member(member: Member, *, timeout: float = 3.0) -> MemberHealth:
    started = time.monotonic()
    try:
        response = httpx.get(f"{member.endpoint}/health", timeout=timeout)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return MemberHealth(
            member,
            False,
            "unreachable",
            seconds=time.monotonic() - started,
            error=describe_http_error(exc),
        )
    status = str(body.get("status", "unknown")) if isinstance(body, dict) else "unknown"
    version = body.get("version") if isinstance(body, dict) else None
    return MemberHealth(
        member,
        status == "healthy",
        status,
        version=str(version) if version is not None else None,
        seconds=time.monotonic() - started,
    )


def check_members(
    members: list[Member], *, timeout: float = 3.0, parallel: int = 16
) -> list[MemberHealth]:
    """Health of every member, in the members' order."""
    if not members:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(members))) as pool:
        return list(pool.map(lambda m: check_member(m, timeout=timeout), members))
