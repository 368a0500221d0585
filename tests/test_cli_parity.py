"""Command lines of the upstream axon and of the seed that must just work, through the real
CLI: config defaults, ``install --format``, groups without a subcommand, ``--token-env``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpkg.refs import DEFAULT_NAMESPACE
from tests.fixtures.models import write_model_dir
from tests.helpers import error_lines, run_axon, write_config


def test_config_get_and_list_show_the_default_namespace(axon_home: Path) -> None:
    got = run_axon("config", "get", "default_namespace")
    assert got.code == 0, got.err
    assert got.out == f"{DEFAULT_NAMESPACE}\n"
    assert run_axon("config", "get", "default_namespace", "--json").json()["source"] == "default"
    listed = run_axon("config", "list")
    assert f"  default_namespace: {DEFAULT_NAMESPACE}  (default)" in listed.out
    assert run_axon("config", "set", "default_namespace", "vision").code == 0
    assert run_axon("config", "get", "default_namespace").out == "vision\n"
    assert "default_namespace: vision  (default)" not in run_axon("config", "list").out


def test_config_set_notes_are_axon_notes(axon_home: Path) -> None:
    write_config(axon_home, {"core-1": {"endpoint": "http://127.0.0.1:8080"}})
    path = axon_home / "config.yaml"
    path.write_text("# my notes\n" + path.read_text())
    r = run_axon("config", "set", "mlos_targets.core-1.timeout", "45")
    assert r.code == 0, r.err
    assert r.err.startswith("axon: note: the comments of the old file were not kept"), r.err


@pytest.mark.parametrize("args", [("--format", "native"), ("-f", "auto"), ("--format=NATIVE",)])
def test_install_takes_upstreams_format_flag(tmp_path: Path, args: tuple[str, ...]) -> None:
    src = write_model_dir(tmp_path / "src")
    r = run_axon("install", str(src), "--as", "acme/tiny@v1", *args, "--json")
    assert r.code == 0, r.err
    assert r.json()["ref"] == "acme/tiny@v1"


@pytest.mark.parametrize("fmt", ["onnx", "pytorch", "gguf"])
def test_install_refuses_a_conversion_in_one_line(tmp_path: Path, fmt: str) -> None:
    src = write_model_dir(tmp_path / "src")
    r = run_axon("install", str(src), "--as", "acme/tiny@v1", "-f", fmt)
    assert r.code == 2 and r.out == "", r.err
    (line,) = error_lines(r.err)
    assert "axon does not convert models" in line and f"--format {fmt}" in line
    assert run_axon("list", "--json").json()["models"] == []  # nothing installed


@pytest.mark.parametrize("group", ["cache", "config", "targets"])
def test_a_group_without_a_subcommand_prints_its_help(group: str) -> None:
    r = run_axon(group)
    assert r.code == 0, r.err
    assert r.out.startswith(f"Usage: axon {group} ") and "Commands:" in r.out
    assert r.err == ""


def test_token_env_never_echoes_what_was_typed() -> None:
    r = run_axon("publish", "acme/tiny@v1", "-t", "127.0.0.1:9", "--token-env", "demo-s3cret")
    assert r.code == 2
    assert "s3cret" not in r.err + r.out
    assert "11 characters" in error_lines(r.err)[0]


@pytest.mark.parametrize(
    "args", [("sync", "edge"), ("promote", "acme/tiny@v1", "--from", "edge", "--to", "edge")]
)
def test_sync_and_promote_take_token_env(axon_home: Path, args: tuple[str, ...]) -> None:
    write_config(axon_home, {}, clusters={"edge": {"instances": ["http://127.0.0.1:9"]}})
    r = run_axon(*args, "--token-env", "AXON_TEST_UNSET_TOKEN", "--json")
    assert r.code == 6, r.out + r.err  # read before anything is sent, not "no such option"
    assert "AXON_TEST_UNSET_TOKEN" in json.dumps(r.json()) + r.err
