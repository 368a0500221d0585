"""The conditional open (docs/upload-protocol.md): an open naming the digest of its manifest
is answered "unchanged" without an upload when that is the visible version's digest, over
real HTTP against a real mlos-core; the digest never stands in for a manifest the server has
not checked."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.mlos_client import Invalid, OpenAnswer
from axon.publish import publish
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef
from tests.fixtures.common import wait_for
from tests.fixtures.mlos import manifest_for, upload_resumable

FILES = {"weights.bin": b"w" * 1000, "config.json": b'{"hidden": 8}'}
OTHER = {"weights.bin": b"v" * 1000, "config.json": b'{"hidden": 8}'}
MODEL = "hf/cond@v1"


def digest_of(model_id: str, files: dict[str, bytes]) -> str:
    return Manifest(manifest_for(model_id, files)).digest()


def conditional_open(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/uploads", json=body, timeout=30)


def visible(srv: Any, model_id: str = MODEL) -> bytes:
    ns, _, rest = model_id.partition("/")
    name, _, version = rest.partition("@")
    return (srv.models_dir / ns / name / version / "manifest.yaml").read_bytes()


def open_uploads(url: str) -> int:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("mlos_open_uploads "):
            return int(line.split()[1])
    raise AssertionError("no mlos_open_uploads in /metrics")


def test_the_visible_digest_is_answered_unchanged_without_an_upload(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    committed = upload_resumable(srv.url, MODEL, FILES)
    digest = digest_of(MODEL, FILES)
    assert committed["manifest_sha256"] == digest
    body = {"model_id": MODEL, "manifest": manifest_for(MODEL, FILES), "manifest_sha256": digest}
    answer = conditional_open(srv.url, body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["upload_id"] is None and data["unchanged"] is True
    assert data["manifest_sha256"] == digest and data["model_id"] == MODEL
    assert data["path"] == committed["path"] and "needed" not in data
    assert open_uploads(srv.url) == 0  # nothing opened, so nothing can be committed


def test_the_sent_manifest_is_not_parsed_when_the_digest_is_the_visible_one(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    upload_resumable(srv.url, MODEL, FILES)
    before = visible(srv)
    digest = digest_of(MODEL, FILES)
    # a lying client: the visible digest with another manifest, even one no check would pass
    for sent in (
        manifest_for(MODEL, OTHER),
        {"spec": {"format": {"files": [{"path": "../../etc/passwd", "size": 1}]}}},
        "not: [yaml",
    ):
        body = {"model_id": MODEL, "manifest": sent, "manifest_sha256": digest}
        answer = conditional_open(srv.url, body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["upload_id"] is None  # "nothing to do", never "accepted"
    assert visible(srv) == before and open_uploads(srv.url) == 0
    assert not (srv.models_dir.parent / "etc").exists()


def test_a_changed_manifest_is_checked_in_full(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    upload_resumable(srv.url, MODEL, FILES)
    bad = manifest_for(MODEL, OTHER)
    bad["spec"]["format"]["files"][0]["path"] = "../x"
    body = {"model_id": MODEL, "manifest": bad, "manifest_sha256": Manifest(bad).digest()}
    refused = conditional_open(srv.url, body)
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_manifest"
    # changed and valid: a normal upload, the digest checked against the manifest sent
    good = manifest_for(MODEL, OTHER)
    body = {"model_id": MODEL, "manifest": good, "manifest_sha256": digest_of(MODEL, OTHER)}
    opened = conditional_open(srv.url, body)
    assert opened.status_code == 201 and opened.json()["unchanged"] is False
    assert opened.json()["upload_id"].startswith("u-")


def test_a_digest_that_is_not_the_sent_manifests_is_refused(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    upload_resumable(srv.url, MODEL, FILES)
    for claimed in (digest_of(MODEL, {"x": b"1"}), hashlib.sha256(b"").hexdigest()):
        body = {
            "model_id": MODEL,
            "manifest": manifest_for(MODEL, OTHER),
            "manifest_sha256": claimed,
        }
        answer = conditional_open(srv.url, body)
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_digest"
    for claimed in ("A" * 64, "a" * 63, 7, ["a" * 64]):
        body = {
            "model_id": MODEL,
            "manifest": manifest_for(MODEL, FILES),
            "manifest_sha256": claimed,
        }
        answer = conditional_open(srv.url, body)
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_digest"
    assert open_uploads(srv.url) == 0


def test_a_new_version_or_another_registration_is_no_longer_unchanged(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    upload_resumable(srv.url, MODEL, FILES)
    digest = digest_of(MODEL, FILES)
    body = {"model_id": MODEL, "manifest": manifest_for(MODEL, FILES), "manifest_sha256": digest}
    assert conditional_open(srv.url, body).json()["upload_id"] is None
    upload_resumable(srv.url, MODEL, OTHER)  # the visible version changes
    opened = conditional_open(srv.url, body)
    assert opened.status_code == 201 and opened.json()["unchanged"] is False
    upload_resumable(srv.url, MODEL, FILES)
    assert conditional_open(srv.url, body).json()["upload_id"] is None
    # registered otherwise than a commit registers it: a commit must register it again
    path = str(srv.models_dir / "hf" / "cond" / "v1")
    reg = {"model_id": MODEL, "path": path, "framework": "onnx"}
    assert httpx.post(f"{srv.url}/models/register", json=reg, timeout=10).status_code < 300
    opened = conditional_open(srv.url, body)
    assert opened.status_code == 201 and opened.json()["unchanged"] is True
    committed = httpx.post(f"{srv.url}/v1/uploads/{opened.json()['upload_id']}/commit", timeout=30)
    assert committed.status_code == 200
    assert conditional_open(srv.url, body).json()["upload_id"] is None


def test_the_short_cut_asks_for_the_same_token_as_any_open(mlos_server) -> None:
    tenants = {
        "tenants": {
            "alpha": {"tokens": ["a-token"], "namespaces": ["alpha"]},
            "bravo": {"tokens": ["b-token"], "namespaces": ["bravo"]},
        }
    }
    srv = mlos_server(tokens=tenants, no_fsync=True)
    model = "alpha/cond@v1"
    upload_resumable(srv.url, model, FILES, headers={"Authorization": "Bearer a-token"})
    body = {
        "model_id": model,
        "manifest": manifest_for(model, FILES),
        "manifest_sha256": digest_of(model, FILES),
    }
    for headers, status in (({}, 401), ({"Authorization": "Bearer b-token"}, 403)):
        answer = httpx.post(f"{srv.url}/v1/uploads", json=body, headers=headers, timeout=30)
        assert answer.status_code == status, answer.text
        assert "manifest_sha256" not in answer.json()  # says nothing about the model
    alpha = {"Authorization": "Bearer a-token"}
    answer = httpx.post(f"{srv.url}/v1/uploads", json=body, headers=alpha, timeout=30)
    assert answer.status_code == 200 and answer.json()["upload_id"] is None


def test_axon_publish_unchanged_opens_nothing_and_commits_nothing(
    mlos_server, installed_model: ModelRef
) -> None:
    srv = mlos_server(no_fsync=True)
    assert publish(installed_model, srv.url).ok
    log = Path(srv.log_path)
    # The server logs each request after answering it: count once the lines are there.
    wait_for(lambda: "/commit" in log.read_text(), timeout=10, what="the commit's log line")
    commits = log.read_text().count("/commit")
    again = publish(installed_model, srv.url)
    (result,) = again.results
    assert again.ok and result.registered and result.files_sent == 0
    assert result.path == str(srv.models_dir / installed_model.relpath)
    assert open_uploads(srv.url) == 0  # GET /metrics, sent after every request of the publish
    wait_for(lambda: '"GET /metrics"' in log.read_text(), timeout=10, what="its log line")
    assert log.read_text().count("/commit") == commits


def _settled(**changes: Any) -> dict[str, Any]:
    answer = {
        "status": "success",
        "model_id": MODEL,
        "upload_id": None,
        "unchanged": True,
        "manifest_sha256": "d" * 64,
        "path": "/models/hf/cond/v1",
    }
    return {**answer, **changes}


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (_settled(manifest_sha256="e" * 64), "manifest_sha256"),
        (_settled(unchanged=False), "unchanged"),
        (_settled(needed=[{"sha256": "a" * 64}]), "needed"),
        (_settled(model_id="hf/other@v1"), "model_id"),
    ],
)
def test_a_settled_answer_must_be_for_the_digest_sent(answer: dict[str, Any], words: str) -> None:
    manifest = Manifest(manifest_for(MODEL, FILES))
    ref = ModelRef.parse(MODEL)
    ok = OpenAnswer.parse(_settled(), ref=ref, manifest=manifest, digest="d" * 64)
    assert ok.settled is not None and ok.unchanged and ok.needed == ()
    with pytest.raises(Invalid, match=words):
        OpenAnswer.parse(answer, ref=ref, manifest=manifest, digest="d" * 64)
