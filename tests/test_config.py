"""config.yaml loading: defaults, AXON_HOME, upstream keys, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from axon.config import axon_home as get_home
from axon.config import expand_path, load_config
from axon.errors import EXIT_CONFIG, ConfigError
from tests.helpers import write_config


def write(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(text)
    return path


def test_axon_home_follows_env(axon_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_home() == axon_home
    monkeypatch.delenv("AXON_HOME")
    assert get_home() == Path.home() / ".axon"


def test_defaults_without_a_file(axon_home: Path) -> None:
    config = load_config()
    assert config.cache_dir == axon_home / "cache"
    assert config.path == axon_home / "config.yaml"
    assert config.mlos_targets == {} and config.clusters == {}


def test_tilde_axon_means_axon_home(axon_home: Path) -> None:
    write(axon_home, "cache_dir: ~/.axon/cache\n")
    assert load_config().cache_dir == axon_home / "cache"
    assert expand_path("~/.axon") == axon_home
    assert expand_path("/abs/dir") == Path("/abs/dir")


def test_upstream_keys_and_seed_sections(axon_home: Path, tmp_path: Path) -> None:
    write(
        axon_home,
        f"""
home_dir: ~/.axon
cache_dir: {tmp_path / "c"}
log_level: info
registry: {{url: "https://example.invalid", mirrors: [], enable_huggingface: true,
           huggingface_token: "", timeout: 30}}
download: {{parallel: 4, max_retries: 3, verify_checksums: true}}
mlos_targets:
  mlos-core-1:
    endpoint: http://mlos-core-1:8080
    storage_type: filesystem
    storage_path: /var/lib/mlos/models
    access_method: ssh
    ssh_user: mlos
    dir_mode: "0750"
    file_mode: 0640
  mlos-cluster-prod:
    instances: [mlos-core-1:8080, mlos-core-2:8080]
    storage_type: filesystem
    storage_path: /var/lib/mlos/models
  mlos-shared-repo:
    storage_type: nfs
    storage_path: nfs://mlos-repo/models
clusters:
  edge: {{instances: ["http://10.0.0.1:8080"], strategy: round-robin}}
  found: {{discovery: "etcd://127.0.0.1:2379"}}
""",
    )
    config = load_config()
    assert config.cache_dir == tmp_path / "c"
    assert config.download.parallel == 4
    t = config.mlos_targets
    assert t["mlos-core-1"].type == "instance"
    assert t["mlos-core-1"].dir_mode == 0o750 and t["mlos-core-1"].file_mode == 0o640
    assert t["mlos-cluster-prod"].type == "cluster"  # inferred from instances
    assert t["mlos-shared-repo"].type == "network_storage"  # inferred from nfs storage
    assert config.clusters["edge"].strategy == "round-robin"
    assert config.clusters["found"].discovery == "etcd://127.0.0.1:2379"
    assert config.target_names == sorted(
        ["mlos-core-1", "mlos-cluster-prod", "mlos-shared-repo", "edge", "found"]
    )


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("mlos_targets:\n  a: {endpoint: x, colour: red}\n", "mlos_targets.a.colour", "unknown"),
        ("cache_dirr: /x\n", "cache_dirr", "unknown key"),
        ("mlos_targets:\n  a: {ssh_port: abc}\n", "mlos_targets.a.ssh_port", "integer"),
        ("mlos_targets:\n  a: {access_method: ftp}\n", "mlos_targets.a.access_method", "ftp"),
        (
            "clusters:\n  c: {instances: []}\n",
            "clusters.c.instances",
            "needs instances, a discovery",
        ),
        ("mlos_targets:\n  c: {type: cluster}\n", "mlos_targets.c.instances", "instances"),
        ("clusters:\n  c: {instances: a}\n", "clusters.c.instances", "list"),
        ("mlos_targets:\n  a: {dir_mode: '0999'}\n", "mlos_targets.a.dir_mode", "octal"),
        ("mlos_targets:\n  a: {timeout: -1}\n", "mlos_targets.a.timeout", "positive"),
        ("mlos_targets:\n  s: {type: network_storage}\n", "mlos_targets.s.storage_path", "storage"),
        ("mlos_targets: [a, b]\n", "mlos_targets", "dictionary"),
        ("download: {parallel: many}\n", "download.parallel", "integer"),
        ("clusters:\n  c: {type: instance, endpoint: x}\n", "clusters.c.type", "not 'instance'"),
    ],
)
def test_bad_config_names_file_and_key(axon_home: Path, text: str, key: str, words: str) -> None:
    path = write(axon_home, text)
    with pytest.raises(ConfigError) as info:
        load_config()
    err = info.value
    assert err.path == str(path)
    assert err.key == key
    assert words in str(err)
    assert str(err).startswith(f"{path}: {key}: ")
    assert err.exit_code == EXIT_CONFIG


def test_unknown_key_hint_lists_known_keys(axon_home: Path) -> None:
    write(axon_home, "mlos_targets:\n  a: {endpont: http://x:1}\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "endpoint" in (info.value.hint or "")


def test_broken_yaml_says_where(axon_home: Path) -> None:
    path = write(axon_home, "mlos_targets:\n  a: {endpoint: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.path == str(path)
    assert "not valid YAML at line" in str(info.value)


def test_top_level_must_be_a_mapping(axon_home: Path) -> None:
    write(axon_home, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config()


def test_empty_file_and_empty_sections_are_defaults(axon_home: Path) -> None:
    write(axon_home, "# nothing yet\n")
    assert load_config().mlos_targets == {}
    write(axon_home, "mlos_targets:\nclusters:\n")
    assert load_config().clusters == {}


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert "axon init" in (info.value.hint or "")


def test_token_env(axon_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(axon_home, "mlos_targets:\n  a: {endpoint: 'http://h:1', token_env: MY_TOKEN}\n")
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    assert load_config().mlos_targets["a"].resolved_token() == "s3cret"


def test_documented_example_config_loads_and_resolves(axon_home: Path) -> None:
    from axon.targets import resolve_target

    # The first yaml block under "## The config file" in docs/cache-and-config.md.
    page = (Path(__file__).parent.parent / "docs" / "cache-and-config.md").read_text()
    section = page.split("\n## The config file\n")[1].split("\n## ")[0]
    example = section.split("```yaml\n")[1].split("```")[0]
    config = load_config(write(axon_home, example))
    # check=False: as `axon targets show` resolves (the example's token variables are unset)
    kinds = {name: resolve_target(name, config, check=False).kind for name in config.target_names}
    assert kinds == {
        "mlos-core-1": "instance",
        "mlos-core-2": "instance",
        "mlos-cluster-prod": "cluster",
        "mlos-shared-repo": "network_storage",
        "mlos-s3": "network_storage",
        "mlos-cluster-staging": "cluster",
        "mlos-cluster-edge": "cluster",
    }


def test_config_saved_by_upstream_go_axon_loads(axon_home: Path) -> None:
    # What the Go axon's Config.Save() writes (yaml.v3 of DefaultConfig), plus a token.
    write(
        axon_home,
        "home_dir: /root/.axon\ncache_dir: /root/.axon/cache\nregistry:\n"
        "    url: https://registry.axon.mlos.io\n    mirrors: []\n    token: abc\n"
        "    timeout: 300\ndownload:\n    parallel: 3\n    max_retries: 3\n"
        "    verify_checksums: true\nlog_level: info\n",
    )
    config = load_config()
    assert config.cache_dir == Path("/root/.axon/cache")
    assert (config.registry.timeout, config.download.parallel) == (300, 3)


def test_malformed_integer_text_is_a_config_error(axon_home: Path) -> None:
    # regression: "--5" passed the digit check and escaped as a bare ValueError (exit 1)
    path = write(axon_home, 'mlos_targets:\n  a: {ssh_port: "--5"}\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.key == "mlos_targets.a.ssh_port" and info.value.path == str(path)


# ---- file modes: octal digits as chmod reads them, however YAML typed them -----------------
@pytest.mark.parametrize(
    ("written", "mode"),
    [
        ("775", 0o775),  # YAML: the decimal int 775; chmod 775 means 0o775
        ("644", 0o644),
        ("0775", 0o775),  # YAML 1.1: an octal int
        ("'775'", 0o775),
        ('"0775"', 0o775),
        ("0o750", 0o750),  # YAML 1.1: text
        ("'0o750'", 0o750),
        ("1777", 0o1777),
        ("0", 0),
        ("600", 0o600),
    ],
)
def test_modes_are_octal_digits(axon_home: Path, written: str, mode: int) -> None:
    write(axon_home, f"mlos_targets:\n  a:\n    dir_mode: {written}\n    file_mode: {written}\n")
    target = load_config().mlos_targets["a"]
    assert (target.dir_mode, target.file_mode) == (mode, mode)
    assert type(target.dir_mode) is int


@pytest.mark.parametrize(
    ("written", "words"),
    [
        ("493", "digit 8 or 9"),  # decimal 493 == 0o755: ambiguous, refused
        ("'0999'", "digit 8 or 9"),
        ("17777", "more than 7777"),
        ("-755", "not a file mode"),
        ("true", "not a file mode"),
        ("7.5", "not a file mode"),
        ("0x1ed", "not a file mode"),
        ("rwxr-xr-x", "not a file mode"),
        ("''", "not a file mode"),
        ("[7, 5, 5]", "not a file mode"),
    ],
)
def test_ambiguous_modes_are_refused_naming_the_key(
    axon_home: Path, written: str, words: str
) -> None:
    path = write(axon_home, f"clusters:\n  c:\n    instances: [h]\n    file_mode: {written}\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    err = info.value
    assert (err.path, err.key, err.exit_code) == (str(path), "clusters.c.file_mode", EXIT_CONFIG)
    assert words in err.message
    assert err.hint is not None and 'file_mode: "0775"' in err.hint


def test_other_integers_are_plain_ints(axon_home: Path) -> None:
    write(axon_home, "mlos_targets:\n  a: {ssh_port: 2222, timeout: 5, token: 12345}\n")
    target = load_config().mlos_targets["a"]
    assert type(target.ssh_port) is int and target.ssh_port == 2222
    assert target.timeout == 5.0 and target.token == "12345"


def test_unquoted_modes_reach_the_published_files(
    axon_home: Path, installed_model: Any, tmp_path: Path
) -> None:
    """``dir_mode: 750`` / ``file_mode: 640`` unquoted: the model's directories are 0750 and
    its files 0640 (they were 0o1356 and 0o1200: sticky, group and world bits wrong)."""
    from tests.helpers import run_axon

    models = tmp_path / "models"
    models.mkdir()
    local = {"storage_path": str(models), "access_method": "filesystem"}
    write_config(axon_home, {"local": {**local, "dir_mode": 750, "file_mode": 640}})
    assert "dir_mode: 750\n" in (axon_home / "config.yaml").read_text()  # unquoted
    run = run_axon("publish", str(installed_model), "-t", "local", "--no-notify")
    assert run.code == 0, run.err
    final = models / installed_model.relpath
    files = [p for p in final.rglob("*") if p.is_file()]
    assert files
    assert {oct(p.stat().st_mode & 0o7777) for p in files} == {oct(0o640)}
    assert oct(final.stat().st_mode & 0o7777) == oct(0o750)
