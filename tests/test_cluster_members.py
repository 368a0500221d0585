"""Cluster members from an instance: ``GET /v1/cluster/members`` of a real ``mlos-core serve
--cluster C --discovery etcd://...`` (real etcd), and a cluster config that names an instance
as its member source (``members_from:``): ``axon targets show`` and ``axon publish``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.errors import EXIT_DISCOVERY, EXIT_OK
from tests.fixtures.common import free_port, wait_for
from tests.fixtures.discovery import EtcdServer, RecordedApi
from tests.helpers import error_lines, run_axon, write_config

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


def test_a_cluster_takes_its_members_from_an_instance(
    etcd_server: EtcdServer, mlos_server: Any, installed_model: Any, axon_home: Path
) -> None:
    """``members_from: core-1``: axon asks that instance for the members, shows them with
    their health, and publishes to each (the configured instance's token goes along)."""
    one, two = join(mlos_server, etcd_server, "core-1"), join(mlos_server, etcd_server, "core-2")
    wait_members(one.url, ["core-1", "core-2"])
    write_config(
        axon_home,
        {"core-1": {"endpoint": one.url}},
        clusters={"prod": {"members_from": "core-1"}, "direct": {"members_from": two.url}},
    )
    shown = run_axon("targets", "show", "prod", "--json")
    assert shown.code == EXIT_OK, shown.err
    data = shown.json()
    assert data["members_from"] == one.url
    rows = {d["instance_id"]: d for d in data["discovered"]}
    assert set(rows) == {"core-1", "core-2"}
    assert rows["core-2"]["endpoint"] == two.url and rows["core-2"]["healthy"] is True
    human = run_axon("targets", "show", "direct")
    assert human.code == EXIT_OK and "core-2" in human.out and two.url in human.out
    run = run_axon("publish", str(installed_model), "-t", "prod", "--json")
    assert run.code == EXIT_OK, run.err
    results = run.json()["results"][0]
    published = {r["target"] for r in results["instances"]}
    assert published == {"core-1", "core-2"}, results
    for srv in (one, two):
        assert (srv.models_dir / installed_model.relpath).is_dir()


def test_a_member_source_that_cannot_list_fails_clearly(
    mlos_server: Any, installed_model: Any, axon_home: Path, recorded_api: Any
) -> None:
    plain = mlos_server(no_fsync=True)
    recorded_api.route("GET", "/v1/cluster/members", {"status": "success", "members": "all"})
    clusters = {
        "prod": {"members_from": plain.url},  # runs without --cluster
        "old": {"members_from": "http://127.0.0.1:9"},  # nothing listens
        "liar": {"members_from": recorded_api.url},  # an answer no MLOS Core gives
    }
    write_config(axon_home, clusters=clusters)
    run = run_axon("publish", str(installed_model), "-t", "prod")
    assert run.code == EXIT_DISCOVERY, run.err
    (line,) = error_lines(run.err)
    assert "cannot list its cluster's members (HTTP 404 not_clustered)" in line
    assert plain.url in line and "--cluster" in line
    for name, words in (("old", "cannot connect"), ("liar", "not as MLOS Core does")):
        run = run_axon("publish", str(installed_model), "-t", name)
        assert run.code == EXIT_DISCOVERY, run.err
        (line,) = error_lines(run.err)
        assert f"cluster {name!r}: cannot list members from" in line and words in line, line
    older = RecordedApi().start()  # a server without the route: 404, no error code
    try:
        write_config(axon_home, clusters={"older": {"members_from": older.url}})
        run = run_axon("targets", "show", "older")
        assert run.code == EXIT_DISCOVERY, run.err
        assert "it has no GET /v1/cluster/members (an older mlos-core?)" in run.err
    finally:
        older.stop()


def test_an_instance_lists_its_cluster_from_consul(recorded_api: Any, mlos_server: Any) -> None:
    """Consul (its agent's documented answers on a loopback server): each member with its
    check status; a malformed record is a warning, not a hidden member."""
    from tests.fixtures.discovery_answers import entry, meta

    down = free_port()
    recorded_api.route("PUT", "/v1/agent/service/register", {})
    recorded_api.route("GET", "/v1/agent/service/core-1", {"ID": "core-1"})
    srv = mlos_server(
        cluster="prod",
        discovery=f"consul://{recorded_api.hostport}",
        instance_id="core-1",
        no_fsync=True,
    )
    critical = entry("core-2", down, meta("core-2", down))
    critical["Checks"][0]["Status"] = "critical"
    broken = entry("core-3", down, {"instance_id": "core-3", "endpoint": "ftp://x"})
    recorded_api.route(
        "GET",
        "/v1/health/service/mlos-core",
        [entry("core-1", srv.port, meta("core-1", srv.port)), critical, broken],
    )
    body = members_of(srv.url).json()
    assert (body["source"], body["cluster"]) == ("consul", "prod")
    by_id = {m["instance_id"]: m for m in body["members"]}
    assert set(by_id) == {"core-1", "core-2"}
    assert (by_id["core-1"]["status"], by_id["core-1"]["healthy"], by_id["core-1"]["is_self"]) == (
        "passing",
        True,
        True,
    )
    assert (by_id["core-2"]["status"], by_id["core-2"]["healthy"]) == ("critical", False)
    (warning,) = body["warnings"]
    assert "core-3" in warning and "not an http(s) URL" in warning
    asked = [r for r in recorded_api.requests if r.path == "/v1/health/service/mlos-core"]
    assert asked and asked[-1].query["tag"] == ["mlos-cluster=prod"]


def test_an_instance_lists_its_cluster_from_kubernetes(
    recorded_api: Any, mlos_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes (the API reference's EndpointSliceList on a loopback server, found through
    MLOS_K8S_API as with `kubectl proxy`): each pod once, its readiness, the named port; a
    malformed address is a warning."""
    from tests.fixtures.discovery_answers import SLICES, slice_endpoint, slice_list

    monkeypatch.setenv("MLOS_K8S_API", recorded_api.url)
    monkeypatch.setenv("MLOS_K8S_TOKEN", "sa-token")
    srv = mlos_server(
        cluster="prod",
        discovery="k8s://mlos/mlos-core?port=http&storage_path=/var/lib/mlos/models",
        instance_id="core-a",
        no_fsync=True,
    )
    port = srv.port  # the Service's endpoints are asked at each request: recorded now
    endpoints = [
        slice_endpoint("127.0.0.1", "core-a", True),
        slice_endpoint("127.0.0.2", "core-b", False),
        slice_endpoint("not-an-ip", "core-c", True),
    ]
    recorded_api.route("GET", SLICES, slice_list(port, endpoints))
    body = members_of(srv.url).json()
    assert (body["source"], body["cluster"]) == ("kubernetes", "prod"), body
    by_id = {m["instance_id"]: m for m in body["members"]}
    assert set(by_id) == {"core-a", "core-b"}
    a, b = by_id["core-a"], by_id["core-b"]
    assert (a["endpoint"], a["status"], a["healthy"], a["is_self"]) == (
        f"http://127.0.0.1:{port}",
        "ready",
        True,
        True,
    )
    assert a["storage_path"] == "/var/lib/mlos/models"
    assert (b["endpoint"], b["status"], b["healthy"]) == (
        f"http://127.0.0.2:{port}",
        "not ready",
        False,
    )
    (warning,) = body["warnings"]
    assert "malformed" in warning
    (asked, *_) = [r for r in recorded_api.requests if r.path == SLICES]
    assert asked.query["labelSelector"] == ["kubernetes.io/service-name=mlos-core"]
    assert asked.headers["authorization"] == "Bearer sa-token"
