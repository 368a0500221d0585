"""--target resolution: configured names, clusters (both forms), storage, addresses, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import axon.targets as targets_mod
from axon.config import Config, load_config
from axon.errors import EXIT_NOT_FOUND, ConfigError, TargetNotFoundError
from axon.targets import (
    ClusterTarget,
    InstanceTarget,
    StorageTarget,
    resolve_target,
    split_host_port,
)
from tests.helpers import write_config

TARGETS = {
    "mlos-core-1": {
        "endpoint": "http://mlos-core-1:8080",
        "storage_type": "filesystem",
        "storage_path": "/srv/models",
        "access_method": "ssh",
        "ssh_user": "mlos",
        "ssh_port": 2222,
        "ssh_key": "~/.ssh/id_mlos",
        "dir_mode": "0755",
    },
    "mlos-core-2": {"endpoint": "http://mlos-core-2:9090", "storage_type": "api", "token": "abc"},
    "local-fs": {"endpoint": "http://127.0.0.1:8181", "storage_path": "/tmp/models"},
    "mlos-cluster-prod": {
        "type": "cluster",
        "instances": ["mlos-core-1", "mlos-core-3:8080", "http://10.1.1.1:7000", "[::1]:9000"],
        "storage_type": "filesystem",
        "storage_path": "/var/lib/mlos/models",
        "access_method": "ssh",
        "ssh_user": "deploy",
    },
    "mlos-shared-repo": {
        "type": "network_storage",
        "storage_type": "nfs",
        "storage_path": "nfs://mlos-repo/models",
        "mount_path": "/mnt/repo",
        "notify_instances": ["mlos-core-1", "http://127.0.0.1:8282"],
    },
    "s3-repo": {
        "storage_path": "s3://bucket/prefix",
        "endpoint_url": "http://127.0.0.1:9000",
        "region": "eu-west-1",
        "profile": "dev",
    },
}
CLUSTERS = {
    "edge": {
        "instances": ["10.0.0.5:8080", "http://10.0.0.6:8080"],
        "strategy": "round-robin",
        "max_parallel": 2,
    },
    "found": {"discovery": "etcd://127.0.0.1:2379", "access_method": "api", "token": "t0k"},
    "mlos-core-2": {"instances": ["shadowed:1"]},
}


@pytest.fixture
def config(axon_home: Path) -> Config:
    write_config(axon_home, TARGETS, clusters=CLUSTERS)
    return load_config()


def test_named_ssh_instance(config: Config) -> None:
    t = resolve_target("mlos-core-1", config)
    assert isinstance(t, InstanceTarget)
    assert t.endpoint == "http://mlos-core-1:8080"
    assert t.access_method == "ssh"
    assert (t.ssh_host, t.ssh_user, t.ssh_port) == ("mlos-core-1", "mlos", 2222)
    assert t.ssh_key == str(Path("~/.ssh/id_mlos").expanduser())
    assert t.storage_path == "/srv/models"
    assert t.dir_mode == 0o755
    assert t.origin == "config"


def test_named_api_instance_keeps_token_but_never_prints_it(config: Config) -> None:
    t = resolve_target("mlos-core-2", config)
    assert isinstance(t, InstanceTarget)
    assert (t.access_method, t.endpoint, t.token) == ("api", "http://mlos-core-2:9090", "abc")
    assert t.to_dict()["token"] == "***"


def test_mlos_targets_win_over_clusters(config: Config) -> None:
    assert isinstance(resolve_target("mlos-core-2", config), InstanceTarget)


def test_local_storage_path_means_filesystem(config: Config) -> None:
    t = resolve_target("local-fs", config)
    assert isinstance(t, InstanceTarget)
    assert (t.access_method, t.storage_path) == ("filesystem", "/tmp/models")


def test_cluster_in_mlos_targets(config: Config) -> None:
    c = resolve_target("mlos-cluster-prod", config)
    assert isinstance(c, ClusterTarget)
    assert c.strategy == "all"
    names = [i.name for i in c.instances]
    assert names == ["mlos-core-1", "mlos-core-3:8080", "http://10.1.1.1:7000", "[::1]:9000"]
    named, by_host, by_url, v6 = c.instances
    assert named.ssh_user == "mlos"  # a named member keeps its own settings
    assert by_host.endpoint == "http://mlos-core-3:8080"
    assert (by_host.access_method, by_host.ssh_host, by_host.ssh_user) == (
        "ssh",
        "mlos-core-3",
        "deploy",
    )
    assert by_host.storage_path == "/var/lib/mlos/models"
    assert by_url.endpoint == "http://10.1.1.1:7000"
    assert v6.endpoint == "http://[::1]:9000"


def test_clusters_section(config: Config) -> None:
    c = resolve_target("edge", config)
    assert isinstance(c, ClusterTarget)
    assert (c.strategy, c.max_parallel, c.discovery) == ("round-robin", 2, None)
    assert [i.endpoint for i in c.instances] == ["http://10.0.0.5:8080", "http://10.0.0.6:8080"]
    assert all(i.access_method == "api" for i in c.instances)


def test_discovery_cluster_keeps_uri_and_member_template(config: Config) -> None:
    c = resolve_target("found", config)
    assert isinstance(c, ClusterTarget)
    assert c.instances == [] and c.discovery == "etcd://127.0.0.1:2379"
    assert c.template is not None
    assert (c.template.access_method, c.template.token) == ("api", "t0k")


def test_named_network_storage(config: Config) -> None:
    s = resolve_target("mlos-shared-repo", config)
    assert isinstance(s, StorageTarget)
    assert (s.storage_type, s.location, s.mount_path) == (
        "nfs",
        "nfs://mlos-repo/models",
        "/mnt/repo",
    )
    assert [i.endpoint for i in s.notify_instances] == [
        "http://mlos-core-1:8080",
        "http://127.0.0.1:8282",
    ]
    assert all(i.access_method == "api" for i in s.notify_instances)


def test_named_s3_storage_inferred(config: Config) -> None:
    s = resolve_target("s3-repo", config)
    assert isinstance(s, StorageTarget)
    assert (s.storage_type, s.location, s.endpoint_url, s.region, s.profile) == (
        "s3",
        "s3://bucket/prefix",
        "http://127.0.0.1:9000",
        "eu-west-1",
        "dev",
    )


@pytest.mark.parametrize(
    ("spec", "endpoint"),
    [
        ("http://mlos-core-9:8080/", "http://mlos-core-9:8080"),
        ("https://models.example.internal", "https://models.example.internal"),
        ("mlos-core-9", "http://mlos-core-9:8080"),
        ("mlos-core-9:9000", "http://mlos-core-9:9000"),
        ("192.168.1.100", "http://192.168.1.100:8080"),
        ("192.168.1.100:81", "http://192.168.1.100:81"),
        ("[::1]:8081", "http://[::1]:8081"),
        ("::1", "http://[::1]:8080"),
    ],
)
def test_addresses_mean_the_api(config: Config, spec: str, endpoint: str) -> None:
    t = resolve_target(spec, config)
    assert isinstance(t, InstanceTarget)
    assert (t.endpoint, t.access_method, t.name) == (endpoint, "api", spec)


@pytest.mark.parametrize(
    ("spec", "kind", "location"),
    [
        ("/mnt/shared/mlos/models", "filesystem", "/mnt/shared/mlos/models"),
        ("file:///mnt/shared", "filesystem", "/mnt/shared"),
        ("nfs://mlos-repo/models", "nfs", "nfs://mlos-repo/models"),
        ("s3://mlos-models/models", "s3", "s3://mlos-models/models"),
    ],
)
def test_storage_forms(config: Config, spec: str, kind: str, location: str) -> None:
    s = resolve_target(spec, config)
    assert isinstance(s, StorageTarget)
    assert (s.storage_type, s.location) == (kind, location)


def test_localhost_uses_api_when_models_dir_not_writable(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets_mod, "DEFAULT_MODELS_DIR", "/nonexistent/mlos/models")
    t = resolve_target("localhost", config)
    assert isinstance(t, InstanceTarget)
    assert (t.access_method, t.endpoint) == ("api", "http://localhost:8080")


def test_localhost_uses_filesystem_when_writable(
    config: Config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = tmp_path / "var-lib-mlos-models"
    models.mkdir()
    monkeypatch.setattr(targets_mod, "DEFAULT_MODELS_DIR", str(models))
    monkeypatch.setenv("MLOS_CORE_ENDPOINT", "http://127.0.0.1:18080")
    t = resolve_target("localhost", config)
    assert isinstance(t, InstanceTarget)
    assert (t.access_method, t.storage_path) == ("filesystem", str(models))
    assert t.endpoint == "http://127.0.0.1:18080"  # upstream's variable


@pytest.mark.parametrize("spec", ["my_target", "no such", "host:99999", "a..b", "-x", ""])
def test_unknown_name_lists_configured_targets(config: Config, spec: str) -> None:
    with pytest.raises(TargetNotFoundError) as info:
        resolve_target(spec, config)
    assert info.value.exit_code == EXIT_NOT_FOUND
    assert "mlos-cluster-prod" in str(info.value)


@pytest.mark.parametrize("spec", ["ftp://host/x", "s3://", "nfs:///export", "http://:80"])
def test_bad_urls(config: Config, spec: str) -> None:
    with pytest.raises(TargetNotFoundError):
        resolve_target(spec, config)


def test_cluster_member_must_be_an_instance(axon_home: Path) -> None:
    write_config(
        axon_home, {"s": {"storage_path": "s3://b/p"}}, clusters={"c": {"instances": ["s"]}}
    )
    with pytest.raises(ConfigError) as info:
        resolve_target("c", load_config())
    assert info.value.key == "clusters.c.instances"


def test_cluster_member_garbage(axon_home: Path) -> None:
    write_config(axon_home, clusters={"c": {"instances": ["not a host!"]}})
    with pytest.raises(ConfigError, match="neither a configured target"):
        resolve_target("c", load_config())


def test_split_host_port() -> None:
    assert split_host_port("a.b:1") == ("a.b", 1)
    assert split_host_port("[fe80::1]:5") == ("fe80::1", 5)
    assert split_host_port("1.2.3") == (None, None)  # all-numeric last label: not a name
    assert split_host_port("h:0") == (None, None)


def test_a_configured_target_that_cannot_be_built_is_a_config_error(axon_home: Path) -> None:
    """An unknown ~user in ssh_key is the config's fault: exit 6 naming the key, not
    "not a valid host" (exit 3)."""
    from axon.config import load_config
    from axon.errors import ConfigError
    from axon.targets import resolve_target

    core_1 = {
        "endpoint": "http://127.0.0.1:9",
        "access_method": "ssh",
        "ssh_key": "~no-such-user-axon/id_ed25519",
    }
    write_config(axon_home, {"core-1": core_1})
    with pytest.raises(ConfigError) as info:
        resolve_target("core-1", load_config())
    assert info.value.exit_code == 6 and "mlos_targets.core-1" in str(info.value)
