"""The discovery package's public surface: exported names, scheme dispatch, URI and record
validation, member -> InstanceTarget. No servers needed."""

from __future__ import annotations

import json

import pytest

import axon.discovery as discovery
from axon.discovery import Member, discover, member_target
from axon.discovery._model import RecordError, parse_record, split_hostport
from axon.errors import DiscoveryError
from mlos_core.integrations.discovery import (
    EtcdRegistrar,
    InstanceRecord,
    NoRegistrar,
    registered,
    registrar_for,
)


def test_exported_names() -> None:
    assert set(discovery.__all__) == {
        "BACKENDS",
        "DiscoveryError",
        "DiscoveryResult",
        "Member",
        "MemberHealth",
        "check_members",
        "discover",
        "lookup",
        "member_target",
    }


def test_unknown_scheme_names_cluster_and_choices() -> None:
    with pytest.raises(DiscoveryError) as info:
        discover("zookeeper://127.0.0.1:2181", "prod")
    text = str(info.value)
    assert "unknown discovery scheme 'zookeeper://' for cluster 'prod'" in text
    assert "use one of etcd://, consul://, k8s:// or dns+srv://" in text
    assert info.value.exit_code == 11


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("etcd://127.0.0.1:notaport", "etcd://127.0.0.1:2379"),
        ("etcd://", "no host"),
        ("consul://:8500", "no host"),
        ("dns+srv://", "no SRV name"),
    ],
)
def test_bad_uris(uri: str, why: str) -> None:
    with pytest.raises(DiscoveryError, match="is invalid") as info:
        discover(uri, "prod")
    assert why in str(info.value)
    assert "clusters.prod.discovery" in str(info.value)


def test_split_hostport() -> None:
    assert split_hostport("etcd-1", 2379) == ("etcd-1", 2379)
    assert split_hostport("[::1]:23", 2379) == ("::1", 23)
    with pytest.raises(ValueError):
        split_hostport("h:99999", 1)


def good(**kw: object) -> dict[str, object]:
    data: dict[str, object] = {
        "instance_id": "c1",
        "endpoint": "http://127.0.0.1:8080/",
        "cluster_name": "prod",
        "storage_path": "/m",
    }
    data.update(kw)
    return data


def test_parse_record_accepts_and_normalises() -> None:
    member = parse_record(json.dumps(good()).encode(), cluster="prod")
    assert member == Member("c1", "http://127.0.0.1:8080", "prod", "/m")
    assert parse_record(good(storage_path=""), cluster="prod").storage_path is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"42", "not a JSON object but int"),
        (good(instance_id=""), "instance_id is missing"),
        (good(endpoint=None), "endpoint is missing"),
        (good(endpoint="127.0.0.1:8080"), "is not an http(s) URL"),
        (good(cluster_name="dev"), "cluster_name is 'dev', expected 'prod'"),
        (good(storage_path=3), "storage_path is not a string"),
    ],
)
def test_parse_record_rejects(raw: bytes | dict[str, object], problem: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_record(raw, cluster="prod")  # type: ignore[arg-type]
    assert problem in str(info.value)


def test_member_target_api_and_template() -> None:
    from axon.targets import InstanceTarget

    member = Member("core-1", "http://10.0.0.5:8080", "prod", "/var/lib/mlos/models")
    plain = member_target(member)
    assert (plain.name, plain.endpoint, plain.access_method) == (
        "core-1",
        "http://10.0.0.5:8080",
        "api",
    )
    template = InstanceTarget(
        name="tmpl",
        endpoint="http://unused",
        access_method="ssh",
        ssh_host="unused",
        ssh_user="mlos",
        storage_path="/fallback",
        token="t",
    )
    ssh = member_target(member, template)
    assert (ssh.name, ssh.ssh_host, ssh.ssh_user, ssh.token) == ("core-1", "10.0.0.5", "mlos", "t")
    assert ssh.storage_path == "/var/lib/mlos/models"
    bare = member_target(Member("c2", "http://h:1", "prod"), template)
    assert bare.storage_path == "/fallback"


def test_registrar_choice_and_validation() -> None:
    record = InstanceRecord("c1", "http://127.0.0.1:8080", "prod", "/m")
    etcd = registrar_for("etcd://127.0.0.1:2379,[::1]:2380/team", record, ttl=0.5)
    assert isinstance(etcd, EtcdRegistrar)
    assert etcd.bases == ["http://127.0.0.1:2379", "http://[::1]:2380"]
    assert etcd.key == "/team/clusters/prod/instances/c1"
    assert etcd.ttl == 2  # never below etcd's useful minimum
    assert isinstance(registrar_for("k8s://mlos/mlos-core", record, ttl=5), NoRegistrar)
    with pytest.raises(ValueError, match="dns\\+srv records are published"):
        registrar_for("dns+srv://_mlos._tcp.x", record, ttl=5)
    with pytest.raises(ValueError, match="needs --cluster"):
        registered("etcd://127.0.0.1:2379", cluster=None, instance_id="c", advertise="x",
                   storage_path=None)  # fmt: skip
    with registered(None, cluster=None, instance_id="c", advertise="x", storage_path=None) as r:
        assert r is None
