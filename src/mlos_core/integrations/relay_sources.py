"""What the relay learns from the discovery source: peers and the cluster's desired state.

- :class:`DiscoveryMembers`: the endpoints of a cluster's members (this instance's
  ``--cluster`` and each ``--accept-from``), as :func:`~mlos_core.integrations.discovery.
  list_members` lists them; a consul member whose check is critical is left out.
- :class:`EtcdDesiredState`: the records under ``<root>/clusters/<cluster>/desired/``
  (:mod:`modelpkg.desired`), read through etcd's JSON gateway. A record that is not one is
  logged (once) and left out; the others count.

The command line builds them and hands them to :class:`mlos_core.relay.Relay`.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from urllib.parse import urlsplit

import httpx

from mlos_core.integrations.discovery import list_members
from mlos_core.settings import Settings
from modelpkg.desired import DEFAULT_ROOT, DesiredModel, desired_prefix, parse_record
from modelpkg.errors import PackageError

log = logging.getLogger("mlos_core.relay")

ETCD_SCHEMES = ("etcd", "etcd+http", "etcd+https")


class DiscoveryMembers:
    """Members of any cluster of this instance's discovery source."""

    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout

    def endpoints(self, cluster: str) -> list[str]:
        listed = list_members(
            dataclasses.replace(self.settings, cluster=cluster), timeout=self.timeout
        )
        for warning in listed.warnings:
            log.warning("cluster %s: %s", cluster, warning)
        return [m.endpoint for m in listed.members if m.status != "critical"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _host_port(item: str) -> str:
    parts = urlsplit(f"//{item.strip()}")
    if not parts.hostname:
        raise ValueError(f"no host in {item!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 2379}"


class EtcdDesiredState:
    """The desired state of ``cluster`` in the etcd of ``uri`` (``etcd://h:p[,h:p][/root]``)."""

    def __init__(self, uri: str, cluster: str, timeout: float = 5.0) -> None:
        parts = urlsplit(uri)
        if parts.scheme.lower() not in ETCD_SCHEMES:
            raise ValueError(f"the desired state is kept in etcd; {uri!r} is not etcd://")
        scheme = "https" if parts.scheme.lower().endswith("+https") else "http"
        self.bases = [f"{scheme}://{_host_port(i)}" for i in parts.netloc.split(",")]
        self.prefix = desired_prefix(cluster, parts.path or DEFAULT_ROOT)
        self.timeout = timeout
        self._reported: set[str] = set()  # bad records already logged

    def describe(self) -> str:
        return f"etcd {','.join(self.bases)} {self.prefix}"

    def read(self) -> list[DesiredModel]:
        prefix = self.prefix
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the first key after the prefix
        body = {"key": _b64(prefix), "range_end": _b64(end)}
        errors = []
        for base in self.bases:
            try:
                response = httpx.post(f"{base}/v3/kv/range", json=body, timeout=self.timeout)
                response.raise_for_status()
                answer = response.json()
                break
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{base}: {exc}")
        else:
            raise ConnectionError("etcd unreachable: " + "; ".join(errors))
        kvs = answer.get("kvs", []) if isinstance(answer, dict) else None
        if not isinstance(kvs, list):
            raise ConnectionError("etcd's range answer has no kvs list")
        out = []
        for kv in kvs:
            try:
                key = base64.b64decode(kv.get("key", "")).decode("utf-8")
                value = base64.b64decode(kv.get("value", ""))
                out.append(parse_record(key, value, prefix))
            except (PackageError, ValueError, AttributeError) as exc:
                text = str(exc)
                if text not in self._reported:
                    self._reported.add(text)
                    log.warning("desired state: record left out: %s", text)
        return out
