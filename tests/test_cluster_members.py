"""Cluster members from an instance: ``GET /v1/cluster/members`` of a real ``mlos-core serve
--cluster C --discovery etcd://...`` (real etcd)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.fixtures.common import wait_for
from tests.fixtures.discovery import EtcdServer

pytestmark = pytest.mark.slow
TTL = 2


def join(mlos_server: Any, etcd: EtcdServer, instance_id: str, cluster: str = "prod") -> Any:
    return mlos_server(
        cluster=cluster,
        discovery=etcd.discovery_uri,
        discovery_ttl=TTL,
        instance_id=instance_id,
        no_fsync=True,
    )


def members_of(url: str, **params: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/cluster/members", params=params, timeout=15)


def wait_members(url: str, ids: list[str]) -> dict[str, Any]:
    def listed() -> bool:
        answer = members_of(url, probe="false")
        return (
            answer.status_code == 200
            and [m["instance_id"] for m in answer.json()["members"]] == ids
        )

    wait_for(listed, timeout=20, what=f"{url} to list members {ids}")
    body: dict[str, Any] = members_of(url).json()
    return body


def test_an_instance_lists_its_cluster_from_etcd(etcd_server: EtcdServer, mlos_server: Any) -> None:
    one, two = join(mlos_server, etcd_server, "core-1"), join(mlos_server, etcd_server, "core-2")
    other = join(mlos_server, etcd_server, "staging-1", cluster="staging")
    body = wait_members(one.url, ["core-1", "core-2"])
    assert (body["status"], body["cluster"], body["source"]) == ("success", "prod", "etcd")
    assert body["instance_id"] == "core-1" and body["warnings"] == []
    by_id = {m["instance_id"]: m for m in body["members"]}
    for srv, name in ((one, "core-1"), (two, "core-2")):
        member = by_id[name]
        assert member["endpoint"] == srv.url  # the URL it advertised
        assert member["storage_path"] == str(srv.models_dir.absolute())
        assert (member["status"], member["healthy"], member["health"]) == (
            "registered",
            True,
            "healthy",
        )
    assert by_id["core-1"]["is_self"] and not by_id["core-2"]["is_self"]
    assert [m["instance_id"] for m in members_of(other.url).json()["members"]] == ["staging-1"]
    # killed: still registered until its lease expires, but its health says so at once
    two.kill()
    member = next(m for m in members_of(one.url).json()["members"] if m["instance_id"] == "core-2")
    assert member["healthy"] is False and "ConnectError" in member["health"]
    wait_members(one.url, ["core-1"])  # the lease expired: gone


def test_an_instance_outside_a_cluster_or_without_its_source_says_so(
    etcd_factory: Any, mlos_server: Any
) -> None:
    plain = mlos_server(no_fsync=True)
    answer = members_of(plain.url)
    assert answer.status_code == 404 and answer.json()["code"] == "not_clustered"
    assert "--cluster" in answer.json()["message"]
    alone = mlos_server(cluster="solo", instance_id="solo-1", no_fsync=True)
    (member,) = members_of(alone.url).json()["members"]
    assert (member["instance_id"], member["endpoint"], member["is_self"]) == (
        "solo-1",
        alone.url,
        True,
    )
    etcd = etcd_factory()
    member_of_etcd = join(mlos_server, etcd, "core-1")
    wait_members(member_of_etcd.url, ["core-1"])
    etcd.kill()
    down = members_of(member_of_etcd.url)
    assert down.status_code == 503 and down.json()["code"] == "discovery_unavailable"
    assert "etcd" in down.json()["message"]
