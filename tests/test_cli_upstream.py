"""The upstream Go axon's command surface: list -f, version, cache list|stats|clean,
config get|set|list, completion, help, and a one-line pointer for what we do not have."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from axon.cli.config_cmds import split_key
from modelpkg.refs import ModelRef
from tests.helpers import error_lines, run_axon, write_config


def test_list_formats(installed_model: ModelRef) -> None:
    names = run_axon("list", "-f", "names")
    assert names.code == 0 and names.out == "hf/tiny-bert\n"
    arr = run_axon("list", "--format", "json")
    assert arr.code == 0
    (item,) = json.loads(arr.out)  # upstream: a bare array with its Go field names
    assert (item["Namespace"], item["Name"], item["Version"]) == ("hf", "tiny-bert", "v1")
    assert run_axon("list", "--json").json()["models"][0]["ref"] == "hf/tiny-bert@v1"
    assert "hf/tiny-bert@v1" in run_axon("list", "-f", "default").out
    bad = run_axon("list", "-f", "yaml")
    assert bad.code == 2 and error_lines(bad.err)


def test_version_and_cache_commands(installed_model: ModelRef, axon_home: Path) -> None:
    v = run_axon("version")
    assert v.code == 0 and v.out.startswith("Axon Version:")
    assert run_axon("version", "--json").json()["package"] == "axon-publish"
    listed = run_axon("cache", "list")
    assert listed.out == "Cached models:\n  hf/tiny-bert@v1\n"
    stats = run_axon("cache", "stats", "--json").json()
    assert stats["models"] == 1 and stats["files"] == 6 and stats["disk_bytes"] > 0
    # a leftover of a killed install, old enough to be one
    leftover = axon_home / "cache/models/hf/tiny-bert/.v2.staging-123"
    leftover.mkdir(parents=True)
    (leftover / "part").write_bytes(b"x" * 5000)
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    cleaned = run_axon("cache", "clean", "--json")
    assert cleaned.code == 0, cleaned.err
    assert cleaned.json()["removed"] == [str(leftover)]
    assert cleaned.json()["freed_bytes"] == 5000
    assert not leftover.exists()
    assert run_axon("verify", str(installed_model)).code == 0  # models untouched


def test_config_set_get_list(axon_home: Path) -> None:
    write_config(axon_home, {"core-1": {"endpoint": "http://127.0.0.1:8080"}})
    path = axon_home / "config.yaml"
    path.write_text("# my notes\n" + path.read_text())
    s = run_axon("config", "set", "mlos_targets.core-1.timeout", "45")
    assert s.code == 0, s.err
    assert "comments" in s.err and (axon_home / "config.yaml.bak").read_text().startswith("#")
    assert run_axon("config", "get", "mlos_targets.core-1.timeout").out == "45\n"
    data = yaml.safe_load(path.read_text())
    assert data["mlos_targets"]["core-1"] == {"endpoint": "http://127.0.0.1:8080", "timeout": 45}
    # a dotted target name, a mode kept as its digits, a secret masked
    assert run_axon("config", "set", "mlos_targets.10.0.0.7.dir_mode", "775").code == 0
    assert yaml.safe_load(path.read_text())["mlos_targets"]["10.0.0.7"]["dir_mode"] == "775"
    assert run_axon("config", "set", "registry.huggingface_token", "hf_secret").code == 0
    assert run_axon("config", "get", "registry.huggingface_token").out == "********\n"
    listed = run_axon("config", "list").out
    assert "hf_secret" not in listed and "mlos_targets.core-1.timeout: 45" in listed
    assert "cache_dir:" in listed  # a default in effect


def test_config_set_refuses_invalid_values_and_changes_nothing(axon_home: Path) -> None:
    write_config(axon_home, {"core-1": {"endpoint": "http://127.0.0.1:8080"}})
    path = axon_home / "config.yaml"
    before = path.read_bytes()
    for key, value in (
        ("mlos_targets.core-1.timeout", "soon"),
        ("mlos_targets.core-1.file_mode", "999"),
        ("mlos_targets.core-1.no_such_key", "1"),
    ):
        r = run_axon("config", "set", key, value)
        assert r.code == 6, (key, r.out, r.err)
        (line,) = error_lines(r.err)
        assert "nothing written" in line, line
        assert path.read_bytes() == before
    assert [p.name for p in axon_home.iterdir() if p.name.endswith(".tmp")] == []
    missing = run_axon("config", "get", "registry.url")
    assert missing.code == 3 and "not set" in error_lines(missing.err)[0]


def test_split_key() -> None:
    assert split_key("mlos_targets.10.0.0.7.endpoint") == ["mlos_targets", "10.0.0.7", "endpoint"]
    assert split_key("clusters.eu.prod.strategy") == ["clusters", "eu.prod", "strategy"]
    assert split_key("registry.url") == ["registry", "url"]


def test_completion_and_help() -> None:
    bash = run_axon("completion", "bash")
    assert bash.code == 0 and "_AXON_COMPLETE" in bash.out
    words = run_axon("publish", env={"_AXON_COMPLETE": "bash_complete", "COMP_WORDS": "axon pu",
                                     "COMP_CWORD": "1"})  # fmt: skip
    assert "publish" in words.out
    ps = run_axon("completion", "powershell")
    assert ps.code == 2 and "bash, zsh and fish" in error_lines(ps.err)[0]
    h = run_axon("help", "cache", "clean")
    assert h.code == 0 and "leftovers" in h.out.replace("\n", " ")


def test_upstream_commands_we_lack_point_elsewhere() -> None:
    for command in ("search", "registry", "update"):
        r = run_axon(command, "bert", "--anything")
        assert r.code == 2 and r.out == "", command
        (line,) = error_lines(r.err)
        assert f"`axon {command}` is an upstream axon command" in line
        assert "axon " in line.split(";", 1)[1]  # says what to use instead
