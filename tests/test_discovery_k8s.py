"""Kubernetes discovery.

No API server can run here, so it is a real loopback HTTP server (``recorded_api``) answering
with an ``EndpointSliceList`` and an ``Endpoints`` object shaped exactly like the Kubernetes API
reference shows them; ``AXON_K8S_API`` points axon at it (as with ``kubectl proxy``). Pod
addresses are loopback (127.0.0.x) so nothing outside this machine is ever contacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from axon.discovery import check_members, discover, lookup
from axon.discovery.k8s import api_server
from axon.errors import DiscoveryError
from tests.fixtures.discovery import RecordedApi
from tests.fixtures.discovery_answers import SLICES, slice_endpoint, slice_list

ENDPOINTS = "/api/v1/namespaces/mlos/endpoints/mlos-core"


@pytest.fixture
def k8s_api(recorded_api: RecordedApi, monkeypatch: pytest.MonkeyPatch) -> RecordedApi:
    monkeypatch.setenv("AXON_K8S_API", recorded_api.url)
    monkeypatch.setenv("AXON_K8S_TOKEN", "sa-token")
    return recorded_api


def test_ready_pods_from_endpointslices(k8s_api: RecordedApi, mlos_server: Any) -> None:
    srv = mlos_server()
    endpoints = [
        slice_endpoint("127.0.0.1", "mlos-core-0", True),
        slice_endpoint("127.0.0.12", "mlos-core-1", None),  # unknown readiness counts as ready
        slice_endpoint("127.0.0.13", "mlos-core-2", False),
    ]
    k8s_api.route("GET", SLICES, slice_list(srv.port, endpoints))
    result = lookup("k8s://mlos/mlos-core?port=http&storage_path=/models", "prod")
    assert [m.instance_id for m in result.members] == ["mlos-core-0", "mlos-core-1"]
    assert result.members[0].endpoint == srv.url
    assert result.members[1].storage_path == "/models"
    assert result.warnings == ["pod mlos-core-2: not ready, skipped"]
    (request,) = k8s_api.requests
    assert request.query == {"labelSelector": ["kubernetes.io/service-name=mlos-core"]}
    assert request.headers["authorization"] == "Bearer sa-token"
    assert check_members(result.members[:1])[0].healthy


def test_legacy_endpoints_when_slices_are_missing(k8s_api: RecordedApi) -> None:
    # No route for SLICES: the recorded server answers 404, as an old API server would.
    k8s_api.route(
        "GET",
        ENDPOINTS,
        {
            "kind": "Endpoints",
            "apiVersion": "v1",
            "metadata": {"name": "mlos-core", "namespace": "mlos"},
            "subsets": [
                {
                    "addresses": [
                        {"ip": "127.0.0.21", "targetRef": {"kind": "Pod", "name": "core-a"}},
                        {"ip": "127.0.0.22", "hostname": "core-b"},
                    ],
                    "notReadyAddresses": [{"ip": "127.0.0.23"}],
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                }
            ],
        },
    )
    result = lookup("k8s://mlos/mlos-core", "prod")
    assert [(m.instance_id, m.endpoint) for m in result.members] == [
        ("core-a", "http://127.0.0.21:8080"),
        ("core-b", "http://127.0.0.22:8080"),
    ]
    assert result.warnings == ["pod 127.0.0.23: not ready, skipped"]
    assert [r.path for r in k8s_api.requests] == [SLICES, ENDPOINTS]


def test_no_ready_pod_and_forbidden(k8s_api: RecordedApi) -> None:
    k8s_api.route("GET", SLICES, slice_list(8080, [slice_endpoint("127.0.0.9", "p", False)]))
    with pytest.raises(DiscoveryError, match=r"no usable instances .* service mlos/mlos-core"):
        discover("k8s://mlos/mlos-core", "prod")
    k8s_api.route("GET", SLICES, {"kind": "Status", "reason": "Forbidden", "code": 403}, 403)
    with pytest.raises(DiscoveryError, match=r"kubernetes discovery .* HTTP 403.*RBAC"):
        discover("k8s://mlos/mlos-core", "prod")


def test_unknown_port_name(k8s_api: RecordedApi) -> None:
    k8s_api.route("GET", SLICES, slice_list(8080, [slice_endpoint("127.0.0.9", "p", True)]))
    with pytest.raises(DiscoveryError, match="no port named 'grpc'"):
        discover("k8s://mlos/mlos-core?port=grpc", "prod")


def test_not_in_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AXON_K8S_API", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DiscoveryError, match="AXON_K8S_API is not set"):
        discover("k8s://mlos/mlos-core", "prod")
    with pytest.raises(DiscoveryError, match="expected k8s://namespace/service"):
        discover("k8s://mlos", "prod")


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AXON_K8S_API", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    server = api_server(tmp_path)
    assert server is not None  # only computed, never contacted
    assert server.url == "https://10.96.0.1:443"
    assert server.token == "tok" and server.verify == str(tmp_path / "ca.crt")


def test_a_dual_stack_service_lists_each_pod_once() -> None:
    """A dual-stack Service has an IPv4 and an IPv6 slice naming the same pods: one member
    per pod (ready first, then IPv4); an endpoint's extra addresses are the same pod."""
    from axon.discovery.k8s import slice_addresses

    v4 = slice_list(8080, [slice_endpoint("127.0.0.2", "core-a", True)])["items"][0]
    v4["endpoints"].append(slice_endpoint("127.0.0.3", "core-b", False))
    v4["endpoints"][0]["addresses"].append("127.0.0.9")
    v6 = slice_list(8080, [slice_endpoint("::1", "core-a", True)])["items"][0]
    v6["endpoints"].append(slice_endpoint("::1", "core-b", True))
    v6["addressType"] = "IPv6"
    addresses, port = slice_addresses({"items": [v6, v4]}, "http")
    got = sorted((a.name, a.ip, a.ready) for a in addresses)
    assert got == [("core-a", "127.0.0.2", True), ("core-b", "::1", True)]
    assert port == 8080
