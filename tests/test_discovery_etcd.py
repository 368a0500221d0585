"""etcd discovery end to end: a real etcd and real ``mlos-core serve`` processes that register
themselves (``--cluster/--discovery``); axon discovers them over etcd's JSON gateway."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from axon.discovery import Member, check_members, discover, lookup
from axon.discovery.etcd import instances_prefix, prefix_range_end
from axon.errors import DiscoveryError
from tests.fixtures.common import free_port, wait_for
from tests.fixtures.discovery import EtcdServer

pytestmark = pytest.mark.slow
TTL = 2


def put(etcd: EtcdServer, key: str, value: bytes | str) -> None:
    raw = value.encode() if isinstance(value, str) else value
    body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(raw).decode()}
    httpx.post(f"{etcd.url}/v3/kv/put", json=body, timeout=5).raise_for_status()


def record(instance_id: str, endpoint: str, cluster: str = "prod", **extra: Any) -> str:
    data = {"instance_id": instance_id, "endpoint": endpoint, "cluster_name": cluster}
    data.update(extra)
    return json.dumps(data)


def join(mlos_server: Any, etcd: EtcdServer, instance_id: str, cluster: str = "prod") -> Any:
    return mlos_server(
        cluster=cluster,
        discovery=etcd.discovery_uri,
        discovery_ttl=TTL,
        instance_id=instance_id,
    )


def ids(members: list[Member]) -> list[str]:
    return [m.instance_id for m in members]


def wait_ids(etcd: EtcdServer, expected: list[str], timeout: float = 15.0) -> None:
    def check() -> bool:
        try:
            return ids(discover(etcd.discovery_uri, "prod")) == expected
        except DiscoveryError:
            return expected == []

    wait_for(check, timeout=timeout, what=f"discovered members == {expected}")


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert instances_prefix("prod") == "/mlos/clusters/prod/instances/"
    assert instances_prefix("x", "/custom/") == "/custom/clusters/x/instances/"


def test_instances_register_and_are_discovered(etcd_server: EtcdServer, mlos_server: Any) -> None:
    servers = [join(mlos_server, etcd_server, f"core-{i}") for i in range(3)]
    wait_ids(etcd_server, ["core-0", "core-1", "core-2"])
    members = discover(etcd_server.discovery_uri, "prod")
    by_id = {m.instance_id: m for m in members}
    for i, srv in enumerate(servers):
        member = by_id[f"core-{i}"]
        assert member.endpoint == srv.url
        assert member.cluster_name == "prod"
        assert member.storage_path == str(srv.models_dir.absolute())
    health = check_members(members)
    assert [h.healthy for h in health] == [True, True, True]
    # another cluster on the same etcd sees none of them
    with pytest.raises(DiscoveryError, match="no usable instances of cluster 'staging'"):
        discover(etcd_server.discovery_uri, "staging")


def test_killed_instance_drops_out_after_ttl_and_new_one_joins(
    etcd_server: EtcdServer, mlos_server: Any
) -> None:
    a = join(mlos_server, etcd_server, "core-a")
    join(mlos_server, etcd_server, "core-b")
    wait_ids(etcd_server, ["core-a", "core-b"])
    a.kill()  # SIGKILL: no deregistration, the lease must expire
    killed_at = time.monotonic()
    wait_ids(etcd_server, ["core-b"], timeout=TTL + 10)
    gone_after = time.monotonic() - killed_at
    assert gone_after <= TTL + 5, f"killed instance stayed {gone_after:.1f}s (ttl {TTL}s)"
    join(mlos_server, etcd_server, "core-c")
    wait_ids(etcd_server, ["core-b", "core-c"])


def test_clean_shutdown_deregisters_at_once(etcd_server: EtcdServer, mlos_server: Any) -> None:
    srv = mlos_server(
        cluster="prod", discovery=etcd_server.discovery_uri, discovery_ttl=60, instance_id="core-x"
    )
    join(mlos_server, etcd_server, "core-y")
    wait_ids(etcd_server, ["core-x", "core-y"])
    srv.stop()  # SIGTERM -> lease revoked; with a 60 s TTL only that explains a quick removal
    wait_ids(etcd_server, ["core-y"], timeout=5)


def lease_of(etcd: EtcdServer, instance_id: str) -> str:
    """The lease the instance's key is held under ("0" when the key is missing)."""
    key = instances_prefix("prod") + instance_id
    body = {"key": base64.b64encode(key.encode()).decode()}
    answer = httpx.post(f"{etcd.url}/v3/kv/range", json=body, timeout=5).json()
    kvs = answer.get("kvs") or [{}]
    return str(kvs[0].get("lease", "0"))


def test_registration_survives_etcd_restart(
    etcd_factory: Callable[[], EtcdServer], mlos_server: Any
) -> None:
    etcd = etcd_factory()
    join(mlos_server, etcd, "core-r")
    wait_ids(etcd, ["core-r"])
    etcd.stop()
    time.sleep(TTL + 1)  # renewals fail while etcd is down
    etcd.start()
    # etcd restores a lease with a fresh TTL when it restarts, so the key is back at once
    # whatever mlos-core does; only renewals keep it past that TTL.
    time.sleep(3 * TTL + 1)
    assert ids(discover(etcd.discovery_uri, "prod")) == ["core-r"], "not renewed after restart"


def test_a_lost_lease_is_registered_again(etcd_server: EtcdServer, mlos_server: Any) -> None:
    join(mlos_server, etcd_server, "core-l")
    wait_ids(etcd_server, ["core-l"])
    lost = lease_of(etcd_server, "core-l")
    # what a wiped or replaced etcd looks like to the instance: its lease is gone
    httpx.post(f"{etcd_server.url}/v3/lease/revoke", json={"ID": lost}, timeout=5)
    assert lease_of(etcd_server, "core-l") == "0"
    wait_ids(etcd_server, ["core-l"], timeout=TTL + 10)
    assert lease_of(etcd_server, "core-l") not in ("0", lost)


def test_malformed_record_is_reported_without_hiding_others(
    etcd_server: EtcdServer, mlos_server: Any
) -> None:
    join(mlos_server, etcd_server, "core-ok")
    wait_ids(etcd_server, ["core-ok"])
    prefix = instances_prefix("prod")
    put(etcd_server, prefix + "broken-json", "{not json")
    put(etcd_server, prefix + "no-endpoint", record("no-endpoint", "ftp://x"))
    put(etcd_server, prefix + "other-cluster", record("other", "http://127.0.0.1:1", "dev"))
    put(etcd_server, prefix + "with-storage", record("s", "http://127.0.0.1:9/", storage_path=None))
    result = lookup(etcd_server.discovery_uri, "prod")
    assert ids(result.members) == ["core-ok", "s"]
    assert result.members[1].endpoint == "http://127.0.0.1:9"
    warnings = "\n".join(result.warnings)
    assert len(result.warnings) == 3
    assert "broken-json: malformed record: not JSON" in warnings
    assert "no-endpoint: malformed record: endpoint 'ftp://x' is not an http(s) URL" in warnings
    assert "cluster_name is 'dev', expected 'prod'" in warnings
    health = {h.member.instance_id: h for h in check_members(result.members, timeout=1)}
    assert health["core-ok"].healthy and not health["s"].healthy
    assert health["s"].status == "unreachable"


def test_only_malformed_records_is_an_error_listing_them(etcd_server: EtcdServer) -> None:
    put(etcd_server, instances_prefix("prod") + "bad", "[]")
    with pytest.raises(DiscoveryError) as info:
        discover(etcd_server.discovery_uri, "prod")
    text = str(info.value)
    assert "no usable instances of cluster 'prod'" in text
    assert "bad: malformed record: not a JSON object but list" in text
    assert info.value.url == etcd_server.discovery_uri and info.value.target == "prod"


def test_unreachable_backend_names_backend_and_cluster() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(DiscoveryError) as info:
        discover(f"etcd://{dead}", "prod", timeout=2)
    text = str(info.value)
    assert f"etcd discovery for cluster 'prod' failed: http://{dead}: cannot connect" in text
    assert "check that etcd runs" in text
    assert info.value.exit_code == 11


def test_second_address_used_when_first_is_down(etcd_server: EtcdServer) -> None:
    put(etcd_server, instances_prefix("prod") + "m", record("m", "http://127.0.0.1:1"))
    uri = f"etcd://127.0.0.1:{free_port()},{etcd_server.endpoint}"
    assert ids(discover(uri, "prod")) == ["m"]


def test_custom_root_in_uri(etcd_server: EtcdServer) -> None:
    put(etcd_server, instances_prefix("prod", "/team-a") + "m", record("m", "http://127.0.0.1:1"))
    assert ids(discover(f"{etcd_server.discovery_uri}/team-a", "prod")) == ["m"]
    with pytest.raises(DiscoveryError):
        discover(etcd_server.discovery_uri, "prod")
