"""The resumable upload protocol (docs/upload-protocol.md) and bad input, over real HTTP."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures.common import wait_for
from tests.fixtures.mlos import manifest_for, upload_resumable

BIG = os.urandom(3 * 1024 * 1024 + 17)
FILES = {"weights.bin": BIG, "config.json": b'{"hidden": 8}', "sub/tok.txt": b"a b c"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_path(models: Path, digest: str) -> Path:
    return models / ".mlos" / "blobs" / "sha256" / digest[:2] / digest


def open_upload(url: str, model_id: str, files: dict[str, bytes], **kw) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/uploads",
        json={"model_id": model_id, "manifest": manifest_for(model_id, files)},
        **kw,
    )


def test_full_protocol_then_dedupe_across_models(mlos_server):
    srv = mlos_server()
    answer = upload_resumable(srv.url, "hf/a@v1", FILES)
    assert answer["status"] == "success" and answer["model_id"] == "hf/a@v1"
    opened = answer["opened"]
    assert opened["upload_id"].startswith("u-") and opened["unchanged"] is False
    assert {n["sha256"] for n in opened["needed"]} == {sha(b) for b in FILES.values()}
    d = srv.models_dir / "hf" / "a" / "v1"
    assert answer["path"] == str(d)
    for rel, data in FILES.items():
        assert (d / rel).read_bytes() == data
        # version files are hard links into the blob store
        assert os.stat(d / rel).st_ino == os.stat(blob_path(srv.models_dir, sha(data))).st_ino
    # another model sharing weights.bin: only the new file is needed, storage is shared
    other = {"weights.bin": BIG, "config.json": b'{"hidden": 16}'}
    second = upload_resumable(srv.url, "hf/b@v1", other)["opened"]
    assert [n["paths"] for n in second["needed"]] == [["config.json"]]
    assert second["have"] == ["weights.bin"]
    assert (
        os.stat(srv.models_dir / "hf/b/v1/weights.bin").st_ino == os.stat(d / "weights.bin").st_ino
    )
    # the visible manifest can be downloaded
    got = httpx.get(f"{srv.url}/v1/models/hf%2Fa%40v1/manifest")
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/yaml")
    assert (
        yaml.safe_load(got.text)["spec"]["format"]["files"]
        == manifest_for("hf/a@v1", FILES)["spec"]["format"]["files"]
    )
    missing = httpx.get(f"{srv.url}/v1/models/hf/none@v1/manifest")
    assert missing.status_code == 404 and "hf/none@v1" in missing.text
    # the same manifest again: unchanged, nothing needed, commit re-registers
    again = upload_resumable(srv.url, "hf/a@v1", FILES)
    assert again["opened"]["unchanged"] is True and again["opened"]["needed"] == []
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'mlos_uploads_total{kind="resumable",result="ok"} 3' in metrics
    assert "mlos_models 2" in metrics


def test_prepare_is_invisible_until_commit(mlos_server):
    srv = mlos_server()
    opened = upload_resumable(srv.url, "hf/p@v1", FILES, commit=False)
    uid = opened["upload_id"]
    r = httpx.post(f"{srv.url}/v1/uploads/{uid}/prepare")
    assert r.status_code == 200 and r.json()["state"] == "prepared"
    assert not (srv.models_dir / "hf" / "p").exists()
    assert httpx.get(f"{srv.url}/models/hf/p@v1").status_code == 404
    assert httpx.get(f"{srv.url}/v1/uploads/{uid}").json()["state"] == "prepared"
    r = httpx.post(f"{srv.url}/v1/uploads/{uid}/commit")
    assert r.status_code == 200
    assert (srv.models_dir / "hf/p/v1/weights.bin").read_bytes() == BIG
    # a committed upload is gone
    assert httpx.get(f"{srv.url}/v1/uploads/{uid}").status_code == 404


def test_commit_before_all_blobs_is_refused(mlos_server):
    srv = mlos_server()
    uid = open_upload(srv.url, "hf/c@v1", FILES).json()["upload_id"]
    r = httpx.post(f"{srv.url}/v1/uploads/{uid}/commit")
    assert r.status_code == 409 and r.json()["code"] == "missing_blob"
    assert not (srv.models_dir / "hf" / "c").exists()


def cut_put(port: int, path: str, total: int, body: bytes) -> None:
    """Send a PUT declaring ``total`` bytes, send only ``body``, then drop the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        s.sendall(body)
        time.sleep(0.3)


def test_resume_after_cut_connection(mlos_server):
    srv = mlos_server()
    opened = open_upload(srv.url, "hf/r@v1", {"weights.bin": BIG}).json()
    uid, digest = opened["upload_id"], sha(BIG)
    path = f"/v1/uploads/{uid}/blobs/{digest}"
    cut_put(srv.port, path, len(BIG), BIG[:1_000_000])

    def offset() -> int:
        return int(httpx.head(srv.url + path).headers["upload-offset"])

    wait_for(lambda: offset() == 1_000_000, timeout=10, what="partial bytes kept")
    assert httpx.get(f"{srv.url}/v1/uploads/{uid}").json()["needed"][0]["offset"] == 1_000_000
    # resuming from a wrong offset: 409 says where to resume
    r = httpx.put(srv.url + path, content=BIG[10:], headers={"Upload-Offset": "10"})
    assert r.status_code == 409 and r.json()["offset"] == 1_000_000
    # a short body: accepted, not complete
    r = httpx.put(
        srv.url + path, content=BIG[1_000_000:2_000_000], headers={"Upload-Offset": "1000000"}
    )
    assert r.status_code == 200 and r.json() == {
        "status": "success", "sha256": digest, "offset": 2_000_000, "complete": False
    }  # fmt: skip
    r = httpx.put(srv.url + path, content=BIG[2_000_000:], headers={"Upload-Offset": "2000000"})
    assert r.status_code == 201 and r.json()["complete"] is True
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit").status_code == 200
    assert (srv.models_dir / "hf/r/v1/weights.bin").read_bytes() == BIG


def test_abort_and_expiry_clean_up(mlos_server):
    srv = mlos_server(upload_ttl=1)
    partial_dir = srv.models_dir / ".mlos" / "partial"
    for action in ("abort", "expire"):
        opened = open_upload(srv.url, f"hf/{action}@v1", {"weights.bin": BIG}).json()
        uid, digest = opened["upload_id"], sha(BIG)
        cut_put(srv.port, f"/v1/uploads/{uid}/blobs/{digest}", len(BIG), BIG[:500_000])
        wait_for(lambda d=digest: (partial_dir / d).exists(), timeout=5, what="partial")
        assert httpx.get(f"{srv.url}/stats").json()["open_uploads"] == 1
        assert "mlos_open_uploads 1" in httpx.get(f"{srv.url}/metrics").text.splitlines()
        if action == "abort":
            r = httpx.delete(f"{srv.url}/v1/uploads/{uid}")
            assert r.status_code == 200 and r.json()["state"] == "aborted"
            assert not (partial_dir / digest).exists()
        else:
            wait_for(
                lambda u=uid: httpx.get(f"{srv.url}/v1/uploads/{u}").status_code == 404,
                timeout=10,
                what="upload expiry",
            )
            wait_for(lambda d=digest: not (partial_dir / d).exists(), timeout=10, what="gc")
        assert httpx.get(f"{srv.url}/v1/uploads/{uid}").status_code == 404
        assert not (srv.models_dir / "hf" / action).exists()
        assert httpx.get(f"{srv.url}/stats").json()["open_uploads"] == 0


def test_checksum_mismatch_and_wrong_lengths(mlos_server):
    srv = mlos_server()
    files = {"a.bin": b"A" * 100_000}
    uid = open_upload(srv.url, "hf/bad@v1", files).json()["upload_id"]
    path = f"{srv.url}/v1/uploads/{uid}/blobs/{sha(files['a.bin'])}"
    r = httpx.put(path, content=b"B" * 100_000)
    assert r.status_code == 422 and r.json()["code"] == "checksum_mismatch"
    assert r.json()["offset"] == 0 and "resend" in r.json()["message"]
    assert httpx.head(path).headers["upload-offset"] == "0"
    r = httpx.put(path, content=b"A" * 100_001)
    assert r.status_code == 400 and r.json()["code"] == "size_mismatch"
    assert httpx.head(path).headers["upload-offset"] == "0"
    r = httpx.put(f"{srv.url}/v1/uploads/{uid}/blobs/{'0' * 64}", content=b"x")
    assert r.status_code == 404 and r.json()["code"] == "unknown_blob"
    r = httpx.put(f"{srv.url}/v1/uploads/{uid}/blobs/NOTHEX", content=b"x")
    assert r.status_code == 400
    r = httpx.put(f"{srv.url}/v1/uploads/u-nope/blobs/{'0' * 64}", content=b"x")
    assert r.status_code == 404 and r.json()["code"] == "unknown_upload"
    blobs = srv.models_dir / ".mlos" / "blobs" / "sha256"
    assert not [p for p in blobs.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("model_id", "paths", "what"),
    [
        ("../etc@v1", ["a"], "invalid model reference"),
        ("/abs/x@v1", ["a"], "absolute"),
        ("ns/x\x00y@v1", ["a"], "NUL"),
        ("ns/" + "n" * 300 + "@v1", ["a"], "long"),
        ("ns/ok@v1", ["../evil"], "unsafe file path"),
        ("ns/ok@v1", ["/etc/passwd"], "absolute path"),
        ("ns/ok@v1", ["a\x00b"], "control character"),
        ("ns/ok@v1", ["d/" * 600 + "x"], "longer than"),
    ],
)
def test_bad_ids_and_paths_are_refused(mlos_server_shared, model_id, paths, what):
    srv = mlos_server_shared
    files = {p: b"x" for p in paths}
    manifest = manifest_for("ns/ok@v1", files)
    r = httpx.post(f"{srv.url}/v1/uploads", json={"model_id": model_id, "manifest": manifest})
    assert r.status_code == 400, r.text
    assert r.json()["status"] == "error" and what in r.json()["message"]
    assert not list((srv.models_dir / ".mlos" / "uploads").iterdir())


@pytest.fixture(scope="module")
def mlos_server_shared(tmp_path_factory):
    from tests.fixtures.mlos import ServerFactory

    factory = ServerFactory(tmp_path_factory.mktemp("shared"))
    yield factory.start()
    factory.stop_all()


def test_non_strict_manifest_and_bad_json(mlos_server):
    srv = mlos_server()
    m = manifest_for("ns/m@v1", {"a": b"x"})
    m["spec"]["format"]["files"][0]["sha256"] = ""
    r = httpx.post(f"{srv.url}/v1/uploads", json={"model_id": "ns/m@v1", "manifest": m})
    assert r.status_code == 400 and "sha256" in r.json()["message"]
    r = httpx.post(f"{srv.url}/v1/uploads", json={"model_id": "ns/m@v1", "manifest": "{: bad"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_manifest"
    r = httpx.post(f"{srv.url}/v1/uploads", content=b"[1, 2]")
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"


def test_size_limit(mlos_server, tmp_path):
    srv = mlos_server(max_upload_size="1M")
    r = open_upload(srv.url, "ns/big@v1", {"w": b"x" * (2 * 1024 * 1024)})
    assert r.status_code == 413 and "--max-upload-size" in r.json()["message"]
    f = tmp_path / "w"
    f.write_bytes(b"x" * (2 * 1024 * 1024))
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-F", "model_id=ns/big@v1",
         "-F", "manifest={}", "-F", f"model_files=@{f};filename=w", f"{srv.url}/models/upload"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.stdout == "413"
    assert not (srv.models_dir / "ns").exists()


def test_multipart_bad_input_stores_nothing(mlos_server, tmp_path):
    srv = mlos_server()
    m = manifest_for("ns/m@v1", {"w.bin": b"good"})
    import json

    def post(files: list, data: dict | None = None) -> httpx.Response:
        return httpx.post(f"{srv.url}/models/upload", data=data, files=files)

    base = {"model_id": "ns/m@v1", "manifest": json.dumps(m)}
    r = post([("model_files", ("../w.bin", b"good"))], base)
    assert r.status_code == 400 and r.json()["code"] == "invalid_path"
    r = post([("model_files", ("w.bin", b"evil"))], base)
    assert r.status_code == 422 and r.json()["code"] == "checksum_mismatch"
    r = post([("model_files", ("other.bin", b"x"))], base)
    assert r.status_code == 400 and r.json()["code"] == "missing_files"
    r = httpx.post(f"{srv.url}/models/upload", json=base)
    assert r.status_code == 415
    assert not (srv.models_dir / "ns").exists()
    blobs = srv.models_dir / ".mlos" / "blobs" / "sha256"
    assert not [p for p in blobs.rglob("*") if p.is_file()]
    assert not list((srv.models_dir / ".mlos" / "staging").iterdir())


def test_full_disk_answers_507_and_keeps_nothing(mlos_server, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    ok = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        == 0
    )
    if not ok:
        # a capability of the machine (root, CAP_SYS_ADMIN), not a service CI could install
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        srv = mlos_server(models_dir=mnt / "models")
        # too big for the free space: refused at open, nothing stored
        r = open_upload(srv.url, "ns/full@v1", {"w": BIG})
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage"
        # fits at open, but the disk fills up meanwhile: 507 on the PUT, partial dropped
        data = os.urandom(1_200_000)
        uid = open_upload(srv.url, "ns/full@v1", {"w": data}).json()["upload_id"]
        (mnt / "filler").write_bytes(b"\0" * 1_000_000)
        r = httpx.put(f"{srv.url}/v1/uploads/{uid}/blobs/{sha(data)}", content=data)
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage"
        assert not (mnt / "models" / ".mlos" / "partial" / sha(data)).exists()
        assert not (mnt / "models" / "ns").exists()
        srv.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_empty_file_and_head_headers(mlos_server):
    srv = mlos_server()
    files = {"empty.txt": b"", "w.bin": b"w" * 10}
    opened = open_upload(srv.url, "ns/e@v1", files).json()
    assert {n["size"] for n in opened["needed"]} == {0, 10}
    uid = opened["upload_id"]
    head = httpx.head(f"{srv.url}/v1/uploads/{uid}/blobs/{sha(b'w' * 10)}")
    assert head.headers["upload-offset"] == "0" and head.headers["upload-length"] == "10"
    for data in files.values():
        r = httpx.put(f"{srv.url}/v1/uploads/{uid}/blobs/{sha(data)}", content=data)
        assert r.status_code == 201, r.text
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit").status_code == 200
    assert (srv.models_dir / "ns/e/v1/empty.txt").read_bytes() == b""


def test_stalled_body_is_dropped_and_resumable(mlos_server):
    srv = mlos_server(body_timeout=1)
    opened = open_upload(srv.url, "hf/stall@v1", {"weights.bin": BIG}).json()
    uid, digest = opened["upload_id"], sha(BIG)
    path = f"/v1/uploads/{uid}/blobs/{digest}"
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BIG)}\r\n\r\n".encode())
        s.sendall(BIG[:300_000])
        # the stalled request holds the blob; once dropped, a resume from its offset works
        started = time.monotonic()
        r = httpx.put(
            srv.url + path, content=BIG[300_000:], headers={"Upload-Offset": "300000"}, timeout=30
        )
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < 10
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 408 ")
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit").status_code == 200


def test_multipart_cut_or_malformed_stores_nothing(mlos_server):
    srv = mlos_server()
    body = (
        b'--BND\r\nContent-Disposition: form-data; name="model_id"\r\n\r\nns/cut@v1\r\n'
        b'--BND\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n{}\r\n'
        b'--BND\r\nContent-Disposition: form-data; name="model_files"; filename="w.bin"\r\n\r\n'
    ) + BIG[:1_000_000]
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(
            b"POST /models/upload HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=BND\r\n"
            + f"Content-Length: {len(body) + 5_000_000}\r\n\r\n".encode()
        )
        s.sendall(body)
        time.sleep(0.5)
    staging = srv.models_dir / ".mlos" / "staging"
    wait_for(lambda: not list(staging.iterdir()), timeout=10, what="temp files removed")
    r = httpx.post(
        f"{srv.url}/models/upload",
        content=b"--BND\r\nthis is not multipart",
        headers={"Content-Type": "multipart/form-data; boundary=BND"},
    )
    assert r.status_code == 400 and r.json()["status"] == "error"
    blobs = srv.models_dir / ".mlos" / "blobs" / "sha256"
    assert not [p for p in blobs.rglob("*") if p.is_file()]
    assert not (srv.models_dir / "ns").exists()
    assert httpx.get(f"{srv.url}/models").json()["total"] == 0


def test_a_full_length_partial_left_by_a_crash_is_finished_at_open(mlos_server):
    """kill -9 between a blob's last byte and its check leaves a partial of full length: the
    next open verifies it (complete: "have"; wrong content: dropped, needed from 0), rather
    than ask for it at offset == size forever."""
    srv = mlos_server()
    good, bad = b"g" * 5000, b"b" * 5000
    partial = srv.models_dir / ".mlos" / "partial"
    srv.stop()
    (partial / sha(good)).write_bytes(good)
    (partial / sha(bad)).write_bytes(b"not the content, same length".ljust(5000, b"."))
    srv.start()
    files = {"good.bin": good, "bad.bin": bad}
    opened = open_upload(srv.url, "ns/crash@v1", files).json()
    assert opened["have"] == ["good.bin"]
    assert [(n["paths"], n["offset"]) for n in opened["needed"]] == [(["bad.bin"], 0)]
    assert blob_path(srv.models_dir, sha(good)).read_bytes() == good
    assert not (partial / sha(bad)).exists()
    uid = opened["upload_id"]
    r = httpx.put(f"{srv.url}/v1/uploads/{uid}/blobs/{sha(bad)}", content=bad)
    assert r.status_code == 201, r.text
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit").status_code == 200
    assert (srv.models_dir / "ns/crash/v1/good.bin").read_bytes() == good
