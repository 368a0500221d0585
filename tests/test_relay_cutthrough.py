"""Cut-through (docs/relay.md): a peer pulls a blob while its source is still receiving it,
so relayed pulls overlap the publisher's push. Real mlos-core processes on loopback."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS, manifest_for

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
BIG = os.urandom(24 * MiB + 3)
FILES = {"weights.bin": BIG, "config.json": b'{"hidden": 8}'}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slowly(data: bytes, rate: int, started: threading.Event | None = None) -> Iterator[bytes]:
    """``data`` in 256 KiB pieces at about ``rate`` bytes/s."""
    piece = 256 * 1024
    for i in range(0, len(data), piece):
        if started is not None:
            started.set()
        yield data[i : i + piece]
        time.sleep(piece / rate)


class SlowUpload:
    """An upload to ``url`` whose big blob is sent slowly in a thread; ``body`` replaces
    the big blob's bytes (a publisher sending wrong ones)."""

    def __init__(self, url: str, files: dict[str, bytes], body: bytes | None = None) -> None:
        self.url = url
        manifest = manifest_for("hf/m@v1", files)
        opened = httpx.post(f"{url}/v1/uploads", json={"model_id": "hf/m@v1", "manifest": manifest})
        opened.raise_for_status()
        self.opened = opened.json()
        self.upload_id = self.opened["upload_id"]
        self.body = BIG if body is None else body
        self.started = threading.Event()
        self.put_status: int | None = None
        self.thread = threading.Thread(target=self._send, daemon=True)

    def send_small(self) -> None:
        put = httpx.put(
            f"{self.url}/v1/uploads/{self.upload_id}/blobs/{sha(FILES['config.json'])}",
            content=FILES["config.json"],
        )
        put.raise_for_status()

    def start(self, rate: int = 6 * MiB) -> SlowUpload:
        self._rate = rate
        self.thread.start()
        return self

    def _send(self) -> None:
        put = httpx.put(
            f"{self.url}/v1/uploads/{self.upload_id}/blobs/{sha(BIG)}",
            content=slowly(self.body, self._rate, self.started),
            timeout=120,
        )
        self.put_status = put.status_code

    def done(self) -> bool:
        return not self.thread.is_alive()


def pull(srv: Any, source: str, digest: str, **extra: Any) -> str:
    body = {
        "model_id": "hf/m@v1",
        "manifest_sha256": digest,
        "manifest": manifest_for("hf/m@v1", FILES),
        "sources": [source],
        "fallback": False,
        **extra,
    }
    r = httpx.post(f"{srv.url}/v1/pulls", json=body, timeout=30)
    assert r.status_code == 202, r.text
    pull_id: str = r.json()["pull_id"]
    return pull_id


def job_of(srv: Any, pull_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{srv.url}/v1/pulls/{pull_id}", timeout=10).json()
    return job


def finish(srv: Any, pull_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = httpx.get(f"{srv.url}/v1/pulls/{pull_id}?wait=5", timeout=30).json()
        if job["state"] in ("committed", "prepared", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job


def held(srv: Any) -> dict[str, bytes]:
    root = srv.models_dir / "hf" / "m" / "v1"
    if not root.is_dir():
        return {}
    out = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out.pop("manifest.yaml", None)
    return out


def test_a_pull_follows_a_blob_its_source_is_still_receiving(mlos_server):
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True, peer=[a.url])
    upload = SlowUpload(a.url, FILES)
    digest = upload.opened["manifest_sha256"]
    # b asks before a has a byte of the big blob: it is told to come back, not refused
    pull_id = pull(b, a.url, digest)
    time.sleep(1.0)
    assert job_of(b, pull_id)["state"] == "running"
    upload.send_small()
    upload.start()
    seen_midway = False
    while not upload.done():
        job = job_of(b, pull_id)
        if 0 < job["bytes_done"] < job["bytes_total"]:
            seen_midway = True  # bytes reached b while a was still receiving them
        time.sleep(0.1)
    assert upload.put_status == 201
    job = finish(b, pull_id)
    assert seen_midway, job
    assert job["state"] == "committed" and job["tried"] == [], job
    assert job["bytes_fetched"] == job["bytes_total"] == len(BIG) + len(FILES["config.json"])
    assert held(b) == FILES
    # a commits its upload afterwards: both hold the same build
    done = httpx.post(f"{a.url}/v1/uploads/{upload.upload_id}/commit").json()
    assert done["manifest_sha256"] == digest and held(a) == FILES


def test_bytes_a_seed_then_refuses_are_never_committed_by_its_followers(mlos_server):
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True, peer=[a.url])
    wrong = bytes(len(BIG))  # right length, wrong content: only the sha256 can tell
    upload = SlowUpload(a.url, FILES, body=wrong)
    digest = upload.opened["manifest_sha256"]
    upload.send_small()
    pull_id = pull(b, a.url, digest)
    upload.start()
    upload.thread.join(60)
    assert upload.put_status == 422  # a refused the bytes
    job = finish(b, pull_id)
    assert job["state"] == "failed", job
    assert any(t["code"] == "checksum_mismatch" for t in job["tried"]), job
    assert held(b) == {}
    assert not (b.models_dir / ".mlos/blobs/sha256" / sha(BIG)[:2] / sha(BIG)).exists()


def test_a_follower_gets_the_bytes_held_at_once_and_the_rest_as_they_arrive(mlos_server):
    a = mlos_server(no_fsync=True, body_timeout=2)
    b = mlos_server(no_fsync=True, peer=[a.url], body_timeout=60)
    upload = SlowUpload(a.url, FILES)
    digest = upload.opened["manifest_sha256"]
    upload.send_small()
    # half of the blob arrives (a cut PUT keeps it), the rest only later
    half = len(BIG) // 2
    put = httpx.put(
        f"{a.url}/v1/uploads/{upload.upload_id}/blobs/{sha(BIG)}",
        content=BIG[:half],
        timeout=30,
    )
    assert put.json()["offset"] == half
    pull_id = pull(b, a.url, digest)
    time.sleep(1.0)
    assert job_of(b, pull_id)["bytes_done"] >= half - 4 * MiB
    rest = httpx.put(
        f"{a.url}/v1/uploads/{upload.upload_id}/blobs/{sha(BIG)}",
        content=BIG[half:],
        headers={"Upload-Offset": str(half)},
        timeout=30,
    )
    assert rest.status_code == 201
    job = finish(b, pull_id)
    assert job["state"] == "committed", job
    assert held(b) == FILES
    assert job["bytes_fetched"] == job["bytes_total"], job


def test_a_member_still_pulling_is_a_source_for_the_next(mlos_server):
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True, peer=[a.url])
    c = mlos_server(no_fsync=True, peer=[b.url])
    upload = SlowUpload(a.url, FILES)
    digest = upload.opened["manifest_sha256"]
    upload.send_small()
    to_b = pull(b, a.url, digest)
    to_c = pull(c, b.url, digest)  # b holds nothing yet: c follows b, which follows a
    upload.start()
    c_midway = False
    while not upload.done():
        job = job_of(c, to_c)
        c_midway = c_midway or 0 < job["bytes_done"] < len(BIG) // 2
        time.sleep(0.1)
    assert upload.put_status == 201
    job_b, job_c = finish(b, to_b), finish(c, to_c)
    assert job_b["state"] == job_c["state"] == "committed", (job_b, job_c)
    assert job_c["source"] == b.url and job_c["tried"] == [], job_c
    assert c_midway, "c got no byte while a was still receiving the blob"
    assert held(b) == held(c) == FILES


def test_a_blob_dropped_under_its_follower_ends_the_answer_short(mlos_server):
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True, peer=[a.url])
    upload = SlowUpload(a.url, FILES)
    upload.send_small()
    pull_id = pull(b, a.url, upload.opened["manifest_sha256"])
    upload.start(rate=4 * MiB)
    while job_of(b, pull_id)["bytes_done"] < 2 * MiB:
        time.sleep(0.05)
    # the publisher gives up: the upload and its partial blob are dropped on a
    assert httpx.delete(f"{a.url}/v1/uploads/{upload.upload_id}").status_code == 200
    job = finish(b, pull_id)
    assert job["state"] == "failed" and job["code"] == "no_source", job
    assert held(b) == {}
    log = a.log()
    assert "cut-through answer ended short" in log and "was dropped" in log
    assert "Traceback" not in log


def test_with_tenants_a_follower_reads_only_the_partial_blobs_of_the_tenant_it_reads_for(
    mlos_server: Any, monkeypatch: Any
) -> None:
    """alpha's blob is still arriving on a: the peer token reading for alpha follows it as it
    lands; reading for bravo, or for nobody, it is a blob a does not have."""
    monkeypatch.setenv("MLOS_PEER_TOKEN", "peer-secret-0123456789")
    a = mlos_server(no_fsync=True, tokens=TOKENS, peer_token_env="MLOS_PEER_TOKEN")
    manifest = manifest_for("alpha/m@v1", FILES)
    opened = httpx.post(
        f"{a.url}/v1/uploads", json={"model_id": "alpha/m@v1", "manifest": manifest}, headers=ALPHA
    )
    opened.raise_for_status()
    upload_id = opened.json()["upload_id"]
    started = threading.Event()

    def send() -> None:
        httpx.put(
            f"{a.url}/v1/uploads/{upload_id}/blobs/{sha(BIG)}",
            content=slowly(BIG, 6 * MiB, started),
            headers=ALPHA,
            timeout=120,
        )

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert started.wait(10)
    time.sleep(0.5)  # some bytes landed
    url = f"{a.url}/v1/blobs/{sha(BIG)}?follow=1&size={len(BIG)}"
    peer = {"Authorization": "Bearer peer-secret-0123456789"}
    for headers in ({**peer, "X-Mlos-Tenant": "bravo"}, peer, BRAVO):
        r = httpx.get(url, headers=headers, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "unknown_blob", (headers, r.text)
    with httpx.stream("GET", url, headers={**peer, "X-Mlos-Tenant": "alpha"}, timeout=60) as r:
        assert r.status_code == 200
        first = next(r.iter_raw(64 * 1024))
    assert first == BIG[: len(first)] and first
    sender.join(60)
