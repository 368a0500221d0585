"""``axon install hf/<repo>[@revision]`` against a fake Hugging Face Hub on loopback
(HF_ENDPOINT): no version and ``@latest`` mean the repo's default branch (whatever its
name), fetched at the commit the Hub names and recorded; a branch is fetched as given;
missing repos and revisions, and the offline mode, are one clear line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from axon.errors import EXIT_INVALID, EXIT_OK, EXIT_TRANSPORT
from tests.fixtures.common import require_module
from tests.fixtures.hfhub import FakeHub, FakeRepo, serve_fake_hub
from tests.fixtures.models import write_model_dir
from tests.helpers import CliRun, error_lines, run_axon


@pytest.fixture(autouse=True)
def _huggingface_hub() -> None:
    require_module("huggingface_hub", "hf")  # under CI=true a missing hf extra fails


REPO = "acme/tiny-bert"


def _files(tmp_path: Path, *, seed: int = 0) -> dict[str, bytes]:
    root = write_model_dir(tmp_path / f"repo-{seed}", seed=seed)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with serve_fake_hub() as fake:
        # the default branch is not "main": a client asking for "main" (or "latest") fails
        fake.repos[REPO] = FakeRepo(_files(tmp_path), default_branch="trunk")
        yield fake


def _install(hub: FakeHub, tmp_path: Path, *args: str, **env: str) -> CliRun:
    full = hub.env(str(tmp_path / "hf-home")) | env
    return run_axon("install", *args, "--json", env=full)


@pytest.mark.parametrize("source", [f"hf/{REPO}@latest", f"hf/{REPO}"])
def test_latest_and_no_version_mean_the_default_branch(
    hub: FakeHub, tmp_path: Path, source: str
) -> None:
    run = _install(hub, tmp_path, source)
    assert run.code == EXIT_OK, run.err
    got = run.json()
    assert got["ref"] == f"hf/{REPO}@latest"  # cached under the version the user wrote
    model = Path(got["path"])
    repo = hub.repos[REPO]
    assert model == Path(os.environ["AXON_HOME"]) / "cache/models/hf/acme/tiny-bert/latest"
    for name, data in repo.files.items():
        assert (model / name).read_bytes() == data
    # the Hub was asked for its default branch, then for that commit only: never for a
    # branch named "latest" or "main"
    assert ("GET", f"/api/models/{REPO}") in hub.requests
    assert hub.asked_revisions() == {repo.commit}
    manifest = yaml.safe_load((model / "manifest.yaml").read_text())
    assert manifest["metadata"]["version"] == "latest"
    assert manifest["metadata"]["source"] == {
        "url": f"{hub.url}/{REPO}",
        "revision": repo.commit,
    }
    meta = json.loads((model / ".axon_metadata.json").read_text())
    assert meta["source"] == source and meta["source_revision"] == repo.commit
    assert run_axon("verify", f"hf/{REPO}@latest").code == EXIT_OK


def test_a_branch_is_fetched_as_named(hub: FakeHub, tmp_path: Path) -> None:
    run = _install(hub, tmp_path, f"hf/{REPO}@trunk")
    assert run.code == EXIT_OK, run.err
    assert run.json()["ref"] == f"hf/{REPO}@trunk"
    assert "trunk" in hub.asked_revisions()
    manifest = yaml.safe_load((Path(run.json()["path"]) / "manifest.yaml").read_text())
    assert manifest["metadata"]["source"]["revision"] == hub.repos[REPO].commit


def test_a_revision_the_hub_lacks_is_named(hub: FakeHub, tmp_path: Path) -> None:
    run = _install(hub, tmp_path, f"hf/{REPO}@main")
    assert run.code == EXIT_INVALID
    (line,) = error_lines(run.err)
    assert f"hf/{REPO}: the Hub has no revision 'main' of it" in line
    assert "None" not in line and "Traceback" not in run.err
    assert "@latest" in run.err  # the hint says how to get the default branch


def test_an_unknown_repo_is_named(hub: FakeHub, tmp_path: Path) -> None:
    run = _install(hub, tmp_path, "hf/acme/no-such-model")
    assert run.code == EXIT_INVALID
    (line,) = error_lines(run.err)
    assert "hf/acme/no-such-model: not found on the Hugging Face Hub" in line
    assert hub.url in line


def test_offline_without_a_cached_snapshot_is_one_line(hub: FakeHub, tmp_path: Path) -> None:
    run = _install(hub, tmp_path, f"hf/{REPO}@latest", HF_HUB_OFFLINE="1")
    assert run.code == EXIT_TRANSPORT
    (line,) = error_lines(run.err)
    assert f"cannot install hf/{REPO}: HF_HUB_OFFLINE is set" in line
    assert "its default branch" in line
    assert hub.requests == []  # offline means no request at all
    assert "unset HF_HUB_OFFLINE" in run.err


def test_a_hub_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    from tests.fixtures.common import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    env = {"HF_ENDPOINT": dead, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    run = run_axon("install", f"hf/{REPO}", env=env)
    assert run.code == EXIT_TRANSPORT
    (line,) = error_lines(run.err)
    assert f"cannot download hf/{REPO} (its default branch) from {dead}" in line


def test_a_hub_that_names_no_default_commit_is_not_revision_none(
    hub: FakeHub, tmp_path: Path
) -> None:
    """The model API failing, huggingface_hub falls back to 'main': the message says so."""
    hub.failing[f"/api/models/{REPO}"] = 500
    run = _install(hub, tmp_path, f"hf/{REPO}", HF_HUB_DOWNLOAD_TIMEOUT="5")
    assert run.code == EXIT_INVALID, run.err
    (line,) = error_lines(run.err)
    assert "None" not in line
    assert "the Hub has no revision 'main' (asked for it because the Hub named no commit" in line
