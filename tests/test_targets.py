"""--target resolution: configured names, clusters (both forms), storage, addresses, errors.

Tests may ask no DNS server but loopback: host names typed as targets are looked up through
``axon.targets.lookup_host``, which the autouse fixture answers from a table (the lookup with
a real resolver is tested end to end in tests/test_target_names.py).
"""

from __future__ import annotations

import socket
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
    storage_from_location,
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
}
RESOLVING = {"mlos-core-9", "models.example.internal"}  # what the fake DNS knows


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Host names in RESOLVING resolve, others do not (EAI_NONAME); returns the names asked."""
    asked: list[str] = []

    def lookup(host: str) -> None:
        asked.append(host)
        if host not in RESOLVING:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(targets_mod, "lookup_host", lookup)
    return asked


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


def test_a_name_under_both_sections_is_an_error_naming_both(axon_home: Path) -> None:
    clusters = {**CLUSTERS, "mlos-core-2": {"instances": ["shadowed:1"]}}
    write_config(axon_home, TARGETS, clusters=clusters)
    with pytest.raises(ConfigError) as info:
        load_config()
    text = str(info.value)
    assert "mlos_targets.mlos-core-2" in text and "clusters.mlos-core-2" in text
    assert info.value.exit_code == 6


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
    # a named member keeps its own settings; the cluster's keys override them
    assert (named.ssh_port, named.storage_path, named.ssh_user) == (
        2222,
        "/var/lib/mlos/models",
        "deploy",
    )
    assert named.sources["ssh_port"] == "mlos_targets.mlos-core-1.ssh_port"
    assert named.sources["ssh_user"] == "mlos_targets.mlos-cluster-prod.ssh_user"
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
    assert info.value.key == "clusters.c.instances[0]"


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


# ---- members that name configured instances (the seed's cluster config) --------------------
SEED_TARGETS = {
    "mlos-core-1": {
        "endpoint": "http://mlos-core-1:8080",
        "access_method": "ssh",
        "ssh_user": "mlos",
        "ssh_key": "/keys/id_mlos",
        "storage_path": "/var/lib/mlos/models",
        "token_env": "CORE1_TOKEN",
        "dir_mode": 775,
    },
    "mlos-core-2": {"endpoint": "http://10.0.0.2:8080", "access_method": "api"},
}


def test_members_written_host_port_inherit_the_instance(
    axon_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mlos-core-1:8080`` names the configured instance: its access method, SSH user,
    key, storage path, token and modes apply; the cluster's keys override; every value says
    where it came from."""
    monkeypatch.setenv("CORE1_TOKEN", "t-1")
    clusters = {
        "mlos-cluster-prod": {
            "instances": ["mlos-core-1:8080", "mlos-core-2:9090", "http://mlos-core-1:8081"],
            "timeout": 7,
        },
        "override": {"instances": ["mlos-core-1"], "ssh_user": "deploy"},
    }
    write_config(axon_home, SEED_TARGETS, clusters=clusters)
    c = resolve_target("mlos-cluster-prod", load_config())
    assert isinstance(c, ClusterTarget)
    one, two, url = c.instances
    assert (one.endpoint, one.access_method, one.ssh_host, one.ssh_user, one.ssh_key) == (
        "http://mlos-core-1:8080",
        "ssh",
        "mlos-core-1",
        "mlos",
        "/keys/id_mlos",
    )
    assert (one.storage_path, one.token, one.dir_mode, one.timeout) == (
        "/var/lib/mlos/models",
        "t-1",
        0o775,
        7,
    )
    assert one.sources == {
        "endpoint": "mlos_targets.mlos-core-1.endpoint",
        "access_method": "mlos_targets.mlos-core-1.access_method",
        "storage_path": "mlos_targets.mlos-core-1.storage_path",
        "ssh_host": "inferred",
        "ssh_user": "mlos_targets.mlos-core-1.ssh_user",
        "ssh_key": "mlos_targets.mlos-core-1.ssh_key",
        "token": "mlos_targets.mlos-core-1.token_env",
        "dir_mode": "mlos_targets.mlos-core-1.dir_mode",
        "timeout": "clusters.mlos-cluster-prod.timeout",
    }
    # another port on the configured host; the instance's own address (an IP) is kept
    assert (two.endpoint, two.access_method) == ("http://10.0.0.2:9090", "api")
    assert two.sources["endpoint"] == "clusters.mlos-cluster-prod.instances[1]"
    # a URL naming the instance: that URL, the instance's settings
    assert (url.endpoint, url.access_method, url.ssh_user) == (
        "http://mlos-core-1:8081",
        "ssh",
        "mlos",
    )
    overridden = resolve_target("override", load_config())
    assert isinstance(overridden, ClusterTarget)
    member = overridden.instances[0]
    assert (member.ssh_user, member.ssh_key) == ("deploy", "/keys/id_mlos")
    assert member.sources["ssh_user"] == "clusters.override.ssh_user"


def test_targets_show_says_where_member_values_came_from(
    axon_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import run_axon

    clusters = {"prod": {"instances": ["mlos-core-1:8080"], "ssh_user": "deploy"}}
    write_config(axon_home, SEED_TARGETS, clusters=clusters)
    run = run_axon("targets", "show", "prod", env={"CORE1_TOKEN": ""})
    assert run.code == 0, run.err
    rows = {tuple(line.split()[:2]): line for line in run.out.splitlines() if line.strip()}
    assert rows[("mlos-core-1:8080", "ssh_user")].split()[2:] == [
        "deploy",
        "clusters.prod.ssh_user",
    ]
    assert rows[("mlos-core-1:8080", "storage_path")].split()[2:] == [
        "/var/lib/mlos/models",
        "mlos_targets.mlos-core-1.storage_path",
    ]
    assert rows[("mlos-core-1:8080", "dir_mode")].split()[2:] == [
        "0775",
        "mlos_targets.mlos-core-1.dir_mode",
    ]
    assert "$CORE1_TOKEN (not set" in rows[("mlos-core-1:8080", "token")]
    shown = run_axon("targets", "show", "mlos-core-1")
    assert shown.code == 0, shown.err
    assert "dir_mode:" in shown.out and " 0775" in shown.out and "0o" not in shown.out


# ---- a target name mistyped ----------------------------------------------------------------
def test_a_mistyped_target_name_fails_at_once_with_suggestions(
    axon_home: Path, fake_dns: list[str]
) -> None:
    write_config(axon_home, SEED_TARGETS, clusters={"mlos-cluster-prod": {"instances": ["a"]}})
    with pytest.raises(TargetNotFoundError) as info:
        resolve_target("mlos-cluster-prd", load_config())
    assert fake_dns == ["mlos-cluster-prd"]  # looked up once
    assert info.value.exit_code == EXIT_NOT_FOUND
    assert "does not resolve" in info.value.message
    assert info.value.hint is not None
    assert "did you mean 'mlos-cluster-prod'?" in info.value.hint
    assert "axon targets list" in info.value.hint


def test_valid_host_names_ips_and_proxied_names_still_work(
    axon_home: Path, fake_dns: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(axon_home, SEED_TARGETS)
    config = load_config()
    assert isinstance(resolve_target("mlos-core-9:9000", config), InstanceTarget)
    assert isinstance(resolve_target("https://models.example.internal", config), InstanceTarget)
    assert isinstance(resolve_target("10.9.9.9", config), InstanceTarget)
    assert fake_dns == ["mlos-core-9", "models.example.internal"]  # IPs are not looked up
    with pytest.raises(TargetNotFoundError) as info:
        resolve_target("http://mlos-core-l:8080", config)
    assert "did you mean 'mlos-core-" in (info.value.hint or "")  # the host, not the URL
    # behind a proxy from the environment the proxy resolves names, not we
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert isinstance(resolve_target("http://mlos-core-l:8080", config), InstanceTarget)


# ---- tokens ----------------------------------------------------------------------------------
def test_an_unset_token_env_is_an_error_before_anything_is_sent(
    axon_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORE1_TOKEN", raising=False)
    write_config(axon_home, SEED_TARGETS, clusters={"c": {"instances": ["mlos-core-1:8080"]}})
    config = load_config()
    for name in ("mlos-core-1", "c"):
        with pytest.raises(ConfigError) as info:
            resolve_target(name, config)
        text = str(info.value)
        assert "CORE1_TOKEN" in text and "not set" in text and "nothing was sent" in text
        assert info.value.key == "mlos_targets.mlos-core-1.token_env"
        assert "export CORE1_TOKEN=" in (info.value.hint or "")
    shown = resolve_target("mlos-core-1", config, check=False)  # axon targets show
    assert isinstance(shown, InstanceTarget) and shown.token_env == "CORE1_TOKEN"


def test_ad_hoc_targets_take_token_env_option_or_axon_token(
    axon_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORE1_TOKEN", "t-1")
    monkeypatch.setenv("AXON_TOKEN", "from-axon-token")
    write_config(axon_home, SEED_TARGETS)
    config = load_config()
    url = resolve_target("http://127.0.0.1:8080", config)
    assert isinstance(url, InstanceTarget) and url.token == "from-axon-token"
    configured = resolve_target("mlos-core-2", config)  # AXON_TOKEN is never sent elsewhere
    assert isinstance(configured, InstanceTarget) and configured.token is None
    config.token_env_override = "MY_TOKEN"
    with pytest.raises(ConfigError, match="--token-env MY_TOKEN: the environment variable"):
        resolve_target("http://127.0.0.1:8080", config)
    monkeypatch.setenv("MY_TOKEN", "mine")
    for spec in ("http://127.0.0.1:8080", "mlos-core-1", "mlos-core-2"):
        t = resolve_target(spec, config)
        assert isinstance(t, InstanceTarget)
        assert (t.token, t.token_env, t.sources["token"]) == (
            "mine",
            "MY_TOKEN",
            "--token-env MY_TOKEN",
        )


def test_the_seeds_cluster_config_as_written(axon_home: Path) -> None:
    """The seed's own config: mlos-core-1 by SSH, mlos-core-2 by the API ("no filesystem
    access"), mlos-core-3 not configured; the cluster names storage_type/storage_path but no
    access_method. Each member is reached as its instance says; the unnamed one takes the
    cluster's storage settings (filesystem on another host: SSH)."""
    path = axon_home / "config.yaml"
    axon_home.mkdir(parents=True, exist_ok=True)
    path.write_text(
        """
cache_dir: ~/.axon/cache
mlos_targets:
  mlos-core-1:
    endpoint: http://mlos-core-1:8080
    storage_type: filesystem  # or: api, nfs, s3
    storage_path: /var/lib/mlos/models
    access_method: ssh  # or: api, nfs
  mlos-core-2:
    endpoint: http://mlos-core-2:8080
    storage_type: api
    # No filesystem access, upload via API
  mlos-cluster-prod:
    instances:
      - mlos-core-1:8080
      - mlos-core-2:8080
      - mlos-core-3:8080
    storage_type: filesystem
    storage_path: /var/lib/mlos/models
  mlos-shared-repo:
    storage_type: nfs
    storage_path: nfs://mlos-repo/models
"""
    )
    c = resolve_target("mlos-cluster-prod", load_config())
    assert isinstance(c, ClusterTarget)
    methods = {m.name: (m.access_method, m.sources["access_method"]) for m in c.instances}
    assert methods == {
        "mlos-core-1:8080": ("ssh", "mlos_targets.mlos-core-1.access_method"),
        "mlos-core-2:8080": ("api", "mlos_targets.mlos-core-2.storage_type"),
        "mlos-core-3:8080": ("ssh", "mlos_targets.mlos-cluster-prod.storage_type"),
    }
    # a cluster that names an access_method sets every member's
    text = path.read_text().replace(
        "    storage_type: filesystem\n    storage_path: /var/lib/mlos/models\n  mlos-shared",
        "    storage_type: filesystem\n    storage_path: /var/lib/mlos/models\n"
        "    access_method: ssh\n  mlos-shared",
    )
    path.write_text(text)
    c = resolve_target("mlos-cluster-prod", load_config())
    assert isinstance(c, ClusterTarget)
    assert {m.access_method for m in c.instances} == {"ssh"}


@pytest.mark.parametrize(
    ("spec", "location"),
    [
        ("file:///tmp/ra/adhoc", "/tmp/ra/adhoc"),
        ("file://localhost/tmp/ra/adhoc", "/tmp/ra/adhoc"),
        ("file:///mnt/with%20space", "/mnt/with space"),
        ("nfs://mlos-repo:/models", "nfs://mlos-repo:/models"),
    ],
)
def test_storage_urls_keep_their_whole_path(config: Config, spec: str, location: str) -> None:
    s = resolve_target(spec, config)
    assert isinstance(s, StorageTarget)
    assert s.location == location


@pytest.mark.parametrize("spec", ["file://", "file://localhost"])
def test_file_url_without_a_path_is_refused(config: Config, spec: str) -> None:
    # Path("") is the current directory: a publish would land wherever axon was started.
    with pytest.raises(TargetNotFoundError) as info:
        resolve_target(spec, config)
    assert info.value.exit_code == EXIT_NOT_FOUND
    assert "file:// needs an absolute path: file:///mnt/..." in str(info.value)


def test_file_url_with_a_host_part_names_the_path_meant(config: Config) -> None:
    # file://tmp/ra/adhoc is host "tmp", path "/ra/adhoc": one slash short, not /ra/adhoc.
    with pytest.raises(TargetNotFoundError) as info:
        resolve_target("file://tmp/ra/adhoc", config)
    assert info.value.exit_code == EXIT_NOT_FOUND
    assert "file:///tmp/ra/adhoc" in str(info.value)
    assert "host 'tmp'" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("nfs://mlos-repo", "needs the export path"),
        ("nfs://mlos-repo/", "needs the export path"),
        ("nfs://:2049/export", "needs a server"),
        ("file:/mnt/shared", "takes two slashes"),
        ("nfs:/mlos-repo/models", "takes two slashes"),
    ],
)
def test_storage_urls_that_would_write_elsewhere(config: Config, spec: str, says: str) -> None:
    with pytest.raises(TargetNotFoundError) as info:
        storage_from_location(spec, spec)
    assert says in str(info.value)
