"""Health of discovered members: ``GET <endpoint>/health`` on each, in parallel.

The probe itself is :meth:`axon.mlos_client.MlosClient.health` (the same one a cluster
publish uses to skip unhealthy members); this module words its answer for
``axon targets show``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from axon.discovery._model import Member
from axon.mlos_client import Health, MlosClient

NOT_JSON = "answer is not JSON (is the URI pointing at the right service and port?)"


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


def unreachable_reason(health: Health) -> str | None:
    """Why a member counts as unreachable (no answer or too slow, not 2xx, not JSON, an
    answer no MLOS Core gives); None if it answered JSON with a 2xx status."""
    failure = health.no_answer
    if failure is not None:
        if failure.kind == "connect":
            return f"cannot connect ({failure.message})"
        if failure.kind == "timeout":
            return "timed out"
        return f"{failure.name}: {failure.message}"
    if health.invalid is not None:
        return health.invalid
    if health.code is None or not 200 <= health.code < 300:
        return f"HTTP {health.code} {health.text!r}"
    if not health.is_json:
        return NOT_JSON
    return None


def check_member(member: Member, *, timeout: float = 3.0) -> MemberHealth:
    """Probe one member (never raises: an unreachable member says why in ``error``)."""
    started = time.monotonic()
    with MlosClient(member.endpoint, timeout=timeout, name=member.instance_id) as client:
        health = client.health()
    seconds = time.monotonic() - started
    reason = unreachable_reason(health)
    if reason is not None:
        return MemberHealth(member, False, "unreachable", seconds=seconds, error=reason)
    status = str(health.status or "unknown")
    return MemberHealth(
        member, status == "healthy", status, version=health.version, seconds=seconds
    )


def check_members(
    members: list[Member], *, timeout: float = 3.0, parallel: int = 16
) -> list[MemberHealth]:
    """Health of every member, in the members' order."""
    if not members:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(members))) as pool:
        return list(pool.map(lambda m: check_member(m, timeout=timeout), members))
