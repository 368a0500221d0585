"""Deduplication is per tenant: with a tokens file, a tenant links content the server holds
without sending it only when the content is in one of its own models, or it sent the bytes
for an upload still open. Otherwise it sends them (verified, then dropped: storage stays
shared). Without a tokens file dedup stays global. Over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS, manifest_for, upload_resumable

SECRET = b"bravo's weights, which alpha has never seen " * 2000
PUBLIC = b'{"hidden": 8}'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_path(models: Path, digest: str) -> Path:
    return models / ".mlos" / "blobs" / "sha256" / digest[:2] / digest


def open_upload(srv: Any, model_id: str, files: dict[str, bytes], headers: dict[str, str]):
    body = {"model_id": model_id, "manifest": manifest_for(model_id, files)}
    r = httpx.post(f"{srv.url}/v1/uploads", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def needed(opened: dict[str, Any]) -> dict[str, int]:
    """sha256 -> offset of what the server asks for."""
    return {n["sha256"]: n["offset"] for n in opened["needed"]}


def put(srv: Any, upload_id: str, data: bytes, headers: dict[str, str], offset: int = 0):
    return httpx.put(
        f"{srv.url}/v1/uploads/{upload_id}/blobs/{sha(data)}",
        content=data[offset:],
        headers={**headers, "Upload-Offset": str(offset)},
        timeout=30,
    )


def head_offset(srv: Any, upload_id: str, data: bytes, headers: dict[str, str]) -> int:
    r = httpx.head(f"{srv.url}/v1/uploads/{upload_id}/blobs/{sha(data)}", headers=headers)
    assert r.status_code == 200, r.status_code
    return int(r.headers["upload-offset"])


def commit(srv: Any, upload_id: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/uploads/{upload_id}/commit", headers=headers, timeout=30)


def test_a_tenant_cannot_get_another_tenants_bytes_without_sending_them(mlos_server):
    srv = mlos_server(tokens=TOKENS)
    upload_resumable(srv.url, "bravo/m@v1", {"w.bin": SECRET}, headers=BRAVO)
    store_ino = os.stat(blob_path(srv.models_dir, sha(SECRET))).st_ino
    # alpha read the sha256 from bravo's manifest: it is needed, from 0, and not "had"
    files = {"w.bin": SECRET, "config.json": PUBLIC}
    opened = open_upload(srv, "alpha/x@v1", files, ALPHA)
    assert needed(opened) == {sha(SECRET): 0, sha(PUBLIC): 0}
    assert opened["have"] == []
    uid = opened["upload_id"]
    assert head_offset(srv, uid, SECRET, ALPHA) == 0
    # a commit without the bytes is refused and shows nothing
    assert put(srv, uid, PUBLIC, ALPHA).status_code == 201
    r = commit(srv, uid, ALPHA)
    assert r.status_code == 409 and r.json()["code"] == "missing_blob", r.text
    assert "w.bin" in r.json()["message"]
    assert not (srv.models_dir / "alpha").exists()
    assert httpx.get(f"{srv.url}/models/alpha/x@v1").status_code == 404
    # other bytes under that name are refused; the right ones are verified, then dropped
    fake = httpx.put(
        f"{srv.url}/v1/uploads/{uid}/blobs/{sha(SECRET)}",
        content=b"y" * len(SECRET),
        headers=ALPHA,
    )
    assert fake.status_code == 422 and fake.json()["code"] == "checksum_mismatch", fake.text
    assert put(srv, uid, SECRET, ALPHA).status_code == 201
    assert os.stat(blob_path(srv.models_dir, sha(SECRET))).st_ino == store_ino  # one copy
    assert head_offset(srv, uid, SECRET, ALPHA) == len(SECRET)
    r = commit(srv, uid, ALPHA)
    assert r.status_code == 200, r.text
    assert (srv.models_dir / "alpha/x/v1/w.bin").read_bytes() == SECRET
    assert os.stat(srv.models_dir / "alpha/x/v1/w.bin").st_ino == store_ino
    # bravo still dedupes its own content, and alpha now its own
    again = open_upload(srv, "bravo/m@v2", {"w.bin": SECRET, "c.json": PUBLIC}, BRAVO)
    assert needed(again) == {sha(PUBLIC): 0} and again["have"] == ["w.bin"]
    mine = open_upload(srv, "alpha/x@v2", {"w.bin": SECRET}, ALPHA)
    assert needed(mine) == {} and mine["have"] == ["w.bin"]


def test_the_one_shot_upload_takes_no_unsent_content_of_another_tenant(mlos_server):
    srv = mlos_server(tokens=TOKENS)
    upload_resumable(srv.url, "bravo/m@v1", {"w.bin": SECRET}, headers=BRAVO)

    def oneshot(model_id: str, headers: dict[str, str], parts: dict[str, bytes]):
        manifest = json.dumps(manifest_for(model_id, {"w.bin": SECRET, "c.json": PUBLIC}))
        return httpx.post(
            f"{srv.url}/models/upload",
            data={"model_id": model_id, "manifest": manifest},
            files=[("model_files", (name, b)) for name, b in parts.items()],
            headers=headers,
            timeout=30,
        )

    r = oneshot("alpha/y@v1", ALPHA, {"c.json": PUBLIC})  # w.bin left out: "dedup"
    assert r.status_code == 400 and r.json()["code"] == "missing_files", r.text
    assert "w.bin" in r.json()["message"]
    assert not (srv.models_dir / "alpha").exists()
    # bravo may leave its own content out
    r = oneshot("bravo/y@v1", BRAVO, {"c.json": PUBLIC})
    assert r.status_code == 201, r.text
    # alpha sending the bytes gets them: checked, and stored once
    r = oneshot("alpha/y@v1", ALPHA, {"w.bin": SECRET, "c.json": PUBLIC})
    assert r.status_code == 201, r.text
    ino = {os.stat(srv.models_dir / p / "w.bin").st_ino for p in ("bravo/m/v1", "alpha/y/v1")}
    assert len(ino) == 1


def test_partial_uploads_are_per_tenant(mlos_server):
    """bravo's half-sent blob is neither resumed nor revealed by alpha's upload of it."""
    srv = mlos_server(tokens=TOKENS)
    b_open = open_upload(srv, "bravo/p@v1", {"w.bin": SECRET}, BRAVO)
    half = len(SECRET) // 2
    r = httpx.put(
        f"{srv.url}/v1/uploads/{b_open['upload_id']}/blobs/{sha(SECRET)}",
        content=SECRET[:half],
        headers=BRAVO,
    )
    assert r.status_code == 200 and r.json() == {**r.json(), "complete": False, "offset": half}
    a_open = open_upload(srv, "alpha/p@v1", {"w.bin": SECRET}, ALPHA)
    assert needed(a_open) == {sha(SECRET): 0}
    # alpha cannot take bravo's first half by starting at bravo's offset
    r = put(srv, a_open["upload_id"], SECRET, ALPHA, offset=half)
    assert r.status_code == 409 and r.json()["offset"] == 0, r.text
    assert put(srv, a_open["upload_id"], SECRET, ALPHA).status_code == 201
    assert commit(srv, a_open["upload_id"], ALPHA).status_code == 200
    # bravo still holds its half and resumes it (the store has the blob now: done at once)
    assert head_offset(srv, b_open["upload_id"], SECRET, BRAVO) == half
    assert put(srv, b_open["upload_id"], SECRET, BRAVO, offset=half).status_code == 201
    assert commit(srv, b_open["upload_id"], BRAVO).status_code == 200
    assert (srv.models_dir / "bravo/p/v1/w.bin").read_bytes() == SECRET


def test_what_a_tenant_sent_survives_a_restart_and_goes_with_its_upload(mlos_server):
    srv = mlos_server(tokens=TOKENS)
    upload_resumable(srv.url, "bravo/m@v1", {"w.bin": SECRET}, headers=BRAVO)
    opened = open_upload(srv, "alpha/r@v1", {"w.bin": SECRET, "c.json": PUBLIC}, ALPHA)
    uid = opened["upload_id"]
    assert put(srv, uid, SECRET, ALPHA).status_code == 201
    srv.restart()
    again = httpx.get(f"{srv.url}/v1/uploads/{uid}", headers=ALPHA).json()
    assert needed(again) == {sha(PUBLIC): 0} and again["have"] == ["w.bin"]
    # a second upload of alpha's may use what alpha sent for the first, while it is open
    other = open_upload(srv, "alpha/r@v2", {"w.bin": SECRET}, ALPHA)
    assert other["have"] == ["w.bin"]
    for upload_id in (uid, other["upload_id"]):  # aborted: what alpha sent goes with them
        assert httpx.delete(f"{srv.url}/v1/uploads/{upload_id}", headers=ALPHA).is_success
    third = open_upload(srv, "alpha/r@v3", {"w.bin": SECRET}, ALPHA)
    assert needed(third) == {sha(SECRET): 0}


def test_a_deleted_model_no_longer_vouches_for_its_content(mlos_server):
    """alpha published content bravo also holds, then deleted its model: the content is
    still stored (bravo's), but alpha must send it again; "have" would tell alpha that some
    other tenant holds it. A replaced version counts while kept for rollback."""
    srv = mlos_server(tokens=TOKENS)
    upload_resumable(srv.url, "bravo/m@v1", {"w.bin": SECRET}, headers=BRAVO)
    upload_resumable(srv.url, "alpha/d@v1", {"w.bin": SECRET}, headers=ALPHA)
    upload_resumable(srv.url, "alpha/d@v1", {"w.bin": PUBLIC}, headers=ALPHA)
    kept = open_upload(srv, "alpha/e@v1", {"w.bin": SECRET}, ALPHA)
    assert kept["have"] == ["w.bin"]  # in alpha's previous generation of alpha/d@v1
    assert httpx.delete(f"{srv.url}/v1/uploads/{kept['upload_id']}", headers=ALPHA).is_success
    assert httpx.delete(f"{srv.url}/models/alpha/d@v1", headers=ALPHA).status_code == 200
    assert blob_path(srv.models_dir, sha(SECRET)).exists()  # bravo's
    gone = open_upload(srv, "alpha/e@v1", {"w.bin": SECRET}, ALPHA)
    assert needed(gone) == {sha(SECRET): 0} and gone["have"] == []
    srv.restart()  # what models hold is read again from the disk: the same answer
    again = httpx.get(f"{srv.url}/v1/uploads/{gone['upload_id']}", headers=ALPHA).json()
    assert needed(again) == {sha(SECRET): 0}
    bravo = open_upload(srv, "bravo/m@v2", {"w.bin": SECRET}, BRAVO)
    assert bravo["have"] == ["w.bin"]


def test_a_model_deleted_right_after_its_publish_vouches_for_nothing(mlos_server):
    """What alpha sent for an upload it committed is forgotten when the model goes (not a
    minute later, at the next sweep)."""
    srv = mlos_server(tokens=TOKENS)
    upload_resumable(srv.url, "bravo/m@v1", {"w.bin": SECRET}, headers=BRAVO)
    upload_resumable(srv.url, "alpha/f@v1", {"w.bin": SECRET}, headers=ALPHA)
    assert httpx.delete(f"{srv.url}/models/alpha/f@v1", headers=ALPHA).status_code == 200
    opened = open_upload(srv, "alpha/g@v1", {"w.bin": SECRET}, ALPHA)
    assert needed(opened) == {sha(SECRET): 0} and opened["have"] == []


def test_without_tokens_dedup_stays_global(mlos_server):
    srv = mlos_server()
    upload_resumable(srv.url, "bravo/m@v1", {"w.bin": SECRET})
    opened = upload_resumable(srv.url, "alpha/x@v1", {"w.bin": SECRET, "c.json": PUBLIC})
    assert opened["opened"]["have"] == ["w.bin"]
    assert needed(opened["opened"]) == {sha(PUBLIC): 0}
    assert not (srv.models_dir / ".mlos" / "tenants").exists()
