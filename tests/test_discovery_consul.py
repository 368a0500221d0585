"""Consul discovery and registration.

No Consul agent can run here, so the agent is a real loopback HTTP server (``recorded_api``)
answering with responses shaped exactly like Consul's documented ``/v1/health/service`` and
``/v1/agent/service/*`` answers; the client code and ``mlos-core serve`` run for real.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from axon.discovery import discover, lookup
from axon.errors import DiscoveryError
from mlos_core.integrations.discovery import ConsulRegistrar, InstanceRecord
from tests.fixtures.common import free_port, wait_for
from tests.fixtures.discovery import RecordedApi
from tests.fixtures.discovery_answers import entry, meta


def test_passing_instances_are_members(recorded_api: RecordedApi) -> None:
    recorded_api.route(
        "GET",
        "/v1/health/service/mlos-core",
        [
            entry("core-2", 8082, meta("core-2", 8082)),
            entry("core-1", 8081, meta("core-1", 8081)),
            entry("core-3", 8083, None),  # registered by hand, no Meta: built from Address/Port
        ],
    )
    members = discover(f"consul://{recorded_api.hostport}?dc=dc2", "prod")
    assert [m.instance_id for m in members] == ["core-1", "core-2", "core-3"]
    assert members[0].endpoint == "http://127.0.0.1:8081"
    assert members[0].storage_path == "/var/lib/mlos/models"
    assert members[2].endpoint == "http://127.0.0.1:8083" and members[2].storage_path is None
    (request,) = recorded_api.requests
    assert request.query == {"passing": ["true"], "tag": ["mlos-cluster=prod"], "dc": ["dc2"]}


def test_acl_token_from_environment(
    recorded_api: RecordedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "s3cr3t")
    recorded_api.route("GET", "/v1/health/service/other", [entry("a", 1, meta("a", 1))])
    discover(f"consul://{recorded_api.hostport}?service=other", "prod")
    assert recorded_api.requests[0].headers["x-consul-token"] == "s3cr3t"


def test_malformed_entry_reported_others_kept(recorded_api: RecordedApi) -> None:
    bad = entry("core-bad", 0, {"instance_id": "core-bad", "cluster_name": "prod"})
    recorded_api.route(
        "GET", "/v1/health/service/mlos-core", [bad, entry("ok", 9, meta("ok", 9)), {"x": 1}]
    )
    result = lookup(f"consul://{recorded_api.hostport}", "prod")
    assert [m.instance_id for m in result.members] == ["ok"]
    assert result.warnings == [
        "service core-bad: malformed record: endpoint is missing or not a string",
        "service ?: malformed record: entry has no Service object",
    ]


def test_no_passing_instance_is_an_error(recorded_api: RecordedApi) -> None:
    recorded_api.route("GET", "/v1/health/service/mlos-core", [])
    with pytest.raises(DiscoveryError, match="no usable instances of cluster 'prod' in consul"):
        discover(f"consul://{recorded_api.hostport}", "prod")


def test_agent_error_and_unreachable_agent(recorded_api: RecordedApi) -> None:
    recorded_api.route("GET", "/v1/health/service/mlos-core", "ACL not found", status=403)
    with pytest.raises(DiscoveryError, match=r"consul discovery for cluster 'prod' failed.*403"):
        discover(f"consul://{recorded_api.hostport}", "prod")
    with pytest.raises(DiscoveryError, match="cannot connect"):
        discover(f"consul://127.0.0.1:{free_port()}", "prod", timeout=2)


def test_registrar_payload_and_deregister(recorded_api: RecordedApi) -> None:
    recorded_api.route("PUT", "/v1/agent/service/register", None)
    recorded_api.route("PUT", "/v1/agent/service/deregister/core-1", None)
    record = InstanceRecord("core-1", "http://127.0.0.1:8081", "prod", None)
    registrar = ConsulRegistrar(f"consul://{recorded_api.hostport}", record, ttl=6, timeout=5)
    registrar.register()
    registrar.deregister()
    register, deregister = recorded_api.requests
    body = json.loads(register.body)
    assert body["ID"] == "core-1" and body["Name"] == "mlos-core"
    assert body["Tags"] == ["mlos-cluster=prod"]
    assert (
        body["Meta"]["endpoint"] == "http://127.0.0.1:8081" and body["Meta"]["storage_path"] == ""
    )
    assert body["Check"]["HTTP"] == "http://127.0.0.1:8081/health"
    assert body["Check"]["Interval"] == "2s"
    assert deregister.path == "/v1/agent/service/deregister/core-1"


def test_registrar_registers_again_when_the_agent_lost_the_service(
    recorded_api: RecordedApi,
) -> None:
    recorded_api.route("PUT", "/v1/agent/service/register", None)
    recorded_api.route("GET", "/v1/agent/service/core-1", {"ID": "core-1", "Service": "mlos-core"})
    record = InstanceRecord("core-1", "http://127.0.0.1:8081", "prod", None)
    registrar = ConsulRegistrar(f"consul://{recorded_api.hostport}", record, ttl=6, timeout=5)
    registrar.keepalive()  # the agent knows it: nothing to do
    assert [r.method for r in recorded_api.requests] == ["GET"]
    del recorded_api.routes[("GET", "/v1/agent/service/core-1")]  # now the agent answers 404
    registrar.keepalive()
    assert [(r.method, r.path) for r in recorded_api.requests[1:]] == [
        ("GET", "/v1/agent/service/core-1"),
        ("PUT", "/v1/agent/service/register"),
    ]


@pytest.mark.slow
def test_mlos_core_serve_registers_and_deregisters(
    recorded_api: RecordedApi, mlos_server: Any
) -> None:
    recorded_api.route("PUT", "/v1/agent/service/register", None)
    recorded_api.route("PUT", "/v1/agent/service/deregister/core-c", None)
    recorded_api.route("GET", "/v1/agent/service/core-c", {"ID": "core-c"})
    srv = mlos_server(
        cluster="prod", discovery=f"consul://{recorded_api.hostport}", instance_id="core-c"
    )
    body = json.loads(recorded_api.requests[0].body)
    assert body["Meta"]["endpoint"] == srv.url
    assert body["Meta"]["storage_path"] == str(srv.models_dir.absolute())
    srv.stop()

    def puts() -> list[str]:
        return [r.path for r in recorded_api.requests if r.method == "PUT"]

    wait_for(lambda: len(puts()) == 2, timeout=5, what="deregistration")
    assert puts() == ["/v1/agent/service/register", "/v1/agent/service/deregister/core-c"]
