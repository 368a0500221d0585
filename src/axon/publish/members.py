"""The members of a cluster: its static instances, then those its discovery source finds, then
those an instance lists (``members_from:``, its ``GET /v1/cluster/members``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from axon.errors import AxonError, DiscoveryError

if TYPE_CHECKING:
    from axon.discovery import Member
    from axon.targets import ClusterTarget, InstanceTarget

MEMBERS_PATH = "/v1/cluster/members"


def cluster_members(cluster: ClusterTarget, *, timeout: float = 5.0) -> list[InstanceTarget]:
    """The static members, then those found by ``cluster.discovery``, then those
    ``cluster.members_from`` lists. A member listed twice (same place) is published once; a
    found member whose endpoint is already listed is skipped. Found members take the
    cluster's access settings (``template``), or the first static member's, or the API."""
    members: list[InstanceTarget] = []
    places = set()
    for member in cluster.instances:
        place = (member.endpoint.rstrip("/"), member.access_method, member.storage_path)
        if place not in places and member.name not in {m.name for m in members}:
            places.add(place)
            members.append(member)
    if cluster.discovery:
        from axon.discovery import discover  # loads httpx and a backend's client: on use

        found = discover(cluster.discovery, cluster.name, timeout=timeout)
        members += _as_targets(cluster, found, members)
    if cluster.members_from is not None:
        listed = listed_members(cluster, timeout=timeout)
        members += _as_targets(cluster, [m.member for m in listed.members], members)
    return members


def _as_targets(
    cluster: ClusterTarget, found: list[Member], members: list[InstanceTarget]
) -> list[InstanceTarget]:
    """The ``found`` members that ``members`` do not list yet, as targets."""
    from axon.discovery import member_target

    template = cluster.template or (members[0] if members else None)
    seen = {m.endpoint.rstrip("/") for m in members}
    names = {m.name for m in members}
    found_members: list[InstanceTarget] = []
    for one in found:
        if one.endpoint.rstrip("/") in seen:
            continue
        seen.add(one.endpoint.rstrip("/"))
        member = member_target(one, template)
        if member.name in names:  # two records with one id: keep both, distinguishable
            member = dataclasses.replace(member, name=f"{member.name}@{member.endpoint}")
        names.add(member.name)
        found_members.append(member)
    return found_members


@dataclass
class ListedMember:
    """One member as an instance lists it: the record, and its health as that instance saw
    it (``healthy`` None: not probed)."""

    member: Member
    status: str  # what the instance's discovery source says ("registered", "passing", ...)
    healthy: bool | None
    health: str
    is_self: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.member.to_dict(),
            "status": self.status,
            "healthy": self.healthy,
            "health": self.health,
            "is_self": self.is_self,
        }


@dataclass
class MemberListing:
    """An instance's answer to ``GET /v1/cluster/members``."""

    source: str  # the instance asked (its endpoint)
    cluster: str  # the cluster the instance says it is in
    discovery: str  # where it found them: "etcd", "consul", "static"
    members: list[ListedMember]
    warnings: list[str]


def listed_members(cluster: ClusterTarget, *, timeout: float = 5.0) -> MemberListing:
    """The members ``cluster.members_from`` lists (``GET /v1/cluster/members``).

    DiscoveryError (exit 11) naming the cluster and the instance when it cannot be asked,
    runs in no cluster, lists nobody, or answers what no MLOS Core does."""
    from axon.mlos_client import MlosClient

    source = cluster.members_from
    assert source is not None
    fix = (
        f"start {source.endpoint} with `mlos-core serve --cluster NAME --discovery URI`, or "
        f"name another instance in members_from of cluster {cluster.name!r}"
    )
    try:
        with MlosClient.for_target(source, timeout=timeout) as client:
            answer = client.exchange(
                "GET", MEMBERS_PATH, what="list the cluster's members", ok=(200, 404, 501, 503)
            )
            if answer.status != 200:
                code, message = answer.error_fields()
                if answer.status == 404 and code != "not_clustered":
                    message = "it has no GET /v1/cluster/members (an older mlos-core?)"
                said = f"HTTP {answer.status}" + (f" {code}" if code else "")
                raise DiscoveryError(
                    f"cluster {cluster.name!r}: {source.endpoint} cannot list its cluster's "
                    f"members ({said}): {message or 'no reason given'}",
                    hint=fix if answer.status in (404, 501) else "check its discovery source",
                    target=cluster.name,
                    url=source.endpoint + MEMBERS_PATH,
                )
            listing = client.parsed(
                answer, lambda data: _parse(data, source.endpoint), what="list members"
            )
    except DiscoveryError:
        raise
    except AxonError as exc:  # unreachable, refused, an answer no MLOS Core gives
        raise DiscoveryError(
            f"cluster {cluster.name!r}: cannot list members from {source.endpoint}: {exc.message}",
            hint=exc.hint or fix,
            target=cluster.name,
            url=source.endpoint + MEMBERS_PATH,
        ) from None
    if not listing.members:
        raise DiscoveryError(
            f"cluster {cluster.name!r}: {source.endpoint} lists no members",
            hint=fix,
            target=cluster.name,
            url=source.endpoint + MEMBERS_PATH,
        )
    return listing


def _parse(data: object, endpoint: str) -> MemberListing:
    """The answer, field by field (nothing an instance says is trusted)."""
    from axon.discovery import Member
    from axon.mlos_client import Fields, Invalid

    answer = Fields(data)
    answer.success()
    cluster = answer.required_text("cluster")
    members = []
    for item in answer.objects("members"):
        url = item.required_text("endpoint")
        try:
            parts = urlsplit(url)
            good = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:
            good = False
        if not good:
            raise Invalid(f"{item.where}'s endpoint {url[:120]!r} is not an http(s) URL")
        healthy = item.data.get("healthy")
        if healthy is not None and not isinstance(healthy, bool):
            raise Invalid(f"{item.where}'s 'healthy' is not true, false or null")
        instance_id = item.required_text("instance_id")
        if not instance_id.strip() or len(instance_id) > 253:
            raise Invalid(f"{item.where}'s 'instance_id' is empty or longer than 253")
        member = Member(
            instance_id, url.rstrip("/"), cluster, item.text("storage_path", optional=True)
        )
        members.append(
            ListedMember(
                member,
                item.text("status", optional=True) or "",
                healthy,
                item.text("health", optional=True) or "",
                item.data.get("is_self") is True,
            )
        )
    warnings = answer.texts("warnings") if "warnings" in answer.data else []
    discovery = answer.text("source", optional=True) or "?"
    return MemberListing(endpoint, cluster, discovery, members, warnings)


__all__ = ["ListedMember", "MemberListing", "cluster_members", "listed_members"]
