"""Two model ids whose directories nest (``n/b@v1`` at ``n/b/v1/``, ``n/b/v1@x`` at
``n/b/v1/x/``) never destroy each other: the second is refused with 409 ``model_overlap``
naming the first, on every path that writes, rolls back or deletes a model directory, over
real HTTP (and, for the S3 sync, in-process against a real S3 server)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from axon.publish import PublishOptions
from axon.publish.storage import publish_to_storage
from axon.targets import StorageTarget
from mlos_core.cli import model_sources
from mlos_core.core import Core
from mlos_core.settings import Settings
from tests.fixtures.mlos import manifest_for, upload_resumable
from tests.fixtures.models import make_model
from tests.fixtures.s3 import S3Server

INNER = "n/b/v1@x"  # lives at n/b/v1/x/
OUTER = "n/b@v1"  # lives at n/b/v1/
INNER_FILES = {"weights.bin": b"inner weights " * 100, "config.json": b'{"inner": 1}'}
OUTER_FILES = {"weights.bin": b"outer weights " * 100, "x/notes.txt": b"outer notes"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_upload(url: str, model_id: str, files: dict[str, bytes]) -> httpx.Response:
    body = {"model_id": model_id, "manifest": manifest_for(model_id, files)}
    return httpx.post(f"{url}/v1/uploads", json=body, timeout=30)


def send_all(url: str, opened: dict[str, Any], files: dict[str, bytes]) -> None:
    by_sha = {sha(b): b for b in files.values()}
    for need in opened["needed"]:
        r = httpx.put(
            f"{url}/v1/uploads/{opened['upload_id']}/blobs/{need['sha256']}",
            content=by_sha[need["sha256"]],
            timeout=30,
        )
        assert r.status_code == 201, r.text


def model_files(models: Path, rel: str) -> dict[str, bytes]:
    root = models / rel
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.yaml"
    }


def assert_intact(srv: Any, model_id: str, rel: str, files: dict[str, bytes]) -> None:
    """The model's files are all there, unchanged, and it is still registered."""
    assert model_files(srv.models_dir, rel) == files
    assert httpx.get(f"{srv.url}/models/{model_id}").status_code == 200
    manifest = httpx.get(f"{srv.url}/v1/models/{model_id}/manifest")
    assert manifest.status_code == 200
    listed = yaml.safe_load(manifest.text)["spec"]["format"]["files"]
    assert {f["path"] for f in listed} == set(files)


def assert_overlap(r: httpx.Response, other: str) -> None:
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "model_overlap" and body["overlaps"] == other
    assert other in body["message"]


@pytest.mark.parametrize(
    ("first", "first_rel", "first_files", "second", "second_files"),
    [
        (INNER, "n/b/v1/x", INNER_FILES, OUTER, OUTER_FILES),
        (OUTER, "n/b/v1", OUTER_FILES, INNER, INNER_FILES),
    ],
    ids=["inner-first", "outer-first"],
)
def test_the_second_of_two_nesting_ids_is_refused_at_open(
    mlos_server, first, first_rel, first_files, second, second_files
):
    srv = mlos_server()
    upload_resumable(srv.url, first, first_files)
    r = open_upload(srv.url, second, second_files)
    assert_overlap(r, first)
    assert_intact(srv, first, first_rel, first_files)
    assert httpx.get(f"{srv.url}/models/{second}").status_code == 404
    # an ordinary sibling id is not an overlap: the upstream layout is kept
    upload_resumable(srv.url, "n/b@v2", {"w.bin": b"v2"})
    assert (srv.models_dir / "n/b/v2/w.bin").read_bytes() == b"v2"


@pytest.mark.parametrize(
    ("first", "first_rel", "first_files", "second", "second_files"),
    [
        (INNER, "n/b/v1/x", INNER_FILES, OUTER, OUTER_FILES),
        (OUTER, "n/b/v1", OUTER_FILES, INNER, INNER_FILES),
    ],
    ids=["inner-first", "outer-first"],
)
def test_a_commit_is_refused_when_the_other_id_was_published_after_its_open(
    mlos_server, first, first_rel, first_files, second, second_files
):
    """The check at open is an early answer; the commit checks again right before the
    rename (the other model was published meanwhile)."""
    srv = mlos_server()
    opened = open_upload(srv.url, second, second_files)
    assert opened.status_code == 201, opened.text
    send_all(srv.url, opened.json(), second_files)
    upload_resumable(srv.url, first, first_files)
    upload_id = opened.json()["upload_id"]
    r = httpx.post(f"{srv.url}/v1/uploads/{upload_id}/prepare", timeout=30)
    assert_overlap(r, first)  # prepare (a cluster's --atomic first step) says so already
    r = httpx.post(f"{srv.url}/v1/uploads/{upload_id}/commit", timeout=30)
    assert_overlap(r, first)
    assert_intact(srv, first, first_rel, first_files)
    staging = srv.models_dir / ".mlos" / "staging"
    assert httpx.delete(f"{srv.url}/v1/uploads/{upload_id}").status_code == 200
    assert list(staging.iterdir()) == []  # the refused commit's staged tree is gone too


def test_rollback_after_a_refused_publish_changes_nothing(mlos_server):
    srv = mlos_server()
    old = {"weights.bin": b"inner, first generation"}
    upload_resumable(srv.url, INNER, old)
    upload_resumable(srv.url, INNER, INNER_FILES)  # keeps the first as the previous one
    assert_overlap(open_upload(srv.url, OUTER, OUTER_FILES), INNER)
    # nothing was published for the outer id: nothing to roll back, and nothing moves
    r = httpx.post(f"{srv.url}/v1/models/{OUTER}/rollback")
    assert r.status_code == 404, r.text
    assert_intact(srv, INNER, "n/b/v1/x", INNER_FILES)
    # the inner model's own rollback still works, both ways
    r = httpx.post(f"{srv.url}/v1/models/{INNER}/rollback")
    assert r.status_code == 200, r.text
    assert_intact(srv, INNER, "n/b/v1/x", old)
    assert httpx.post(f"{srv.url}/v1/models/{INNER}/rollback").status_code == 200
    assert_intact(srv, INNER, "n/b/v1/x", INNER_FILES)


def test_rollback_refuses_to_bring_back_a_generation_that_would_nest(mlos_server):
    """The outer id's previous generation is kept; meanwhile the outer id is deleted and the
    inner one published: rolling the outer one back would bury it. Refused, nothing moves."""
    srv = mlos_server()
    upload_resumable(srv.url, OUTER, {"weights.bin": b"outer 1"})
    upload_resumable(srv.url, OUTER, OUTER_FILES)
    prev = srv.models_dir / ".mlos" / "previous" / "n/b/v1"
    assert (prev / "manifest.yaml").is_file()
    # an operator moves the outer model away by hand and the inner one arrives
    kept = srv.workdir / "kept-outer"
    (srv.models_dir / "n/b/v1").rename(kept)
    upload_resumable(srv.url, INNER, INNER_FILES)
    r = httpx.post(f"{srv.url}/v1/models/{OUTER}/rollback")
    assert_overlap(r, INNER)
    assert_intact(srv, INNER, "n/b/v1/x", INNER_FILES)
    assert (prev / "manifest.yaml").is_file()


def oneshot(url: str, model_id: str, files: dict[str, bytes]) -> httpx.Response:
    manifest = json.dumps(manifest_for(model_id, files))
    parts = [("model_files", (name, data)) for name, data in files.items()]
    return httpx.post(
        f"{url}/models/upload",
        data={"model_id": model_id, "manifest": manifest},
        files=parts,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("first", "first_rel", "first_files", "second", "second_files"),
    [
        (INNER, "n/b/v1/x", INNER_FILES, OUTER, OUTER_FILES),
        (OUTER, "n/b/v1", OUTER_FILES, INNER, INNER_FILES),
    ],
    ids=["inner-first", "outer-first"],
)
def test_the_one_shot_upload_refuses_a_nesting_id(
    mlos_server, first, first_rel, first_files, second, second_files
):
    srv = mlos_server()
    r = oneshot(srv.url, first, first_files)
    assert r.status_code == 201, r.text
    r = oneshot(srv.url, second, second_files)
    assert_overlap(r, first)
    assert_intact(srv, first, first_rel, first_files)
    # refused as soon as the id arrived: none of its files became a blob
    blobs = srv.models_dir / ".mlos" / "blobs" / "sha256"
    stored = {p.name for p in blobs.rglob("*") if p.is_file()}
    assert stored == {sha(b) for b in first_files.values()}


def test_delete_of_an_id_whose_directory_holds_another_model_removes_nothing(mlos_server):
    """DELETE /models/n/b@v1, never published, where n/b/v1/ holds n/b/v1@x: 404, and the
    inner model's files stay (the directory was removed before)."""
    srv = mlos_server()
    upload_resumable(srv.url, INNER, INNER_FILES)
    r = httpx.delete(f"{srv.url}/models/{OUTER}")
    assert r.status_code == 404, r.text
    assert_intact(srv, INNER, "n/b/v1/x", INNER_FILES)
    # and deleting the inner one leaves no empty directories behind
    assert httpx.delete(f"{srv.url}/models/{INNER}").status_code == 200
    assert not (srv.models_dir / "n").exists()


def commit_at_once(url: str, uploads: dict[str, str]) -> dict[str, httpx.Response]:
    """Commit every upload (model id -> upload id) at the same moment, from threads."""
    answers: dict[str, httpx.Response] = {}
    barrier = threading.Barrier(len(uploads))

    def commit(model_id: str) -> None:
        barrier.wait()
        answers[model_id] = httpx.post(f"{url}/v1/uploads/{uploads[model_id]}/commit", timeout=60)

    threads = [threading.Thread(target=commit, args=(m,)) for m in uploads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_concurrent_publishes_of_nesting_ids_leave_one_complete_model(mlos_server, monkeypatch):
    """Two commits of nesting ids hold different model locks. Each pauses between its check
    and its rename (MLOS_CORE_PAUSE), so both would pass a check made without the store-wide
    lock: exactly one must win, the other is refused, and the winner is complete."""
    monkeypatch.setenv("MLOS_CORE_PAUSE", "staged:0.5")
    srv = mlos_server()
    rounds = [(f"r{i}/b@v1", f"r{i}/b/v1@x") for i in range(3)]
    for outer, inner in rounds:
        opened: dict[str, str] = {}
        for model_id, files in ((outer, OUTER_FILES), (inner, INNER_FILES)):
            r = open_upload(srv.url, model_id, files)
            assert r.status_code == 201, r.text
            send_all(srv.url, r.json(), files)
            opened[model_id] = r.json()["upload_id"]
        answers = commit_at_once(srv.url, opened)
        codes = sorted(r.status_code for r in answers.values())
        assert codes == [200, 409], {m: r.text for m, r in answers.items()}
        winner = next(m for m, r in answers.items() if r.status_code == 200)
        loser = outer if winner == inner else inner
        assert_overlap(answers[loser], winner)
        ns = outer.split("/")[0]
        if winner == outer:
            assert_intact(srv, outer, f"{ns}/b/v1", OUTER_FILES)
        else:
            assert_intact(srv, inner, f"{ns}/b/v1/x", INNER_FILES)
        assert httpx.get(f"{srv.url}/models/{loser}").status_code == 404


def test_an_s3_sync_refuses_a_nesting_id_and_pulls_the_rest(tmp_path: Path, s3: S3Server) -> None:
    """A bucket holding both ids: the sync publishes the first it lists and reports the
    second as failed, naming the first; the first's files stay whole."""
    bucket = s3.bucket()
    url = f"s3://{bucket}/prod"
    storage = StorageTarget("s3", "s3", url, endpoint_url=s3.endpoint_url)
    for model_id, files in ((OUTER, OUTER_FILES), (INNER, INNER_FILES), ("n/c@v1", {"c": b"c"})):
        model = make_model(tmp_path / model_id.replace("/", "_"), model_id, files)
        assert publish_to_storage(model, storage, PublishOptions()).ok
    settings = Settings(
        models_dir=tmp_path / "models", models_url=url, s3_endpoint_url=s3.endpoint_url
    )
    (source,) = model_sources(settings)
    core = Core(settings, [source])
    report = source.pull(core)
    assert sorted(report.fetched) == sorted([OUTER, "n/c@v1"]), report
    assert set(report.failed) == {INNER}
    assert OUTER in report.failed[INNER] and "nest" in report.failed[INNER]
    assert model_files(tmp_path / "models", "n/b/v1") == OUTER_FILES
    assert core.registry.get(INNER) is None
    again = source.pull(core)  # the next scan: still refused, nothing moved
    assert set(again.failed) == {INNER}
    assert model_files(tmp_path / "models", "n/b/v1") == OUTER_FILES


def test_a_registration_cannot_claim_a_directory_inside_another_model(mlos_server):
    """n/b@v1 holds x/notes.txt: registering n/b/v1@x at n/b/v1/x would make a model of its
    directory (and a DELETE of it would remove the outer model's files)."""
    srv = mlos_server()
    upload_resumable(srv.url, OUTER, OUTER_FILES)
    inner_dir = srv.models_dir / "n/b/v1/x"
    for path in (None, str(inner_dir)):
        body = {"model_id": INNER} | ({"path": path} if path else {})
        r = httpx.post(f"{srv.url}/models/register", json=body, timeout=30)
        assert_overlap(r, OUTER)
    assert httpx.get(f"{srv.url}/models/{INNER}", timeout=10).status_code == 404
    assert_intact(srv, OUTER, "n/b/v1", OUTER_FILES)


def test_axon_publish_of_a_nesting_id_fails_at_once_naming_the_other(
    mlos_server, tmp_path: Path
) -> None:
    """The client does not retry a 409 model_overlap (it would get the same answer)."""
    from tests.helpers import error_lines, run_axon

    srv = mlos_server()
    upload_resumable(srv.url, OUTER, OUTER_FILES)
    source = tmp_path / "inner"
    for rel, data in INNER_FILES.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    assert run_axon("install", str(source), "--as", INNER).code == 0
    run = run_axon("publish", INNER, "--target", srv.url, "--retries", "3")
    assert run.code == 7, run.err
    (line,) = error_lines(run.err)
    assert OUTER in line and "another name or version" in line and "retry" not in line
    assert "attempts" not in line  # refused once, not retried
    assert_intact(srv, OUTER, "n/b/v1", OUTER_FILES)
