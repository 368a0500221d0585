"""Kubernetes discovery: the ready endpoints of the Service that fronts the MLOS Core pods.

URI: ``k8s://namespace/service[?port=http&scheme=http&storage_path=/var/lib/mlos/models]``
(empty namespace = the pod's own namespace). Nothing registers: the Service's selector makes
Kubernetes list each ready pod. The API server is found like client-go's in-cluster config:
``KUBERNETES_SERVICE_HOST``/``_PORT`` plus the service-account token and CA under
``/var/run/secrets/kubernetes.io/serviceaccount``; or, outside a cluster without a kubeconfig,
``AXON_K8S_API`` (e.g. ``http://127.0.0.1:8001`` from ``kubectl proxy``) and optionally
``AXON_K8S_TOKEN``. Asked: EndpointSlices (``discovery.k8s.io/v1``, label
``kubernetes.io/service-name``), falling back to the core ``Endpoints`` object on 404.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from axon.discovery._model import (
    DiscoveryResult,
    add_member,
    bad_uri,
    describe_http_error,
    host_url,
    no_members,
    query_params,
    unreachable,
)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXAMPLE = "k8s://mlos/mlos-core or k8s://mlos/mlos-core?port=http"


@dataclass(frozen=True)
class ApiServer:
    url: str
    token: str | None
    verify: str | bool  # CA bundle path, or True for the system store


@dataclass(frozen=True)
class Address:
    """One endpoint address of the Service with its readiness."""

    ip: str
    name: str  # pod name (targetRef), else hostname, else the IP
    ready: bool


def api_server(sa_dir: Path = SERVICE_ACCOUNT_DIR) -> ApiServer | None:
    """Where the Kubernetes API is, from the environment; None when we are not told."""
    explicit = os.environ.get("AXON_K8S_API")
    if explicit:
        return ApiServer(explicit.rstrip("/"), os.environ.get("AXON_K8S_TOKEN"), True)
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = int(os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
    token_file, ca_file = sa_dir / "token", sa_dir / "ca.crt"
    token = token_file.read_text().strip() if token_file.exists() else None
    return ApiServer(
        host_url("https", host, port), token, str(ca_file) if ca_file.exists() else True
    )


def lookup(uri: str, cluster: str, *, timeout: float) -> DiscoveryResult:
    parts = urlsplit(uri)
    namespace, service = parts.netloc, parts.path.strip("/")
    if not service or "/" in service:
        raise bad_uri(uri, cluster, "expected k8s://namespace/service", EXAMPLE)
    if not namespace and (SERVICE_ACCOUNT_DIR / "namespace").exists():
        namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
    server = api_server()
    if server is None:
        raise unreachable(
            "kubernetes",
            uri,
            cluster,
            ["not running in a pod (no KUBERNETES_SERVICE_HOST) and AXON_K8S_API is not set"],
            "run inside the cluster, or set AXON_K8S_API (e.g. http://127.0.0.1:8001 with"
            " `kubectl proxy`)",
        )
    opts = query_params(parts)
    try:
        addresses, port = fetch_addresses(server, namespace, service, opts.get("port"), timeout)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise unreachable(
            "kubernetes",
            uri,
            cluster,
            [f"{server.url}: {describe_http_error(exc)}"],
            "check the namespace/service names and that the service account may list"
            " endpointslices (RBAC)",
        ) from exc
    return _result(uri, cluster, addresses, port, opts, f"service {namespace}/{service}")


def _result(
    uri: str,
    cluster: str,
    addresses: list[Address],
    port: int | None,
    opts: dict[str, str],
    where: str,
) -> DiscoveryResult:
    result = DiscoveryResult(uri, cluster)
    if port is None:
        result.warnings.append(f"{where}: no port named {opts.get('port')!r}")
        addresses = []
    for addr in addresses:
        if not addr.ready:
            result.warnings.append(f"pod {addr.name}: not ready, skipped")
            continue
        assert port is not None
        add_member(result, addr.name, addr.ip, port, opts, f"pod {addr.name}")
    result.members.sort(key=lambda m: m.instance_id)
    if not result.members:
        raise no_members(result, where, "check the pods are ready and the Service selects them")
    return result


def fetch_addresses(
    server: ApiServer, namespace: str, service: str, port_name: str | None, timeout: float
) -> tuple[list[Address], int | None]:
    """EndpointSlices first; the legacy Endpoints object when the slice API is missing."""
    headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
    with httpx.Client(headers=headers, verify=server.verify, timeout=timeout) as client:
        ns = quote(namespace, safe="")
        response = client.get(
            f"{server.url}/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            params={"labelSelector": f"kubernetes.io/service-name={service}"},
        )
        if response.status_code != 404:
            response.raise_for_status()
            return slice_addresses(response.json(), port_name)
        response = client.get(
            f"{server.url}/api/v1/namespaces/{ns}/endpoints/{quote(service, safe='')}"
        )
        response.raise_for_status()
        return endpoints_addresses(response.json(), port_name)


def _pick_port(ports: list[dict[str, Any]], name: str | None) -> int | None:
    for port in ports:
        if name is None or port.get("name") == name:
            return int(port["port"])
    return None


def slice_addresses(
    data: dict[str, Any], port_name: str | None
) -> tuple[list[Address], int | None]:
    """Addresses from an ``EndpointSliceList``: one per pod.

    A dual-stack Service has an IPv4 and an IPv6 slice listing the same pods, and the API
    says an endpoint's addresses are fungible (use the first): a pod seen twice is kept
    once, ready over not ready, then IPv4 over IPv6.
    """
    by_pod: dict[str, Address] = {}
    port: int | None = None
    for item in data.get("items") or []:
        port = port or _pick_port(item.get("ports") or [], port_name)
        for ep in item.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            # conditions.ready unset means "unknown": the API docs say to treat it as ready.
            ready = (ep.get("conditions") or {}).get("ready") is not False
            ip = str(addresses[0])
            name = (ep.get("targetRef") or {}).get("name") or ep.get("hostname") or ip
            found = Address(ip, name, ready)
            kept = by_pod.get(name)
            if kept is None or _preferred(found) > _preferred(kept):
                by_pod[name] = found
    return list(by_pod.values()), port


def _preferred(addr: Address) -> tuple[bool, bool]:
    return addr.ready, ":" not in addr.ip


def endpoints_addresses(
    data: dict[str, Any], port_name: str | None
) -> tuple[list[Address], int | None]:
    """Addresses from a core/v1 ``Endpoints`` object."""
    found: list[Address] = []
    port: int | None = None
    for subset in data.get("subsets") or []:
        port = port or _pick_port(subset.get("ports") or [], port_name)
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for addr in subset.get(key) or []:
                name = (addr.get("targetRef") or {}).get("name") or addr.get("hostname")
                found.append(Address(addr["ip"], name or addr["ip"], ready))
    return found, port
