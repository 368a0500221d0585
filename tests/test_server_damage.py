"""Another tool rewriting, in place, a file of a version mlos-core built (the upstream Go
axon's publish opens existing files with O_TRUNC): that file is a hard link into the blob
store, so the blob changes, and with it every model sharing those bytes. The server finds it
at the next scan or register (the calls that tool makes after copying), takes the blob out
of its store, names the damaged models (GET /models/{id}, /health, /metrics), `axon status`
says so (exit 5), and a publish of a damaged model sends the damaged files again.

tests/interop/test_upstream_publish.py does the same with the real binary."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelpkg.refs import ModelRef
from tests.fixtures.models import InstallModel, MakeModelDir
from tests.helpers import run_axon

A = ModelRef.parse("hf/first@v1")
B = ModelRef.parse("hf/second@v1")  # the same files: shares every blob with A


def rewrite_in_place(path: Path, data: bytes) -> None:
    """What ``os.Create`` + write does to an existing file: same inode, new bytes."""
    os.chmod(path, 0o644)  # the blob's 0444 stops none but root; a tool may chmod first
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def model(url: str, ref: ModelRef) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/models/{ref.id}", timeout=10).json()["model"]
    return answer


@pytest.fixture
def two_published(
    mlos_server: Any, make_model_dir: MakeModelDir, install_model: InstallModel
) -> Any:
    src = make_model_dir()
    install_model(src, str(A))
    install_model(src, str(B))
    srv = mlos_server.start()
    for ref in (A, B):
        run = run_axon("publish", str(ref), "-t", srv.url, "-q")
        assert run.code == 0, run.err
    return srv


def test_a_blob_rewritten_in_place_is_found_at_the_next_scan(two_published: Any) -> None:
    srv = two_published
    config = (srv.models_dir / A.relpath / "config.json").read_bytes()
    sha = hashlib.sha256(config).hexdigest()
    rewrite_in_place(srv.models_dir / A.relpath / "config.json", b'{"model_type": "gpt2"}')
    assert httpx.post(f"{srv.url}/models/scan", timeout=30).status_code == 200

    for ref in (A, B):  # both versions hold the rewritten inode, and say sha256 `sha` there
        entry = model(srv.url, ref)
        assert entry["status"] == "damaged" and entry["damaged"] == ["config.json"], entry
    assert not (srv.models_dir / ".mlos/blobs/sha256" / sha[:2] / sha).exists()
    (kept,) = (srv.models_dir / ".mlos/quarantine").iterdir()
    assert kept.name.startswith(sha)
    health = httpx.get(f"{srv.url}/health", timeout=10).json()
    assert health["status"] == "healthy"  # still serving; a publish repairs it
    assert health["storage"] == {"status": "degraded", "damaged_models": 2, "damaged_files": 2}
    metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
    assert "mlos_blobs_rewritten_total 1" in metrics

    status = run_axon("status", str(B), "-t", srv.url)
    assert status.code == 5, status.out + status.err
    assert "checksums match cache: NO" in status.out and "config.json" in status.out
    as_json = run_axon("status", str(B), "-t", srv.url, "--json").json()
    assert as_json["damaged"] == ["config.json"] and as_json["checksums_match"] is False


def test_a_publish_of_a_damaged_model_sends_the_damaged_files_again(two_published: Any) -> None:
    srv = two_published
    config = (srv.models_dir / B.relpath / "config.json").read_bytes()
    rewrite_in_place(srv.models_dir / A.relpath / "config.json", b"{}")
    httpx.post(f"{srv.url}/models/scan", timeout=30)
    run = run_axon("publish", str(B), "-t", srv.url, "--json")
    assert run.code == 0, run.out + run.err
    (result,) = run.json()["results"]
    assert (result["files_sent"], result["bytes_sent"]) == (1, len(config))
    assert (srv.models_dir / B.relpath / "config.json").read_bytes() == config
    entry = model(srv.url, B)
    assert entry["status"] == "ready" and entry["damaged"] == []
    assert run_axon("status", str(B), "-t", srv.url).code == 0


def test_a_rewrite_with_the_same_bytes_is_no_damage(two_published: Any) -> None:
    srv = two_published
    path = srv.models_dir / A.relpath / "config.json"
    rewrite_in_place(path, path.read_bytes())
    httpx.post(f"{srv.url}/models/scan", timeout=30)
    assert model(srv.url, A)["status"] == "ready" and model(srv.url, B)["damaged"] == []
    assert "storage" not in httpx.get(f"{srv.url}/health", timeout=10).json()


def test_a_register_after_the_rewrite_names_every_model_sharing_the_blob(
    two_published: Any,
) -> None:
    """Upstream ``register`` (without a scan) of the model it wrote over: found there, and
    the other model sharing the blob is named too."""
    srv = two_published
    rewrite_in_place(srv.models_dir / A.relpath / "config.json", b"[]")
    body = {"model_id": A.id, "path": str(srv.models_dir / A.relpath)}
    assert httpx.post(f"{srv.url}/models/register", json=body, timeout=30).status_code == 200
    assert model(srv.url, A)["damaged"] == ["config.json"]
    assert model(srv.url, B)["damaged"] == ["config.json"]


def test_the_damage_is_found_again_after_a_restart(two_published: Any) -> None:
    srv = two_published
    rewrite_in_place(srv.models_dir / A.relpath / "config.json", b"[1]")
    srv.restart()
    assert model(srv.url, B)["damaged"] == ["config.json"]
    srv.restart()  # the blob is out of the store by now: the quarantine still names it
    assert model(srv.url, A)["damaged"] == ["config.json"]


def test_every_blob_enters_the_store_sealed(
    mlos_server: Any, make_model_dir: MakeModelDir, install_model: InstallModel
) -> None:
    """Small files (batched) and a large one (a PUT of its own), and a file taken from what
    another tool placed: each blob gets the store's mtime, so the check costs one stat per
    untouched file."""
    from mlos_core.storage.blobs import SEALED_MTIME_NS
    from tests.fixtures.upstream_entry import place_like_upstream

    srv = mlos_server.start()
    big = os.urandom(9 * 1024 * 1024)
    install_model(make_model_dir(extra={"big.bin": big}), str(A))
    placed = {"placed.bin": os.urandom(1000)}
    place_like_upstream(srv.models_dir / B.relpath, B, placed)
    install_model(make_model_dir(extra=placed), str(B))
    for ref in (A, B):
        assert run_axon("publish", str(ref), "-t", srv.url, "-q").code == 0
    blobs = [p for p in (srv.models_dir / ".mlos/blobs/sha256").rglob("*") if p.is_file()]
    assert len(blobs) > 5
    assert {p.stat().st_mtime_ns for p in blobs} == {SEALED_MTIME_NS}


def test_an_upload_after_a_rewrite_does_not_count_on_the_rewritten_blob(
    two_published: Any, make_model_dir: MakeModelDir, install_model: InstallModel
) -> None:
    """No scan came (the other tool did not ask for one): a third model with the same
    config.json is published. The server does not link the rewritten blob into it: asked
    whether it has that content, it finds the blob unsealed, hashes it, takes it out and
    marks the models holding it, and asks for the bytes."""
    srv = two_published
    config = (srv.models_dir / A.relpath / "config.json").read_bytes()
    rewrite_in_place(srv.models_dir / A.relpath / "config.json", b"-" * len(config))
    third = ModelRef.parse("hf/third@v1")
    src = make_model_dir()
    (src / "config.json").write_bytes(config)
    install_model(src, str(third))
    run = run_axon("publish", str(third), "-t", srv.url, "--json")
    assert run.code == 0, run.out + run.err
    assert (srv.models_dir / third.relpath / "config.json").read_bytes() == config
    assert model(srv.url, A)["damaged"] == ["config.json"]
    assert model(srv.url, B)["damaged"] == ["config.json"]
