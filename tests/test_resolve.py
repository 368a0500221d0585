"""References as users type them: a bare name (``federated-model@v1.0``, the seed's and the
README's) takes the default namespace, and a reference without a version takes the only
installed one, in every command and on the server; several versions are a usage error
listing them, never a misleading message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from axon.errors import EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from tests.fixtures.mlos import ServerFactory
from tests.fixtures.models import write_model_dir
from tests.helpers import CliRun, error_lines, run_axon, write_config

NOTE_NS = "no namespace given, using the default namespace 'local'"


def _home() -> Path:
    return Path(os.environ["AXON_HOME"])


def _install(tmp_path: Path, ref: str, *, seed: int = 0) -> CliRun:
    source = write_model_dir(tmp_path / f"src-{ref.replace('/', '_')}-{seed}", seed=seed)
    run = run_axon("install", str(source), "--as", ref)
    assert run.code == EXIT_OK, run.err
    return run


def _notes(run: CliRun) -> list[str]:
    return [line for line in run.err.splitlines() if line.startswith("axon: note: ")]


# ---- bare names ----------------------------------------------------------------------------
def test_a_bare_name_takes_the_default_namespace_in_every_cache_command(tmp_path: Path) -> None:
    run = _install(tmp_path, "federated-model@v1.0")
    assert f"federated-model@v1.0: {NOTE_NS}" in run.err
    assert "installed local/federated-model@v1.0" in run.out
    assert (_home() / "cache/models/local/federated-model/v1.0/manifest.yaml").is_file()

    listed = run_axon("list", "--json").json()
    assert [m["ref"] for m in listed["models"]] == ["local/federated-model@v1.0"]
    info = run_axon("info", "federated-model@v1.0", "--json")
    assert info.code == EXIT_OK and info.json()["ref"] == "local/federated-model@v1.0"
    verify = run_axon("verify", "federated-model@v1.0")
    assert verify.code == EXIT_OK and "ok: local/federated-model@v1.0" in verify.out
    assert any(NOTE_NS in line for line in _notes(verify))
    quiet = run_axon("verify", "federated-model@v1.0", "--quiet")
    assert quiet.code == EXIT_OK and quiet.err == ""
    gone = run_axon("uninstall", "federated-model@v1.0")
    assert gone.code == EXIT_OK and "removed local/federated-model@v1.0" in gone.out
    assert not (_home() / "cache/models/local/federated-model").exists()


def test_the_default_namespace_is_configurable(tmp_path: Path) -> None:
    write_config(_home(), default_namespace="team-a")
    run = _install(tmp_path, "sentiment@v1")
    assert "using the default namespace 'team-a'" in run.err
    assert "config.yaml" in run.err  # where to change it
    assert run_axon("info", "sentiment@v1").code == EXIT_OK
    assert (_home() / "cache/models/team-a/sentiment/v1").is_dir()
    # a namespace written is taken as written
    assert run_axon("info", "local/sentiment@v1").code == EXIT_NOT_FOUND


@pytest.mark.parametrize("value", ["a/b", "../x", "", "-x"])
def test_a_bad_default_namespace_is_a_config_error(value: str) -> None:
    write_config(_home(), default_namespace=value)
    run = run_axon("list")
    assert run.code == EXIT_CONFIG
    (line,) = error_lines(run.err)
    assert "default_namespace" in line and "config.yaml" in line


def test_the_readme_publish_command_works(tmp_path: Path, mlos_server: ServerFactory) -> None:
    """`axon publish federated-model@v1.0 --target ...` (README, seed use case 6)."""
    srv = mlos_server(no_fsync=True)
    write_config(_home(), {"mlos-core-1": {"endpoint": srv.url, "storage_type": "api"}})
    _install(tmp_path, "federated-model@v1.0")
    run = run_axon("publish", "federated-model@v1.0", "--target", "mlos-core-1")
    assert run.code == EXIT_OK, run.err
    assert any(NOTE_NS in line for line in _notes(run))
    assert (srv.models_dir / "local/federated-model/v1.0/manifest.yaml").is_file()
    st = run_axon("status", "federated-model@v1.0", "--target", "mlos-core-1")
    assert st.code == EXIT_OK, st.err
    assert "local/federated-model@v1.0" in st.out
    reg = run_axon("register", "federated-model@v1.0", "--target", "mlos-core-1")
    assert reg.code == EXIT_OK, reg.err
    assert "registered local/federated-model@v1.0" in reg.out

    # the server's API takes a bare id the same way, in a path and in a body
    for model_id in ("federated-model@v1.0", "local/federated-model@v1.0"):
        got = httpx.get(f"{srv.url}/models/{quote(model_id, safe='')}", timeout=10)
        assert got.status_code == 200, got.text
    body = {
        "model_id": "federated-model@v1.0",
        "path": str(srv.models_dir / "local/federated-model/v1.0"),
    }
    answer = httpx.post(f"{srv.url}/models/register", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_id"] == "local/federated-model@v1.0"


# ---- references without a version ----------------------------------------------------------
def test_without_a_version_the_only_installed_one_is_used(
    tmp_path: Path, mlos_server: ServerFactory
) -> None:
    _install(tmp_path, "team/clf@v3")
    note = "team/clf: no version given, using v3, the only one installed"
    for args in (("verify", "team/clf"), ("info", "team/clf")):
        run = run_axon(*args)
        assert run.code == EXIT_OK, run.err
        assert _notes(run) == [f"axon: note: {note}"]
    srv = mlos_server(no_fsync=True)
    pub = run_axon("publish", "team/clf", "--target", srv.url, "--json")
    assert pub.code == EXIT_OK, pub.err
    assert pub.json()["model_id"] == "team/clf@v3" and note in pub.err
    st = run_axon("status", "team/clf", "--target", srv.url)
    assert st.code == EXIT_OK and "team/clf@v3" in st.out
    reg = run_axon("register", "team/clf", "--target", srv.url)
    assert reg.code == EXIT_OK, reg.err  # was: "was published but ... not notified", exit 8
    assert "registered team/clf@v3" in reg.out
    gone = run_axon("uninstall", "team/clf")
    assert gone.code == EXIT_OK and "removed team/clf@v3" in gone.out


def test_latest_is_taken_when_installed(tmp_path: Path) -> None:
    _install(tmp_path, "team/clf@v1")
    _install(tmp_path, "team/clf", seed=1)  # @latest
    run = run_axon("verify", "team/clf")
    assert run.code == EXIT_OK and "ok: team/clf@latest" in run.out
    assert _notes(run) == []


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "team/clf"),
        ("info", "team/clf"),
        ("uninstall", "team/clf"),
        ("publish", "team/clf", "--target", "http://127.0.0.1:9"),
        ("status", "team/clf", "--target", "http://127.0.0.1:9"),
        ("register", "team/clf", "--target", "http://127.0.0.1:9"),
    ],
)
def test_several_versions_are_listed_and_one_must_be_named(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    for i, version in enumerate(("v2", "v10", "v1")):
        _install(tmp_path, f"team/clf@{version}", seed=i)
    run = run_axon(*args)
    assert run.code == EXIT_USAGE, (run.out, run.err)
    (line,) = error_lines(run.err)
    assert "team/clf: no version given, and 3 versions are installed" in line
    assert "v1, v2, v10" in line and "team/clf@v10" in line  # in version order, one named
    assert len(list((_home() / "cache/models/team/clf").iterdir())) == 3  # nothing removed


def test_nothing_installed_is_not_found(tmp_path: Path) -> None:
    run = run_axon("verify", "team/clf")
    assert run.code == EXIT_NOT_FOUND
    assert "team/clf@latest is not in the cache" in run.err


def test_register_of_a_model_the_instance_lacks_says_so(
    tmp_path: Path, mlos_server: ServerFactory
) -> None:
    """Neither 'published' nor 'not notified': the instance has no files to register."""
    srv = mlos_server(no_fsync=True)
    run = run_axon("register", "team/absent", "--target", srv.url)
    assert run.code == EXIT_NOT_FOUND
    (line,) = error_lines(run.err)
    assert "has no files of team/absent@latest to register" in line
    assert "published" not in line.split("(")[0]
    assert "axon publish team/absent@latest --target" in line


def test_mlos_federated_evaluate_takes_a_bare_name() -> None:
    """The seed's `mlos federated evaluate federated-model@v1.1 --target ...`."""
    from tests.fixtures.common import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "axon.cli.mlos_main", "federated", "evaluate"]
    run = subprocess.run(
        [*argv, "federated-model@v1.1", "--target", dead], capture_output=True, text=True
    )
    assert "missing namespace" not in run.stderr
    assert "evaluation of local/federated-model@v1.1" in run.stdout


def test_register_without_a_token_says_which_to_set(mlos_server: ServerFactory) -> None:
    from tests.fixtures.mlos import TOKENS

    srv = mlos_server(no_fsync=True, tokens=TOKENS)
    run = run_axon("register", "alpha/clf@v1", "--target", srv.url)
    (line,) = error_lines(run.err)
    assert "did not register alpha/clf@v1" in line
    assert "once the instance is up" not in line  # the token's own hint instead
