"""Service discovery: find the MLOS Core instances of a cluster from a discovery source.

A cluster in ``config.yaml`` may name a source instead of (or besides) a static list::

    clusters:                       # or under mlos_targets: with type: cluster
      prod:
        discovery: etcd://127.0.0.1:2379

Backends, chosen by the URI scheme (each imported only when used)::

    etcd://host:port[,host:port][/root]     etcd v3 JSON gateway, lease-kept records
    consul://host:port[?service=&dc=]       consul health API, passing instances only
    k8s://namespace/service[?port=]         Kubernetes EndpointSlices / Endpoints, ready pods
    dns+srv://_mlos._tcp.name[?nameserver=] DNS SRV records (needs axon-publish[discovery])

``discover()`` returns the members; ``lookup()`` also returns a warning for every record that
was malformed (one bad record never hides the others). Both raise ``DiscoveryError`` naming the
backend and cluster when the backend is unreachable or the cluster has no usable member.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from axon.discovery._model import DiscoveryResult, Member
from axon.discovery.health import MemberHealth, check_members
from axon.errors import DiscoveryError

if TYPE_CHECKING:
    from axon.targets import InstanceTarget

__all__ = [
    "BACKENDS",
    "DiscoveryError",
    "DiscoveryResult",
    "Member",
    "MemberHealth",
    "check_members",
    "discover",
    "lookup",
    "member_target",
]

# URI scheme -> "module:function" with signature (uri, cluster, *, timeout) -> DiscoveryResult.
BACKENDS: dict[str, str] = {
    "etcd": "axon.discovery.etcd:lookup",
    "etcd+http": "axon.discovery.etcd:lookup",
    "etcd+https": "axon.discovery.etcd:lookup",
    "consul": "axon.discovery.consul:lookup",
    "consul+http": "axon.discovery.consul:lookup",
    "consul+https": "axon.discovery.consul:lookup",
    "k8s": "axon.discovery.k8s:lookup",
    "kubernetes": "axon.discovery.k8s:lookup",
    "dns+srv": "axon.discovery.dns_srv:lookup",
}


def _backend(uri: str, cluster: str) -> Callable[..., DiscoveryResult]:
    scheme = urlsplit(uri).scheme.lower()
    spec = BACKENDS.get(scheme)
    if spec is None:
        known = "etcd://, consul://, k8s:// or dns+srv://"
        raise DiscoveryError(
            f"unknown discovery scheme {scheme + '://' if scheme else uri!r} for cluster"
            f" '{cluster}'",
            hint=f"use one of {known} (clusters.{cluster}.discovery in config.yaml)",
            target=cluster,
            url=uri,
        )
    module, func = spec.split(":")
    backend: Callable[..., DiscoveryResult] = getattr(importlib.import_module(module), func)
    return backend


def lookup(uri: str, cluster: str, *, timeout: float = 5.0) -> DiscoveryResult:
    """Ask the discovery source ``uri`` for the members of ``cluster``.

    Returns members sorted by instance id plus one warning per unusable record. Raises
    ``DiscoveryError`` when the source cannot be asked, or answers with no usable member.
    """
    return _backend(uri, cluster)(uri, cluster, timeout=timeout)


def discover(uri: str, cluster: str, *, timeout: float = 5.0) -> list[Member]:
    """The members of ``cluster`` according to ``uri`` (see ``lookup`` for warnings)."""
    return lookup(uri, cluster, timeout=timeout).members


def member_target(member: Member, template: InstanceTarget | None = None) -> InstanceTarget:
    """An ``InstanceTarget`` for a discovered member, so a discovered cluster publishes exactly
    like a static one. Access settings (method, token, ssh user/key/options, modes, timeout)
    come from ``template`` (the cluster's defaults); without one the member is reached through
    its API. The member's own host is used for ssh, its own storage path when it reported one."""
    import dataclasses

    from axon.targets import InstanceTarget

    if template is None:
        return InstanceTarget(
            name=member.instance_id,
            endpoint=member.endpoint,
            access_method="api",
            storage_path=member.storage_path,
            origin="cluster",
        )
    ssh_host = template.ssh_host
    if template.access_method == "ssh":
        ssh_host = urlsplit(member.endpoint).hostname
    return dataclasses.replace(
        template,
        name=member.instance_id,
        endpoint=member.endpoint,
        storage_path=member.storage_path or template.storage_path,
        ssh_host=ssh_host,
        origin="cluster",
    )
