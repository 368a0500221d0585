"""The members of a cluster: its static instances, then those its discovery source finds."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from axon.targets import ClusterTarget, InstanceTarget


def cluster_members(cluster: ClusterTarget, *, timeout: float = 5.0) -> list[InstanceTarget]:
    """The static members, then those found by ``cluster.discovery``. A member listed twice
    (same place) is published once; a discovered member whose endpoint is already listed is
    skipped. Discovered members take the cluster's access settings (``template``), or the
    first static member's, or the API."""
    members: list[InstanceTarget] = []
    places = set()
    for member in cluster.instances:
        place = (member.endpoint.rstrip("/"), member.access_method, member.storage_path)
        if place not in places and member.name not in {m.name for m in members}:
            places.add(place)
            members.append(member)
    if cluster.discovery:
        members += _discovered(cluster, cluster.discovery, members, timeout)
    return members


def _discovered(
    cluster: ClusterTarget, source: str, members: list[InstanceTarget], timeout: float
) -> list[InstanceTarget]:
    """The members discovery ``source`` finds that ``members`` do not list yet."""
    # imported here: discovery loads httpx (and a backend's client), which a cluster
    # without a discovery source never needs
    from axon.discovery import discover, member_target

    template = cluster.template or (members[0] if members else None)
    seen = {m.endpoint.rstrip("/") for m in members}
    names = {m.name for m in members}
    found_members: list[InstanceTarget] = []
    for found in discover(source, cluster.name, timeout=timeout):
        if found.endpoint.rstrip("/") in seen:
            continue
        seen.add(found.endpoint.rstrip("/"))
        member = member_target(found, template)
        if member.name in names:  # two records with one id: keep both, distinguishable
            member = dataclasses.replace(member, name=f"{member.name}@{member.endpoint}")
        names.add(member.name)
        found_members.append(member)
    return found_members


__all__ = ["cluster_members"]
