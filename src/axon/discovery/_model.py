"""Discovery data: a cluster member, the result of one lookup, instance-record parsing and the
small URI helpers every backend shares.

An instance record is MLOS Core's ``mlos_instance_info_t`` as JSON (docs/discovery.md)::

    {"instance_id": "core-1", "endpoint": "http://10.0.0.5:8080",
     "cluster_name": "prod", "storage_path": "/var/lib/mlos/models"}

``storage_path`` may be absent or null; everything else is required.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

import httpx

from axon.errors import DiscoveryError


@dataclass(frozen=True)
class Member:
    """One discovered MLOS Core instance."""

    instance_id: str
    endpoint: str  # http(s) URL of the instance's API, no trailing slash
    cluster_name: str
    storage_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DiscoveryResult:
    """What one lookup found: the members, and one warning per record that could not be used."""

    backend: str  # the discovery URI, as configured
    cluster: str
    members: list[Member] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "cluster": self.cluster,
            "members": [m.to_dict() for m in self.members],
            "warnings": list(self.warnings),
        }


class RecordError(ValueError):
    """One instance record is malformed (internal: becomes a warning, never escapes)."""


def parse_record(raw: bytes | str | dict[str, Any], *, cluster: str) -> Member:
    """Validate one instance record; raise RecordError saying what is wrong with it."""
    if isinstance(raw, dict):
        data: Any = raw
    else:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecordError(f"not a JSON object but {type(data).__name__}")
    instance_id = data.get("instance_id")
    if not isinstance(instance_id, str) or not instance_id.strip():
        raise RecordError("instance_id is missing or not a non-empty string")
    endpoint = check_endpoint(data.get("endpoint"))
    cluster_name = data.get("cluster_name")
    if cluster_name != cluster:
        raise RecordError(f"cluster_name is {cluster_name!r}, expected {cluster!r}")
    storage_path = data.get("storage_path")
    if storage_path is not None and not isinstance(storage_path, str):
        raise RecordError("storage_path is not a string")
    return Member(instance_id, endpoint, cluster, storage_path or None)


def add_member(
    result: DiscoveryResult,
    instance_id: str,
    host: str,
    port: int,
    opts: dict[str, str],
    label: str,
) -> None:
    """Add the instance at ``host:port`` to ``result``, for backends whose answer is only an
    address: the URI's ``scheme`` and ``storage_path`` options complete its record. A record
    that does not validate becomes a warning starting with ``label``."""
    record = {
        "instance_id": instance_id,
        "endpoint": host_url(opts.get("scheme", "http"), host, port),
        "cluster_name": result.cluster,
        "storage_path": opts.get("storage_path"),
    }
    try:
        result.members.append(parse_record(record, cluster=result.cluster))
    except RecordError as exc:
        result.warnings.append(f"{label}: {exc}")


def check_endpoint(value: object) -> str:
    """An instance endpoint must be an absolute http(s) URL; returned without trailing '/'."""
    if not isinstance(value, str) or not value:
        raise RecordError("endpoint is missing or not a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RecordError(f"endpoint {value!r} is not an http(s) URL")
    return value.rstrip("/")


def split_hostport(item: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` -> (host, port); ValueError when malformed."""
    parts = urlsplit(f"//{item}")
    if not parts.hostname:
        raise ValueError(f"no host in {item!r}")
    port = parts.port or default_port  # .port raises ValueError on a bad port
    return parts.hostname, port


def host_url(scheme: str, host: str, port: int) -> str:
    """An http(s) base URL, bracketing IPv6 literals."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def query_params(parts: SplitResult) -> dict[str, str]:
    """The URI's query as a flat dict (last value wins)."""
    return {k: v[-1] for k, v in parse_qs(parts.query).items()}


def bad_uri(uri: str, cluster: str, why: str, example: str) -> DiscoveryError:
    return DiscoveryError(
        f"discovery URI {uri!r} for cluster '{cluster}' is invalid: {why}",
        hint=f"write it like {example} (clusters.{cluster}.discovery in config.yaml)",
        target=cluster,
        url=uri,
    )


def no_members(result: DiscoveryResult, where: str, fix: str) -> DiscoveryError:
    """The error for a lookup that answered but found nothing usable."""
    detail = ""
    if result.warnings:
        detail = f"; skipped {len(result.warnings)} record(s): " + "; ".join(result.warnings)
    return DiscoveryError(
        f"discovery found no usable instances of cluster '{result.cluster}' in {where}{detail}",
        hint=fix,
        target=result.cluster,
        url=result.backend,
    )


def unreachable(kind: str, uri: str, cluster: str, failures: list[str], fix: str) -> DiscoveryError:
    """The error for a backend none of whose addresses answered usefully."""
    return DiscoveryError(
        f"{kind} discovery for cluster '{cluster}' failed: " + "; ".join(failures),
        hint=fix,
        target=cluster,
        url=uri,
    )


def describe_http_error(exc: Exception) -> str:
    """One short phrase for an HTTP client failure."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} {exc.response.text[:200]!r}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, json.JSONDecodeError):
        return "answer is not JSON (is the URI pointing at the right service and port?)"
    return f"{type(exc).__name__}: {exc}"
