"""DNS SRV discovery (Consul DNS, Kubernetes headless Services, plain zone files).

URI: ``dns+srv://_mlos._tcp.prod.example.internal[?nameserver=10.0.0.2:53&scheme=http
&storage_path=/var/lib/mlos/models]``. Each SRV record is one instance: ``http://target:port``,
ordered by priority then weight. With an explicit ``nameserver`` the target names are resolved
through that same server (the system resolver would not know them); otherwise they stay names.
Needs dnspython: ``pip install 'axon-publish[discovery]'``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from axon.discovery._model import (
    DiscoveryResult,
    add_member,
    bad_uri,
    no_members,
    query_params,
    split_hostport,
    unreachable,
)
from axon.errors import DiscoveryError

EXAMPLE = "dns+srv://_mlos._tcp.prod.example.internal?nameserver=127.0.0.1:5353"


def _resolver(nameserver: str | None, timeout: float) -> Any:
    try:
        import dns.resolver
    except ModuleNotFoundError:
        raise DiscoveryError(
            "DNS SRV discovery needs the dnspython package",
            hint="pip install 'axon-publish[discovery]'",
        ) from None
    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        host, port = split_hostport(nameserver, 53)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    return resolver


def lookup(uri: str, cluster: str, *, timeout: float) -> DiscoveryResult:
    parts = urlsplit(uri)
    name = parts.netloc
    if not name:
        raise bad_uri(uri, cluster, "no SRV name", EXAMPLE)
    opts = query_params(parts)
    try:
        resolver = _resolver(opts.get("nameserver"), timeout)
    except ValueError as exc:
        raise bad_uri(uri, cluster, f"bad nameserver: {exc}", EXAMPLE) from None
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(name, "SRV")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        raise no_members(
            DiscoveryResult(uri, cluster),
            f"DNS (no SRV records for {name})",
            "check the SRV name and that the instances are published in DNS",
        ) from None
    except dns.exception.DNSException as exc:
        where = opts.get("nameserver", "the system resolver")
        raise unreachable(
            "dns+srv", uri, cluster, [f"{where}: {exc}"], "check the nameserver answers"
        ) from exc
    records = sorted(answer, key=lambda r: (r.priority, -r.weight, str(r.target), r.port))
    result = DiscoveryResult(uri, cluster)
    hosts = [str(r.target).rstrip(".") for r in records]
    for record, host in zip(records, hosts, strict=True):
        address = host
        if "nameserver" in opts:
            address = _address(resolver, answer, host) or host
        instance_id = host if hosts.count(host) == 1 else f"{host}:{record.port}"
        add_member(result, instance_id, address, record.port, opts, f"SRV {host}:{record.port}")
    if not result.members:
        raise no_members(result, f"DNS SRV {name}", "check the SRV records")
    return result


def _address(resolver: Any, answer: Any, host: str) -> str | None:
    """The host's first A (then AAAA) address: from the additional section when the server
    sent it, else asked of the same resolver. None when it has none."""
    import dns.exception
    import dns.rdatatype

    for rrset in answer.response.additional:
        if str(rrset.name).rstrip(".") == host and rrset.rdtype in (
            dns.rdatatype.A,
            dns.rdatatype.AAAA,
        ):
            return str(next(iter(rrset)))
    for rdtype in ("A", "AAAA"):
        try:
            return str(next(iter(resolver.resolve(host, rdtype))))
        except dns.exception.DNSException:
            continue
    return None
