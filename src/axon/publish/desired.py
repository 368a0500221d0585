"""A cluster's desired state in its discovery store: recorded after a publish succeeded.

When a publish, promotion or sync to a cluster found through etcd succeeded, the build each
member should hold is written next to the member records (the key layout, and the record,
are :mod:`modelpkg.desired`'s; docs/relay.md)::

    <root>/clusters/<cluster>/desired/<model id, percent-encoded>   (no lease)
        {"model_id": ..., "manifest_sha256": ..., "published_at": ...}

Every ``mlos-core`` of the cluster reads these and pulls from its peers what it lacks: an
instance that joins later, or missed the publish, catches up without anyone publishing
again. Other discovery backends (Consul, Kubernetes, DNS) have no store of ours to write to:
nothing is recorded there (``axon sync`` heals those clusters on demand).

A failure to record never fails the publish (the members have the model): the report says
it, and what to do.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from axon.discovery.etcd import parse_uri, prefix_range_end
from axon.errors import AxonError
from modelpkg.desired import (
    DesiredModel,
    DesiredStateError,
    desired_key,
    desired_prefix,
    parse_record,
)

if TYPE_CHECKING:
    from axon.targets import ClusterTarget
    from modelpkg.manifest import Manifest
    from modelpkg.refs import ModelRef


def is_etcd(uri: str | None) -> bool:
    return bool(uri) and urlsplit(uri or "").scheme.lower().startswith("etcd")


def build_digest(ref: ModelRef, manifest: Manifest) -> str:
    """The digest an instance shows for ``manifest`` published as ``ref`` (what a commit
    answers and a pull asks for)."""
    return manifest.as_uploaded(ref.namespace, ref.name, ref.version).digest()


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def record_desired(
    cluster: ClusterTarget, ref: ModelRef, manifest: Manifest, timeout: float
) -> str | None:
    """Write ``ref``'s record for ``cluster`` when it is discovered through etcd; one line
    for the report (what was recorded, or why not), None for other clusters."""
    if not is_etcd(cluster.discovery):
        return None
    assert cluster.discovery is not None
    return put_desired(cluster.discovery, cluster.name, ref, build_digest(ref, manifest), timeout)


def put_desired(uri: str, cluster: str, ref: ModelRef, digest: str, timeout: float) -> str:
    """``PUT`` the record of ``ref`` = ``digest`` under ``cluster`` (each etcd address in turn
    until one takes it); the report's line."""
    try:
        bases, root = parse_uri(uri, cluster)
        key = desired_key(cluster, ref.id, root)
        value = DesiredModel.now(ref.id, digest).to_json()
    except AxonError as exc:  # a discovery URI or cluster name a key cannot hold
        return f"desired state NOT recorded: {exc}"
    failures = []
    for base in bases:
        try:
            answer = httpx.post(
                f"{base}/v3/kv/put",
                json={"key": _b64(key), "value": _b64(value)},
                timeout=min(timeout, 10.0),
            )
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            failures.append(f"{base}: {type(exc).__name__}: {exc}")
            continue
        return f"desired state recorded: {key} = {digest[:12]} (members catch up from it)"
    return (
        f"desired state NOT recorded in {uri} ({'; '.join(failures)}): instances that join "
        f"later will not catch up by themselves; run `axon sync {cluster}` after they join"
    )


def read_desired(uri: str, cluster: str, timeout: float) -> tuple[list[DesiredModel], list[str]]:
    """Every record of ``cluster`` (and one warning per record that is not one); raises
    httpx.HTTPError when no etcd address answers."""
    bases, root = parse_uri(uri, cluster)
    prefix = desired_prefix(cluster, root)
    last: Exception | None = None
    for base in bases:
        body = {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix.encode()))}
        try:
            answer = httpx.post(f"{base}/v3/kv/range", json=body, timeout=min(timeout, 10.0))
            answer.raise_for_status()
            kvs = answer.json().get("kvs", [])
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
            continue
        records, warnings = [], []
        for kv in kvs if isinstance(kvs, list) else []:
            key = base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")
            try:
                records.append(parse_record(key, base64.b64decode(kv.get("value", "")), prefix))
            except (DesiredStateError, ValueError) as exc:
                warnings.append(str(exc))
        return records, warnings
    assert last is not None
    raise last


def forget_desired(uri: str, cluster: str, ref: ModelRef, timeout: float) -> tuple[str, str | None]:
    """Delete ``ref``'s record under ``cluster`` (each etcd address in turn until one
    answers): ``(key, what was recorded)``, the second None when there was no record.
    Raises httpx.HTTPError when no etcd address answers."""
    bases, root = parse_uri(uri, cluster)
    key = desired_key(cluster, ref.id, root)
    last: Exception | None = None
    for base in bases:
        try:
            answer = httpx.post(
                f"{base}/v3/kv/deleterange",
                json={"key": _b64(key), "prev_kv": True},
                timeout=min(timeout, 10.0),
            )
            answer.raise_for_status()
            prev = answer.json().get("prev_kvs") or []
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
            continue
        if not isinstance(prev, list) or not prev:
            return key, None
        raw = base64.b64decode(prev[0].get("value", ""))
        try:
            record = parse_record(key, raw, desired_prefix(cluster, root))
        except (DesiredStateError, ValueError):
            return key, f"a record that was not one ({raw[:80]!r})"
        return key, f"build {record.manifest_sha256[:12]}, recorded {record.published_at}"
    assert last is not None
    raise last


__all__ = [
    "build_digest",
    "forget_desired",
    "is_etcd",
    "put_desired",
    "read_desired",
    "record_desired",
]
