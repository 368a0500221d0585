"""etcd v3 discovery through etcd's JSON gRPC gateway (plain HTTP, no grpc dependency).

URI: ``etcd://host:port[,host:port...][/root]`` (``etcd+https://`` for TLS). Each address is
tried in turn until one answers. Key layout (``root`` defaults to ``/mlos``)::

    /mlos/clusters/<cluster>/instances/<instance_id>  ->  instance record (JSON)

Instances write their key under a lease that they keep alive (``mlos-core serve --discovery``),
so a dead instance's key disappears when its lease expires.
"""

from __future__ import annotations

import base64
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
    split_hostport,
    unreachable,
)

DEFAULT_PORT = 2379
DEFAULT_ROOT = "/mlos"
EXAMPLE = "etcd://127.0.0.1:2379 or etcd://etcd-1:2379,etcd-2:2379"


def instances_prefix(cluster: str, root: str = DEFAULT_ROOT) -> str:
    """The key prefix under which a cluster's instance records live (ends with '/')."""
    return f"{root.rstrip('/')}/clusters/{cluster}/instances/"


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's ``range_end`` for "every key starting with prefix": prefix with its last byte + 1."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_uri(uri: str, cluster: str) -> tuple[list[str], str]:
    """-> (base URLs of each etcd address, key root)."""
    parts = urlsplit(uri)
    scheme = "https" if parts.scheme.endswith("+https") else "http"
    bases: list[str] = []
    for item in parts.netloc.split(","):
        try:
            host, port = split_hostport(item.strip(), DEFAULT_PORT)
        except ValueError as exc:
            raise bad_uri(uri, cluster, str(exc), EXAMPLE) from None
        bases.append(host_url(scheme, host, port))
    root = parts.path.rstrip("/") or DEFAULT_ROOT
    return bases, root


def range_request(base: str, prefix: str, timeout: float) -> list[dict[str, Any]]:
    """POST /v3/kv/range for every key under ``prefix``; returns the ``kvs`` list."""
    key = prefix.encode()
    body = {"key": _b64(key), "range_end": _b64(prefix_range_end(key))}
    response = httpx.post(f"{base}/v3/kv/range", json=body, timeout=timeout)
    response.raise_for_status()
    kvs = response.json().get("kvs", [])
    if not isinstance(kvs, list):
        raise ValueError("range answer has no kvs list")
    return kvs


def lookup(uri: str, cluster: str, *, timeout: float) -> DiscoveryResult:
    bases, root = parse_uri(uri, cluster)
    prefix = instances_prefix(cluster, root)
    failures: list[str] = []
    for base in bases:
        try:
            kvs = range_request(base, prefix, timeout)
        except (httpx.HTTPError, ValueError) as exc:
            failures.append(f"{base}: {describe_http_error(exc)}")
            continue
        result = DiscoveryResult(uri, cluster)
        _collect(result, kvs, cluster)
        if not result.members:
            raise no_members(
                result,
                f"etcd {base} under {prefix}",
                f"start instances with `mlos-core serve --cluster {cluster} --discovery {uri}`"
                " or check the cluster name",
            )
        return result
    raise unreachable(
        "etcd", uri, cluster, failures, "check that etcd runs and the address in the URI is right"
    )


def _collect(result: DiscoveryResult, kvs: list[dict[str, Any]], cluster: str) -> None:
    for kv in kvs:
        key = base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")
        try:
            raw = base64.b64decode(kv.get("value", ""))
            result.members.append(parse_record(raw, cluster=cluster))
        except (RecordError, ValueError) as exc:
            result.warnings.append(f"{key}: malformed record: {exc}")
    result.members.sort(key=lambda m: m.instance_id)
