"""DNS SRV discovery against a real DNS server (dnsmasq) on a loopback port."""

from __future__ import annotations

from typing import Any

import pytest

from axon.discovery import check_members, discover
from axon.errors import DiscoveryError
from tests.fixtures.common import free_port, require_module


@pytest.fixture(autouse=True)
def _dnspython() -> None:
    require_module("dns.resolver", "discovery")


NAME = "_mlos._tcp.prod.example.internal"


def test_srv_records_become_members(dnsmasq_factory: Any, mlos_server: Any) -> None:
    a, b = mlos_server(), mlos_server()
    dns = dnsmasq_factory(
        srv=[
            f"{NAME},core-b.example.internal,{b.port},10,5",
            f"{NAME},core-a.example.internal,{a.port},0,5",
        ],
        hosts=["core-a.example.internal,127.0.0.1", "core-b.example.internal,127.0.0.1"],
    )
    uri = f"dns+srv://{NAME}?nameserver={dns.nameserver}&storage_path=/srv/models"
    members = discover(uri, "prod")
    # priority 0 first; names resolved through the same nameserver
    assert [m.instance_id for m in members] == [
        "core-a.example.internal",
        "core-b.example.internal",
    ]
    assert [m.endpoint for m in members] == [a.url, b.url]
    assert members[0].storage_path == "/srv/models" and members[0].cluster_name == "prod"
    assert all(h.healthy for h in check_members(members))


def test_same_host_two_ports(dnsmasq_factory: Any) -> None:
    dns = dnsmasq_factory(
        srv=[f"{NAME},h.example.internal,8081", f"{NAME},h.example.internal,8082"],
        hosts=["h.example.internal,127.0.0.1"],
    )
    members = discover(f"dns+srv://{NAME}?nameserver={dns.nameserver}", "prod")
    assert sorted(m.instance_id for m in members) == [
        "h.example.internal:8081",
        "h.example.internal:8082",
    ]


def test_missing_name_is_an_error(dnsmasq_factory: Any) -> None:
    dns = dnsmasq_factory(srv=[f"{NAME},h.example.internal,8081"])
    with pytest.raises(
        DiscoveryError, match=r"no SRV records for _mlos\._tcp\.dev\.example\.internal"
    ):
        discover(f"dns+srv://_mlos._tcp.dev.example.internal?nameserver={dns.nameserver}", "dev")


def test_unreachable_nameserver() -> None:
    uri = f"dns+srv://{NAME}?nameserver=127.0.0.1:{free_port()}"
    with pytest.raises(DiscoveryError) as info:
        discover(uri, "prod", timeout=1)
    assert "dns+srv discovery for cluster 'prod' failed: 127.0.0.1:" in str(info.value)
    assert info.value.url == uri
