"""The cache and targets commands end to end through the real entry point (exit codes,
one-line errors, --json), plus one real subprocess for `--help` speed and tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from axon.cli.main import main
from axon.errors import EXIT_CONFIG, EXIT_INTEGRITY, EXIT_INVALID, EXIT_NOT_FOUND
from modelpkg.refs import ModelRef
from tests.helpers import write_config


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.out)  # type: ignore[no-any-return]


@pytest.fixture
def axon(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def run(*args: str) -> Run:
        capsys.readouterr()
        try:
            returned = main(list(args))
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def test_init_creates_config_and_cache(axon, axon_home: Path) -> None:  # type: ignore[no-untyped-def]
    r = axon("init")
    assert r.code == 0, r.err
    assert (axon_home / "config.yaml").is_file()
    assert (axon_home / "cache" / "models").is_dir()
    again = axon("init", "--json")
    assert again.json()["created"] is False


def test_install_list_info_verify_uninstall(axon, make_model_dir, axon_home: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_model_dir()
    r = axon("install", str(src), "--as", "hf/tiny-bert@v1")
    assert r.code == 0, r.err
    assert "installed hf/tiny-bert@v1: 6 files" in r.out
    listed = axon("list", "--json").json()["models"]
    assert [m["ref"] for m in listed] == ["hf/tiny-bert@v1"]
    assert listed[0]["format"] == "safetensors"
    human = axon("list")
    assert "hf/tiny-bert@v1" in human.out and "safetensors" in human.out
    info = axon("info", "hf/tiny-bert@v1", "--json").json()
    assert info["manifest"]["metadata"]["name"] == "tiny-bert"
    assert info["metadata"]["namespace"] == "hf"
    text = axon("info", "hf/tiny-bert@v1").out
    assert "1_Pooling/config.json" in text and "input_ids" in text
    ok = axon("verify", "hf/tiny-bert@v1")
    assert ok.code == 0 and "0 read" in ok.out
    full = axon("verify", "hf/tiny-bert@v1", "--full", "--json").json()
    assert full["ok"] and full["files_hashed"] == 6
    gone = axon("uninstall", "hf/tiny-bert@v1")
    assert gone.code == 0
    assert axon("list", "--json").json()["models"] == []


def test_verify_names_each_problem(axon, installed_model: ModelRef, axon_home: Path) -> None:  # type: ignore[no-untyped-def]
    d = axon_home / "cache" / "models" / "hf" / "tiny-bert" / "v1"
    (d / "vocab.txt").write_text("tampered")
    (d / "tokenizer.json").unlink()
    (d / "stray.bin").write_bytes(b"?")
    r = axon("verify", str(installed_model))
    assert r.code == EXIT_INTEGRITY
    for word in ("missing: tokenizer.json", "corrupt: vocab.txt", "extra: stray.bin"):
        assert word in r.err
    js = axon("verify", str(installed_model), "--json")
    assert js.code == EXIT_INTEGRITY
    assert js.json()["missing"] == ["tokenizer.json"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("info", "hf/nothing@v9"), EXIT_NOT_FOUND, "not in the cache"),
        (("verify", "../etc/passwd"), EXIT_INVALID, "invalid model reference"),
        (("install", "/definitely/not/here", "--as", "a/b"), EXIT_INVALID, "no such directory"),
        (("uninstall", "a/b@c"), EXIT_NOT_FOUND, "not in the cache"),
    ],
)
def test_errors_are_one_line_with_exit_code(
    axon, args: tuple[str, ...], code: int, words: str
) -> None:  # type: ignore[no-untyped-def]
    r = axon(*args)
    assert r.code == code
    assert words in r.err
    assert r.err.startswith("axon: error: ") and r.err.count("\n") == 1
    assert "Traceback" not in r.err


def test_broken_config_exit_code(axon, axon_home: Path) -> None:  # type: ignore[no-untyped-def]
    write_config(axon_home, {"a": {"endpoint": "x", "bogus": 1}})
    r = axon("list")
    assert r.code == EXIT_CONFIG
    assert "mlos_targets.a.bogus: unknown key" in r.err


def test_targets_list_and_show(axon, axon_home: Path) -> None:  # type: ignore[no-untyped-def]
    core_1 = {"endpoint": "http://127.0.0.1:18081", "access_method": "api", "token": "s3cret"}
    write_config(
        axon_home,
        {
            "core-1": core_1,
            "shared": {"type": "network_storage", "storage_path": "/tmp/shared-models"},
        },
        clusters={
            "prod": {"instances": ["core-1", "127.0.0.1:18082"], "strategy": "first-available"}
        },
    )
    listed = axon("targets", "list", "--json").json()["targets"]
    assert {(t["name"], t["type"]) for t in listed} == {
        ("core-1", "instance"),
        ("shared", "network_storage"),
        ("prod", "cluster"),
    }
    human = axon("targets", "list").out
    assert "core-1" in human and "http://127.0.0.1:18081" in human
    show = axon("targets", "show", "prod", "--json").json()
    assert show["strategy"] == "first-available"
    assert [i["endpoint"] for i in show["instances"]] == [
        "http://127.0.0.1:18081",
        "http://127.0.0.1:18082",
    ]
    inst = axon("targets", "show", "core-1")
    assert "s3cret" not in inst.out and "token:" in inst.out
    adhoc = axon("targets", "show", "s3://bucket/prefix", "--json").json()
    assert adhoc["storage_type"] == "s3"
    missing = axon("targets", "show", "no_such_target")
    assert missing.code == EXIT_NOT_FOUND and "core-1" in missing.err


def run_axon(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axon", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_help_is_light_and_errors_have_no_traceback(axon_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "AXON_HOME": str(axon_home)}
    probe = (
        "import sys; from axon.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('rich', 'httpx', 'pydantic', 'yaml', 'huggingface_hub') "
        "if m in sys.modules]\nprint('HEAVY', heavy)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr
    assert "install" in r.stdout and "verify" in r.stdout
    bad = run_axon("install", str(tmp_path / "nothing"), "--as", "a/b", env=env)
    assert bad.returncode == EXIT_INVALID
    assert "Traceback" not in bad.stderr and "no such directory" in bad.stderr


def test_targets_show_discovery_failure_still_shows_config(axon, axon_home: Path) -> None:  # type: ignore[no-untyped-def]
    from axon.errors import EXIT_DISCOVERY
    from tests.fixtures.common import free_port

    edge = {"discovery": f"etcd://127.0.0.1:{free_port()}", "strategy": "all"}
    write_config(axon_home, clusters={"edge": edge})
    r = axon("targets", "show", "edge", "--timeout", "1")
    assert r.code == EXIT_DISCOVERY
    assert "etcd://127.0.0.1" in r.out and "strategy" in r.out
    assert r.err.startswith("axon: error: ")
    js = axon("targets", "show", "edge", "--json", "--timeout", "1")
    assert js.code == EXIT_DISCOVERY
    assert js.json()["discovery_error"]["type"] == "DiscoveryError"
    skip = axon("targets", "show", "edge", "--no-discover", "--json")
    assert skip.code == 0 and "discovered" not in skip.json()
