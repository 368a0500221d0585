"""Consul discovery through the agent's HTTP health API (passing instances only).

URI: ``consul://host:port[?service=mlos-core&dc=DC]`` (``consul+https://`` for TLS). The ACL
token, when needed, comes from ``CONSUL_HTTP_TOKEN`` as with the consul CLI (never the URI:
URIs end up in logs). ``mlos-core serve --discovery consul://...`` registers each instance as::

    service "mlos-core", ID <instance_id>, tag "mlos-cluster=<cluster>",
    Meta {instance_id, endpoint, cluster_name, storage_path}, an HTTP check on <endpoint>/health

and axon asks ``GET /v1/health/service/mlos-core?passing=true&tag=mlos-cluster=<cluster>``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import httpx

from axon.discovery._model import (
    DiscoveryResult,
    RecordError,
    bad_uri,
    describe_http_error,
    host_url,
    no_members,
    parse_record,
    query_params,
    split_hostport,
    unreachable,
)

DEFAULT_PORT = 8500
DEFAULT_SERVICE = "mlos-core"
EXAMPLE = "consul://127.0.0.1:8500 or consul://consul:8500?service=mlos-core&dc=dc1"


def cluster_tag(cluster: str) -> str:
    """The service tag that marks an instance as a member of ``cluster``."""
    return f"mlos-cluster={cluster}"


def lookup(uri: str, cluster: str, *, timeout: float) -> DiscoveryResult:
    parts = urlsplit(uri)
    try:
        host, port = split_hostport(parts.netloc, DEFAULT_PORT)
    except ValueError as exc:
        raise bad_uri(uri, cluster, str(exc), EXAMPLE) from None
    scheme = "https" if parts.scheme.endswith("+https") else "http"
    opts = query_params(parts)
    service = opts.get("service", DEFAULT_SERVICE)
    params = {"passing": "true", "tag": cluster_tag(cluster)}
    if "dc" in opts:
        params["dc"] = opts["dc"]
    headers = {}
    if os.environ.get("CONSUL_HTTP_TOKEN"):
        headers["X-Consul-Token"] = os.environ["CONSUL_HTTP_TOKEN"]
    base = host_url(scheme, host, port)
    try:
        response = httpx.get(
            f"{base}/v1/health/service/{service}", params=params, headers=headers, timeout=timeout
        )
        response.raise_for_status()
        entries = response.json()
        if not isinstance(entries, list):
            raise ValueError("health answer is not a list")
    except (httpx.HTTPError, ValueError) as exc:
        raise unreachable(
            "consul",
            uri,
            cluster,
            [f"{base}: {describe_http_error(exc)}"],
            "check that the consul agent runs, the address is right and CONSUL_HTTP_TOKEN"
            " allows reading the service",
        ) from exc
    result = DiscoveryResult(uri, cluster)
    for entry in entries:
        try:
            result.members.append(parse_record(entry_record(entry, cluster), cluster=cluster))
        except RecordError as exc:
            result.warnings.append(f"service {_service_id(entry)}: malformed record: {exc}")
    result.members.sort(key=lambda m: m.instance_id)
    if not result.members:
        raise no_members(
            result,
            f"consul {base} (service {service!r}, tag {cluster_tag(cluster)!r}, passing only)",
            f"start instances with `mlos-core serve --cluster {cluster} --discovery {uri}`,"
            " check their health checks pass, or check the cluster name",
        )
    return result


def entry_record(entry: Any, cluster: str) -> dict[str, Any]:
    """An instance record from one ``/v1/health/service`` entry: Service.Meta, completed with
    the service's own ID/address/port when the meta lacks them (the tag filter already chose
    the cluster, so a hand-registered service without Meta is still a member)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("Service"), dict):
        raise RecordError("entry has no Service object")
    service: dict[str, Any] = entry["Service"]
    meta = service.get("Meta") or {}
    if not isinstance(meta, dict):
        raise RecordError("Service.Meta is not an object")
    record: dict[str, Any] = dict(meta)
    record.setdefault("instance_id", service.get("ID"))
    record.setdefault("cluster_name", cluster)
    if not record.get("endpoint"):
        node = entry.get("Node") if isinstance(entry.get("Node"), dict) else {}
        address = service.get("Address") or (node or {}).get("Address")
        port = service.get("Port")
        if address and isinstance(port, int) and port > 0:
            record["endpoint"] = host_url("http", str(address), port)
    record["storage_path"] = record.get("storage_path") or None  # Meta values are strings
    return record


def _service_id(entry: Any) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("Service"), dict):
        return str(entry["Service"].get("ID", "?"))
    return "?"
