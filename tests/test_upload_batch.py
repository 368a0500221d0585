"""Many blobs in one request (``PUT /v1/uploads/{id}/blobs``, docs/upload-protocol.md) against
a real ``mlos-core`` over HTTP: each blob answered on its own, a corrupt one refused by name
with the others kept, a cut batch resumed without sending again what arrived, tenancy and
limits as for single PUTs; and ``axon publish`` using batches where the server offers them,
single PUTs where it does not."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.errors import EXIT_TRANSPORT
from axon.publish import PublishOptions, publish
from modelpkg.refs import ModelRef
from tests.fixtures.hostile_server import FakeCore, HostileServer, json_reply
from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS, manifest_for, upload_resumable

MiB = 1024 * 1024
FAST = {"retries": 2, "backoff": 0.05, "max_backoff": 0.1}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content(i: int, size: int) -> bytes:
    """``size`` bytes that differ for every ``i`` (and are not all alike)."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def record(data: bytes, *, as_sha: str | None = None) -> bytes:
    return f"{as_sha or sha(data)} {len(data)}\n".encode() + data


def open_upload(
    url: str, model_id: str, files: dict[str, bytes], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    body = {"model_id": model_id, "manifest": manifest_for(model_id, files)}
    r = httpx.post(f"{url}/v1/uploads", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    opened: dict[str, Any] = r.json()
    return opened


def put_batch(
    url: str, upload_id: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.put(
        f"{url}/v1/uploads/{upload_id}/blobs", content=body, headers=headers, timeout=60
    )


def state(url: str, upload_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/uploads/{upload_id}", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def needed(answer: dict[str, Any]) -> dict[str, int]:
    """sha256 -> offset of what the server still asks for."""
    return {n["sha256"]: n["offset"] for n in answer["needed"]}


def commit(url: str, upload_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/uploads/{upload_id}/commit", headers=headers, timeout=60)


def raw_put(port: int, path: str, length: int, body: bytes) -> socket.socket:
    """A PUT whose head declares ``length`` bytes but which sends only ``body`` (so far)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def settled(url: str, upload_id: str, want: dict[str, int], timeout: float = 15.0) -> None:
    """Wait until the upload needs exactly ``want`` (sha256 -> offset)."""
    deadline = time.monotonic() + timeout
    while True:
        now = needed(state(url, upload_id))
        if now == want or time.monotonic() > deadline:
            assert now == want
            return
        time.sleep(0.05)


# ---- the protocol ---------------------------------------------------------------------------
def test_one_batch_stores_every_blob_and_answers_each(mlos_server) -> None:
    srv = mlos_server()  # fsync on: the batch's one durability step runs
    files = {f"shards/{i:03d}.bin": content(i, 1000 + 997 * i) for i in range(40)}
    files["same-as-0.bin"] = files["shards/000.bin"]
    files["empty.txt"] = b""
    opened = open_upload(srv.url, "ns/many@v1", files)
    assert opened["blob_batches"] is True
    by_sha = {sha(b): b for b in files.values()}
    assert len(opened["needed"]) == len(by_sha) == 41  # the duplicate once
    order = [n["sha256"] for n in opened["needed"]]
    r = put_batch(srv.url, opened["upload_id"], b"".join(record(by_sha[s]) for s in order))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "success" and answer["upload_id"] == opened["upload_id"]
    assert [b["sha256"] for b in answer["blobs"]] == order
    for b in answer["blobs"]:
        assert b == {"sha256": b["sha256"], "offset": len(by_sha[b["sha256"]]), "complete": True}
    assert needed(state(srv.url, opened["upload_id"])) == {}
    for digest in order:  # in the store, read-only, as a single PUT leaves them
        blob = srv.models_dir / ".mlos" / "blobs" / "sha256" / digest[:2] / digest
        assert blob.read_bytes() == by_sha[digest]
        assert blob.stat().st_mode & 0o222 == 0
    assert commit(srv.url, opened["upload_id"]).status_code == 200
    for path, data in files.items():
        assert (srv.models_dir / "ns/many/v1" / path).read_bytes() == data


def test_a_corrupt_blob_is_refused_by_name_and_the_others_kept(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    a, b, c = content(1, 30_000), content(2, 30_000), content(3, 30_000)
    opened = open_upload(srv.url, "ns/m@v1", {"a.bin": a, "dir/b.bin": b, "c.bin": c})
    uid = opened["upload_id"]
    bad = b[:100] + bytes([b[100] ^ 1]) + b[101:]  # one bit off, same size
    r = put_batch(srv.url, uid, record(a) + record(bad, as_sha=sha(b)) + record(c))
    assert r.status_code == 200, r.text
    first, second, third = r.json()["blobs"]
    assert first == {"sha256": sha(a), "offset": len(a), "complete": True}
    assert third == {"sha256": sha(c), "offset": len(c), "complete": True}
    assert second["sha256"] == sha(b) and second["complete"] is False
    assert second["offset"] == 0 and second["code"] == "checksum_mismatch"
    assert "dir/b.bin" in second["message"]
    assert needed(state(srv.url, uid)) == {sha(b): 0}  # only that one, from its start
    r = commit(srv.url, uid)
    assert r.status_code == 409 and "dir/b.bin" in r.json()["message"]
    again = put_batch(srv.url, uid, record(b))
    assert again.json()["blobs"][0]["complete"] is True
    assert commit(srv.url, uid).status_code == 200
    assert (srv.models_dir / "ns/m/v1/dir/b.bin").read_bytes() == b


def test_a_cut_batch_keeps_what_arrived_and_resumes_from_there(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    parts = [content(i, 50_000) for i in range(4)]
    files = {f"p{i}.bin": d for i, d in enumerate(parts)}
    opened = open_upload(srv.url, "ns/cut@v1", files)
    uid = opened["upload_id"]
    body = b"".join(record(d) for d in parts)
    head = len(record(parts[2])) - len(parts[2])  # its head line's length
    cut_at = 2 * len(record(parts[0])) + head + 20_000  # two whole, 20,000 bytes of the third
    sock = raw_put(srv.port, f"/v1/uploads/{uid}/blobs", len(body), body[:cut_at])
    time.sleep(0.2)
    sock.close()
    settled(srv.url, uid, {sha(parts[2]): 20_000, sha(parts[3]): 0})
    # what arrived is not sent again: the third from byte 20,000, the fourth in a batch
    r = httpx.put(
        f"{srv.url}/v1/uploads/{uid}/blobs/{sha(parts[2])}",
        content=parts[2][20_000:],
        headers={"Upload-Offset": "20000"},
    )
    assert r.status_code == 201, r.text
    assert put_batch(srv.url, uid, record(parts[3])).json()["blobs"][0]["complete"] is True
    assert commit(srv.url, uid).status_code == 200
    for name, data in files.items():
        assert (srv.models_dir / "ns/cut/v1" / name).read_bytes() == data


def test_a_blob_the_server_has_is_answered_complete_and_its_bytes_dropped(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    kept = content(7, 5000)
    upload_resumable(srv.url, "ns/old@v1", {"k.bin": kept})
    fresh = content(8, 5000)
    opened = open_upload(srv.url, "ns/new@v1", {"k.bin": kept, "f.bin": fresh})
    assert needed(opened) == {sha(fresh): 0}
    # sent anyway (a client that opened before the other upload finished): nothing changes
    r = put_batch(srv.url, opened["upload_id"], record(kept) + record(fresh))
    assert [b["complete"] for b in r.json()["blobs"]] == [True, True]
    assert commit(srv.url, opened["upload_id"]).status_code == 200


# ---- tenancy and limits, as for single PUTs ---------------------------------------------------
def test_tenancy_holds_for_batches(mlos_server) -> None:
    srv = mlos_server(tokens=TOKENS, no_fsync=True)
    secret, public = content(11, 40_000), content(12, 300)
    opened = open_upload(srv.url, "bravo/m@v1", {"w.bin": secret}, BRAVO)
    uid = opened["upload_id"]
    # no token, another tenant's token: refused before a byte is stored
    assert put_batch(srv.url, uid, record(secret)).status_code == 401
    assert put_batch(srv.url, uid, record(secret), ALPHA).status_code == 403
    assert needed(state(srv.url, uid, BRAVO)) == {sha(secret): 0}
    assert put_batch(srv.url, uid, record(secret), BRAVO).json()["blobs"][0]["complete"]
    assert commit(srv.url, uid, BRAVO).status_code == 200
    store = srv.models_dir / ".mlos" / "blobs" / "sha256" / sha(secret)[:2] / sha(secret)
    ino = os.stat(store).st_ino
    # alpha knows the sha256 but not the bytes: it must send them, and other bytes are refused
    mine = open_upload(srv.url, "alpha/x@v1", {"w.bin": secret, "c.json": public}, ALPHA)
    assert needed(mine) == {sha(secret): 0, sha(public): 0}
    fake = b"y" * len(secret)
    r = put_batch(
        srv.url, mine["upload_id"], record(public) + record(fake, as_sha=sha(secret)), ALPHA
    )
    first, second = r.json()["blobs"]
    assert first["complete"] and second["code"] == "checksum_mismatch"
    assert commit(srv.url, mine["upload_id"], ALPHA).status_code == 409
    r = put_batch(srv.url, mine["upload_id"], record(secret), ALPHA)
    assert r.json()["blobs"][0]["complete"]
    assert os.stat(store).st_ino == ino  # verified, then dropped: one copy in the store
    # sent for an open upload, it is alpha's for its next upload too (then its model's)
    nxt = open_upload(srv.url, "alpha/y@v1", {"w.bin": secret}, ALPHA)
    assert needed(nxt) == {} and nxt["have"] == ["w.bin"]
    assert commit(srv.url, mine["upload_id"], ALPHA).status_code == 200
    assert (srv.models_dir / "alpha/x/v1/w.bin").read_bytes() == secret


@pytest.mark.parametrize(
    ("bad", "status", "code"),
    [
        (lambda other, size: record(other), 404, "unknown_blob"),
        (lambda other, size: f"{sha(b'z' * size)} {size + 1}\n".encode(), 400, "size_mismatch"),
        (lambda other, size: b"not a head line\n", 400, "invalid_batch"),
        (lambda other, size: b"0" * 200, 400, "invalid_batch"),
    ],
)
def test_a_record_that_is_not_one_ends_the_batch_and_keeps_those_before(
    mlos_server, bad, status: int, code: str
) -> None:
    srv = mlos_server(no_fsync=True)
    a, z = content(21, 3000), b"z" * 3000
    opened = open_upload(srv.url, "ns/bad@v1", {"a.bin": a, "z.bin": z})
    uid = opened["upload_id"]
    r = put_batch(srv.url, uid, record(a) + bad(content(22, 100), len(z)) + record(z))
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["code"] == code and "record 2 of the batch" in answer["message"]
    assert answer["blobs"] == [{"sha256": sha(a), "offset": len(a), "complete": True}]
    assert needed(state(srv.url, uid)) == {sha(z): 0}


def test_a_stalled_batch_times_out_and_keeps_what_arrived(mlos_server) -> None:
    srv = mlos_server(no_fsync=True, body_timeout=1, min_body_rate=0)
    a, b = content(31, 20_000), content(32, 20_000)
    opened = open_upload(srv.url, "ns/slow@v1", {"a.bin": a, "b.bin": b})
    uid = opened["upload_id"]
    body = record(a) + record(b)
    sock = raw_put(srv.port, f"/v1/uploads/{uid}/blobs", len(body), body[: len(record(a)) + 500])
    try:
        sock.settimeout(20)
        answer = sock.recv(65536)  # the server gives up on the body: 408, connection closed
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    head = len(record(b)) - len(b)
    settled(srv.url, uid, {sha(b): 500 - head})


def test_the_open_limits_hold_for_a_batched_model(mlos_server) -> None:
    srv = mlos_server(no_fsync=True, max_files=10)
    files = {f"f{i}.bin": content(i, 100) for i in range(11)}
    body = {"model_id": "ns/wide@v1", "manifest": manifest_for("ns/wide@v1", files)}
    r = httpx.post(f"{srv.url}/v1/uploads", json=body, timeout=30)
    assert r.status_code == 413 and r.json()["code"] == "too_many_files"


# ---- axon publish -----------------------------------------------------------------------------
def many_files(root: Path, n: int, size: int) -> Path:
    """A model directory of ``n`` small distinct files plus a config."""
    for i in range(n):
        path = root / "shards" / f"{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(1000 + i, size))
    (root / "config.json").write_text('{"model_type": "bert"}')
    return root


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.yaml"
    }


def test_publish_sends_small_files_in_a_few_batches(
    mlos_server, tcp_proxy, tmp_path: Path, install_model
) -> None:
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    source = many_files(tmp_path / "src", 300, 10_000)
    ref = install_model(source, "ns/many@v1")
    result = publish(ref, proxy.url)
    (r,) = result.results
    assert result.ok, r.error
    assert (
        r.files_sent == 301
        and r.bytes_sent == 300 * 10_000 + (source / "config.json").stat().st_size
    )
    # a connection per request: a handful, not one per file
    assert proxy.connections < 12, proxy.connections
    assert tree(srv.models_dir / ref.relpath) == tree(source)
    again = publish(ref, proxy.url)
    assert again.ok and again.results[0].bytes_sent == 0


def test_a_publish_cut_mid_batch_resumes_without_sending_again(
    mlos_server, tcp_proxy, tmp_path: Path, install_model
) -> None:
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    source = many_files(tmp_path / "src", 400, 10_000)  # 4 MB in one batch
    ref: ModelRef = install_model(source, "ns/cut@v1")
    cut = 2 * MiB
    proxy.cut_after(cut, mode="reset")
    proxy.throttle(32 * MiB)  # slower than the server takes them in: a reset loses little
    result = publish(ref, proxy.url, PublishOptions(**FAST))
    (r,) = result.results
    assert result.ok, r.error
    assert proxy.cuts == 1 and r.attempts == 2
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    again = proxy.bytes_up - total
    assert again <= cut // 4, f"{again} bytes sent again after a cut at {cut}"
    assert tree(srv.models_dir / ref.relpath) == tree(source)


def test_a_server_without_batches_gets_one_put_per_blob(tmp_path: Path, install_model) -> None:
    source = many_files(tmp_path / "src", 12, 2000)
    ref = install_model(source, "ns/old@v1")
    with HostileServer(FakeCore()) as srv:  # answers as mlos-core did before batches
        result = publish(ref, srv.url)
        puts = [p for p in srv.paths() if p.startswith("PUT ")]
    assert result.ok, result.results[0].error
    assert len(puts) == 13 and all("/blobs/" in p for p in puts)


# ---- a server whose batch answers lie ---------------------------------------------------------
def _lie(edit: Callable[[dict[str, Any]], None]) -> Callable[[Any], bytes]:
    """A FakeCore batch handler: the faithful answer, changed by ``edit``."""

    def handler(req: Any) -> bytes:
        answer = FakeCore(batches=True).batch_answer(req)
        edit(answer)
        return json_reply(200, answer)

    return handler


def _drop_one(a: dict[str, Any]) -> None:
    a["blobs"].pop()


def _short_complete(a: dict[str, Any]) -> None:
    a["blobs"][0]["offset"] -= 1


def _other_sha(a: dict[str, Any]) -> None:
    a["blobs"][0]["sha256"] = "0" * 64


def _refused_complete(a: dict[str, Any]) -> None:
    a["blobs"][0].update(code="checksum_mismatch", message="no")


def _other_upload(a: dict[str, Any]) -> None:
    a["upload_id"] = "u-ffffffffffffffffffffffff"


def _error_in_200(a: dict[str, Any]) -> None:
    a["status"] = "error"


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (_drop_one, "'blobs' answers 12 blobs, not the 13 sent"),
        (_short_complete, "does not add up"),
        (_other_sha, "'sha256'"),
        (_refused_complete, "refuses blob"),
        (_other_upload, "'upload_id'"),
        (_error_in_200, "not 'success'"),
    ],
)
def test_a_batch_answer_that_lies_is_a_clear_failure(
    tmp_path: Path, install_model, edit, said: str
) -> None:
    source = many_files(tmp_path / "src", 12, 2000)
    ref = install_model(source, "ns/lied@v1")

    with HostileServer(FakeCore(batches=True, batch=_lie(edit))) as srv:
        result = publish(ref, srv.url, PublishOptions(retries=0))
    (r,) = result.results
    assert not result.ok and result.exit_code == EXIT_TRANSPORT
    assert r.error is not None and said in r.error["message"], r.error
    assert srv.url in r.error["message"]


def test_an_open_answer_with_a_bad_batch_flag_is_a_clear_failure(
    tmp_path: Path, install_model
) -> None:
    source = many_files(tmp_path / "src", 3, 2000)
    ref = install_model(source, "ns/flag@v1")
    core = FakeCore(batches=True)

    def opened(req: Any) -> bytes:
        return json_reply(201, {**core.open_answer(req), "blob_batches": "yes"})

    core.overrides["open"] = opened
    with HostileServer(core) as srv:
        result = publish(ref, srv.url, PublishOptions(retries=0))
    (r,) = result.results
    assert not result.ok and result.exit_code == EXIT_TRANSPORT
    assert r.error is not None and "'blob_batches' is text" in r.error["message"], r.error


def test_a_faithful_server_with_batches_gets_one_batch(tmp_path: Path, install_model) -> None:
    source = many_files(tmp_path / "src", 12, 2000)
    ref = install_model(source, "ns/ok@v1")
    with HostileServer(FakeCore(batches=True)) as srv:
        result = publish(ref, srv.url)
        puts = [p for p in srv.paths() if p.startswith("PUT ")]
    assert result.ok, result.results[0].error
    assert len(puts) == 1 and puts[0].endswith("/blobs")


@pytest.mark.parametrize(
    ("release", "trusted"),
    [("6.1.0-13-amd64", True), ("5.8.0", True), ("5.4.0-150-generic", False),
     ("4.18.0-513.el8.x86_64", False), ("garbage", False)],
)  # fmt: skip
def test_a_batch_is_synced_file_by_file_where_syncfs_can_lose_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str, trusted: bool
) -> None:
    """Before Linux 5.8 ``syncfs`` could return 0 after a failed write-back: there one
    ``syncfs`` must not stand for the files' fsyncs. (This machine runs one kernel; the
    release string is what an older one reports.)"""
    from mlos_core.storage import batch
    from modelpkg import atomic

    files = [tmp_path / f"f{i}" for i in range(3)]
    for f in files:
        f.write_bytes(b"x")
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(
        atomic.os, "uname", lambda: os.uname_result(("Linux", "h", release, "", ""))
    )
    batch.make_durable([str(f) for f in files])
    assert atomic.syncfs_reports_errors() is trusted
    assert len(fsynced) == (0 if trusted else len(files))
