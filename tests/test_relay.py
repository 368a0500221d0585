"""Instances pull from each other (docs/relay.md): real mlos-core processes on loopback."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelpkg.manifest import Manifest
from tests.fixtures.common import wait_for
from tests.fixtures.hostile_server import (
    Cut,
    Drip,
    HostileServer,
    Seen,
    head_only,
    json_reply,
    reply,
)
from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS, manifest_for, upload_resumable

MiB = 1024 * 1024
BIG = os.urandom(24 * MiB + 5)
FILES = {"weights.bin": BIG, "config.json": b'{"hidden": 8}', "sub/copy.json": b'{"hidden": 8}'}
PEER_TOKEN = "peer-secret-0123456789"

pytestmark = pytest.mark.slow
PLACED_EXTRA = b"only in the placed model"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start_pull(
    srv: Any, model_id: str, digest: str, sources: list[str], headers: Any = None, **extra: Any
) -> httpx.Response:
    body = {"model_id": model_id, "manifest_sha256": digest, "sources": sources, **extra}
    return httpx.post(f"{srv.url}/v1/pulls", json=body, headers=headers, timeout=30)


def wait_pull(srv: Any, pull_id: str, headers: Any = None, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{srv.url}/v1/pulls/{pull_id}?wait=5", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        if job["state"] in ("committed", "prepared", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"pull still {job['state']}: {job}"


def pulled(srv: Any, model_id: str, digest: str, sources: list[str], **kw: Any) -> dict[str, Any]:
    r = start_pull(srv, model_id, digest, sources, **kw)
    assert r.status_code == 202, r.text
    return wait_pull(srv, r.json()["pull_id"], headers=kw.get("headers"))


def held(srv: Any, model_id: str) -> dict[str, bytes]:
    ns, rest = model_id.split("/", 1)
    name, version = rest.split("@")
    root = srv.models_dir / ns / name / version
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    files.pop("manifest.yaml")
    return files


def visible(srv: Any, model_id: str) -> bool:
    return httpx.get(f"{srv.url}/v1/models/{model_id}/manifest").status_code == 200


def test_pull_is_bit_exact_and_only_fetches_what_is_missing(mlos_server):
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True, peer=[a.url])
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]
    info = httpx.get(f"{b.url}/v1/relay").json()
    assert info["pull"] is True and info["peers"] == [a.url] and info["cut_through"] is True

    job = pulled(b, "hf/m@v1", digest, [a.url])
    assert job["state"] == "committed", job
    assert job["source"] == a.url and job["tried"] == []
    assert job["result"]["manifest_sha256"] == digest and job["result"]["model_id"] == "hf/m@v1"
    unique = len(BIG) + len(b'{"hidden": 8}')  # two files share one content: fetched once
    assert job["bytes_total"] == job["bytes_done"] == job["bytes_fetched"] == unique
    assert held(b, "hf/m@v1") == FILES
    got = httpx.get(f"{b.url}/v1/models/hf/m@v1/manifest").text
    assert (
        yaml.safe_load(got)["spec"]["format"]["files"]
        == yaml.safe_load(httpx.get(f"{a.url}/v1/models/hf/m@v1/manifest").text)["spec"]["format"][
            "files"
        ]
    )
    assert httpx.get(f"{b.url}/models/hf/m@v1").json()["id"] == "hf/m@v1"

    # the same build again: answered at once, nothing fetched
    again = start_pull(b, "hf/m@v1", digest, [a.url])
    assert again.status_code == 200 and again.json()["unchanged"] is True
    assert again.json()["pull_id"] is None
    # a second version sharing the weights: only the new content crosses
    v2 = {"weights.bin": BIG, "config.json": b'{"hidden": 16}'}
    digest2 = upload_resumable(a.url, "hf/m@v2", v2)["manifest_sha256"]
    job2 = pulled(b, "hf/m@v2", digest2, [a.url])
    assert job2["state"] == "committed" and job2["bytes_fetched"] == len(b'{"hidden": 16}')
    assert held(b, "hf/m@v2") == v2
    metrics_a = httpx.get(f"{a.url}/metrics").text
    served = unique + len(v2["config.json"])
    assert f"mlos_relay_served_bytes_total {served}" in metrics_a
    metrics_b = httpx.get(f"{b.url}/metrics").text
    assert 'mlos_relay_pulls_total{origin="request",result="committed"} 2' in metrics_b


def test_blobs_are_served_with_ranges(mlos_server):
    a = mlos_server(no_fsync=True)
    upload_resumable(a.url, "hf/m@v1", FILES)
    url = f"{a.url}/v1/blobs/{sha(BIG)}"
    whole = httpx.get(url, timeout=30)
    assert whole.status_code == 200 and whole.content == BIG
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == f'"{sha(BIG)}"'
    part = httpx.get(url, headers={"Range": "bytes=1000-"}, timeout=30)
    assert part.status_code == 206 and part.content == BIG[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(BIG) - 1}/{len(BIG)}"
    middle = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert middle.status_code == 206 and middle.content == BIG[10:20]
    tail = httpx.get(url, headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == BIG[-7:]
    outside = httpx.get(url, headers={"Range": f"bytes={len(BIG)}-"})
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{len(BIG)}"
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(BIG))
    assert httpx.get(f"{a.url}/v1/blobs/{'0' * 64}").json()["code"] == "unknown_blob"
    assert httpx.get(f"{a.url}/v1/blobs/nothex").status_code == 400
    # a blob still being received is never served
    opened = httpx.post(
        f"{a.url}/v1/uploads",
        json={"model_id": "hf/n@v1", "manifest": manifest_for("hf/n@v1", {"x": b"y" * 100})},
    ).json()
    httpx.put(
        f"{a.url}/v1/uploads/{opened['upload_id']}/blobs/{sha(b'y' * 100)}", content=b"y" * 50
    )
    assert httpx.get(f"{a.url}/v1/blobs/{sha(b'y' * 100)}").status_code == 404


def test_a_pull_naming_a_non_peer_is_refused(mlos_server):
    seen: list[Seen] = []

    def record(req: Seen) -> bytes:
        seen.append(req)
        return reply(404)

    with HostileServer(record) as stranger:
        a = mlos_server(no_fsync=True)
        b = mlos_server(no_fsync=True, peer=[a.url])
        digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]
        for source in (stranger.url, f"{a.url}/other", "http://169.254.169.254", b.url):
            r = start_pull(b, "hf/m@v1", digest, [source])
            assert r.status_code == 403 and r.json()["code"] == "not_a_peer", r.text
            assert "not a peer" in r.json()["message"] or "itself" in r.json()["message"]
        for source in ("ftp://127.0.0.1/x", "http://u:p@127.0.0.1:1", f"{a.url}/?q=1", "x"):
            r = start_pull(b, "hf/m@v1", digest, [source])
            assert r.status_code == 400 and r.json()["code"] == "invalid_source", r.text
        r = start_pull(b, "hf/m@v1", digest, [], fallback=False)
        assert r.status_code == 400 and r.json()["code"] == "invalid_source"
        r = httpx.post(f"{b.url}/v1/pulls", json={"model_id": "hf/m@v1", "sources": [a.url]})
        assert r.status_code == 400 and r.json()["code"] == "invalid_digest"
        # the same URL written differently is the same peer
        assert start_pull(b, "hf/m@v1", digest, [f"HTTP://127.0.0.1:{a.port}/"]).status_code == 202
        assert seen == []  # the stranger was never contacted
        assert not visible(b, "hf/other@v1")


def _hostile_peer(a_url: str, lie: bytes) -> tuple[HostileServer, list[str]]:
    """A peer that shows a real manifest (fetched from ``a_url``) and serves ``lie`` as the
    bytes of every blob (a length-correct lie: only the sha256 can tell)."""
    blob_requests: list[str] = []

    def answer(req: Seen) -> bytes:
        if req.path.endswith("/manifest"):
            text = httpx.get(f"{a_url}{req.raw_path}").content
            return reply(200, text, content_type="application/yaml")
        if req.path.startswith("/v1/blobs/"):
            blob_requests.append(req.path)
            sha256 = req.path.rsplit("/", 1)[1]
            real = httpx.head(f"{a_url}/v1/blobs/{sha256}")
            size = int(real.headers["content-length"])
            return reply(200, (lie * (size // len(lie) + 1))[:size], content_type=None)
        return json_reply(404, {"status": "error", "code": "not_found", "message": "no"})

    return HostileServer(answer), blob_requests


def test_a_corrupt_peer_is_detected_and_never_committed(mlos_server):
    a = mlos_server(no_fsync=True)
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]
    liar, asked = _hostile_peer(a.url, b"\x00wrong")
    with liar:
        b = mlos_server(no_fsync=True, peer=[liar.url, a.url])
        job = pulled(b, "hf/m@v1", digest, [liar.url], fallback=False)
        assert job["state"] == "failed" and job["code"] == "no_source", job
        assert any(t["code"] == "checksum_mismatch" for t in job["tried"]), job
        assert "another content" in job["message"]
        assert not visible(b, "hf/m@v1") and not (b.models_dir / "hf/m/v1").exists()
        assert not (b.models_dir / ".mlos/blobs/sha256" / sha(BIG)[:2] / sha(BIG)).exists()
        assert sorted(asked) == sorted(set(asked))  # a liar is not asked again for a blob
        # with the honest peer as fallback: the liar is asked once per blob, then left
        asked.clear()
        job = pulled(b, "hf/m@v1", digest, [liar.url])
        assert job["state"] == "committed", job
        lies = [t["source"] for t in job["tried"] if t["code"] == "checksum_mismatch"]
        assert set(lies) == {liar.url} and job["source"] == a.url
        assert len(asked) == len(set(asked)) <= 2  # at most once per blob (two, fetched at once)
        assert held(b, "hf/m@v1") == FILES
        assert "served" in b.log() and "do not hash" in b.log()


def test_wrong_bytes_a_cut_liar_left_behind_are_not_blamed_on_the_honest_source(mlos_server):
    a = mlos_server(no_fsync=True)
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]

    def half_a_lie(req: Seen) -> Any:
        if req.path.startswith("/v1/blobs/"):
            size = int(httpx.head(f"{a.url}{req.raw_path}").headers["content-length"])
            head = head_only(200, {"Content-Length": str(size)})
            return [head, b"\x00" * (size // 2), Cut()]  # wrong bytes, then the line drops
        text = httpx.get(f"{a.url}{req.raw_path}").content
        return reply(200, text, content_type="application/yaml")

    with HostileServer(half_a_lie) as liar:
        b = mlos_server(no_fsync=True, peer=[liar.url, a.url])
        job = pulled(b, "hf/m@v1", digest, [liar.url, a.url], fallback=False)
        assert job["state"] == "committed", job
        assert job["source"] == a.url
        assert not [t for t in job["tried"] if t["source"] == a.url], job
        assert job["bytes_fetched"] > job["bytes_total"]  # the blob fetched whole again
        assert held(b, "hf/m@v1") == FILES


def test_a_pull_cut_mid_blob_resumes(mlos_server, tcp_proxy):
    a = mlos_server(no_fsync=True)
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]
    proxy = tcp_proxy(a.port)
    proxy.cut_after(6 * MiB, direction="down", times=2)
    b = mlos_server(no_fsync=True, peer=[proxy.url])
    job = pulled(b, "hf/m@v1", digest, [proxy.url], fallback=False)
    assert job["state"] == "committed", job
    assert proxy.cuts == 2
    assert held(b, "hf/m@v1") == FILES
    # resumed where each cut stopped: every byte crossed once (nothing fetched twice)
    assert job["bytes_fetched"] == job["bytes_total"], job
    ranged = [line for line in a.log().splitlines() if f"/v1/blobs/{sha(BIG)}" in line]
    assert len(ranged) == 3 and sum('" 206 ' in line for line in ranged) == 2, ranged


def test_a_source_killed_mid_pull_is_left_for_another(mlos_server, tcp_proxy):
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True)
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]
    assert upload_resumable(b.url, "hf/m@v1", FILES)["manifest_sha256"] == digest
    slow_a = tcp_proxy(a.port)
    slow_a.throttle(4 * MiB)  # the pull takes ~6 s through it: time to kill a mid-blob
    c = mlos_server(no_fsync=True, peer=[slow_a.url, b.url])
    r = start_pull(c, "hf/m@v1", digest, [slow_a.url])
    assert r.status_code == 202
    pull_id = r.json()["pull_id"]

    def midway() -> bool:
        job = httpx.get(f"{c.url}/v1/pulls/{pull_id}").json()
        return job["bytes_done"] >= 6 * MiB

    wait_for(midway, timeout=60, what="the pull half way")
    a.kill()  # kill -9 of the source
    job = wait_pull(c, pull_id)
    assert job["state"] == "committed", job
    assert job["source"] == b.url and job["tried"][0]["source"] == slow_a.url
    assert held(c, "hf/m@v1") == FILES
    # b went on from the bytes a had sent: not the whole blob again
    assert job["bytes_fetched"] < job["bytes_total"] + 4 * MiB, job


def test_cancel_keeps_the_bytes_and_the_next_pull_resumes(mlos_server, tcp_proxy):
    a = mlos_server(no_fsync=True)
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]
    slow = tcp_proxy(a.port)
    slow.throttle(4 * MiB)
    b = mlos_server(no_fsync=True, peer=[slow.url])
    pull_id = start_pull(b, "hf/m@v1", digest, [slow.url]).json()["pull_id"]
    retried = start_pull(b, "hf/m@v1", digest, [slow.url])  # a client's retry starts nothing
    assert retried.status_code == 202 and retried.json()["joined"] is True
    assert retried.json()["pull_id"] == pull_id
    wait_for(
        lambda: httpx.get(f"{b.url}/v1/pulls/{pull_id}").json()["bytes_done"] >= 5 * MiB,
        timeout=60,
        what="bytes pulled",
    )
    cancelled = httpx.delete(f"{b.url}/v1/pulls/{pull_id}").json()
    assert cancelled["state"] == "cancelled"
    kept = cancelled["bytes_done"]
    assert not visible(b, "hf/m@v1")
    slow.throttle(None)
    job = pulled(b, "hf/m@v1", digest, [slow.url])
    assert job["state"] == "committed", job
    assert job["upload_id"] == cancelled["upload_id"]  # the same upload taken up again
    assert job["bytes_fetched"] <= job["bytes_total"] - kept + 4 * MiB, (job, kept)
    assert held(b, "hf/m@v1") == FILES
    assert httpx.get(f"{b.url}/v1/pulls/p-000").json()["code"] == "unknown_pull"


def test_commit_false_stops_prepared_and_staged_blobs_are_served(mlos_server):
    a = mlos_server(no_fsync=True)
    opened = upload_resumable(a.url, "hf/m@v1", FILES, commit=False)  # a seed, staged
    httpx.post(f"{a.url}/v1/uploads/{opened['upload_id']}/prepare").raise_for_status()
    assert not visible(a, "hf/m@v1")
    b = mlos_server(no_fsync=True, peer=[a.url])
    manifest = manifest_for("hf/m@v1", FILES)
    job = pulled(b, "hf/m@v1", opened["manifest_sha256"], [a.url], manifest=manifest, commit=False)
    assert job["state"] == "prepared", job
    assert not visible(b, "hf/m@v1")
    done = httpx.post(f"{b.url}/v1/uploads/{job['upload_id']}/commit").json()
    assert done["manifest_sha256"] == opened["manifest_sha256"]
    assert held(b, "hf/m@v1") == FILES
    # a manifest that is not the digest named is refused up front
    other = manifest_for("hf/m@v1", {"x": b"1"})
    r = start_pull(b, "hf/m@v1", opened["manifest_sha256"], [a.url], manifest=other)
    assert r.status_code == 400 and r.json()["code"] == "invalid_digest"


def test_tenant_isolation_across_pulls(mlos_server, monkeypatch):
    monkeypatch.setenv("MLOS_PEER_TOKEN", PEER_TOKEN)
    a = mlos_server(no_fsync=True, tokens=TOKENS, peer_token_env="MLOS_PEER_TOKEN")
    b = mlos_server(no_fsync=True, tokens=TOKENS, peer=[a.url], peer_token_env="MLOS_PEER_TOKEN")
    secret = os.urandom(2 * MiB)
    alpha_files = {"w.bin": secret, "c.json": b"{}"}
    digest = upload_resumable(a.url, "alpha/m@v1", alpha_files, headers=ALPHA)["manifest_sha256"]

    # bravo knows the sha256 of alpha's file: a pull into bravo's own namespace with an
    # inline manifest listing it must not fetch alpha's bytes (the source serves a peer only
    # what the tenant the pull is for holds there)
    steal = manifest_for("bravo/steal@v1", {"w.bin": secret})
    steal_digest = Manifest(steal).digest()
    job = pulled(b, "bravo/steal@v1", steal_digest, [a.url], headers=BRAVO, manifest=steal)
    assert job["state"] == "failed", job
    assert job["bytes_fetched"] == 0 and job["code"] == "no_source", job
    assert not visible(b, "bravo/steal@v1")
    assert not (b.models_dir / "bravo" / "steal").exists()

    # who may start a pull: a tenant owning the namespace
    assert start_pull(b, "alpha/m@v1", digest, [a.url]).status_code == 401
    r = start_pull(b, "alpha/m@v1", digest, [a.url], headers=BRAVO)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = start_pull(b, "alpha/m@v1", digest, [a.url], headers=ALPHA)
    assert r.status_code == 202
    assert httpx.get(f"{b.url}/v1/pulls/{r.json()['pull_id']}", headers=BRAVO).status_code == 403
    assert wait_pull(b, r.json()["pull_id"], headers=ALPHA)["state"] == "committed"
    assert held(b, "alpha/m@v1") == alpha_files

    # who may read a blob: a tenant holding the content, or the peer token reading for one
    blob = f"{a.url}/v1/blobs/{sha(secret)}"
    assert httpx.get(blob).status_code == 401
    assert httpx.get(blob, headers=BRAVO).json()["code"] == "unknown_blob"
    assert httpx.get(blob, headers=ALPHA).content == secret
    peer = {"Authorization": f"Bearer {PEER_TOKEN}"}
    assert httpx.get(blob, headers=peer).json()["code"] == "unknown_blob"
    for_bravo = {**peer, "X-Mlos-Tenant": "bravo"}
    assert httpx.get(blob, headers=for_bravo).json()["code"] == "unknown_blob"
    hinted = f"{blob}?model=alpha%2Fm%40v1&follow=1&size={len(secret)}"
    assert httpx.get(hinted, headers=for_bravo).json()["code"] == "unknown_blob"
    assert httpx.get(blob, headers={**peer, "X-Mlos-Tenant": "alpha"}).content == secret
    # the peer token reads, never writes
    r = httpx.post(
        f"{a.url}/v1/uploads",
        json={"model_id": "alpha/x@v1", "manifest": manifest_for("alpha/x@v1", {"a": b"a"})},
        headers=peer,
    )
    assert r.status_code == 401

    # bravo's model with alpha's content: bravo's pull fetches those bytes itself (b holds
    # them for alpha only), so bravo learns nothing of what alpha stored
    bravo_files = {"w.bin": secret, "b.json": b"[]"}
    digest_b = upload_resumable(a.url, "bravo/m@v1", bravo_files, headers=BRAVO)["manifest_sha256"]
    job = pulled(b, "bravo/m@v1", digest_b, [a.url], headers=BRAVO)
    assert job["state"] == "committed", job
    assert job["bytes_total"] == len(secret) + 2 and job["bytes_fetched"] == len(secret) + 2
    assert held(b, "bravo/m@v1") == bravo_files
    # each tenant lists its own pulls only
    listed = httpx.get(f"{b.url}/v1/pulls", headers=BRAVO).json()["pulls"]
    assert {p["model_id"] for p in listed} == {"bravo/m@v1", "bravo/steal@v1"}
    assert httpx.get(f"{b.url}/v1/pulls").status_code == 401


def test_without_a_peer_token_the_callers_token_reads_its_own_content(mlos_server):
    a = mlos_server(no_fsync=True, tokens=TOKENS)
    b = mlos_server(no_fsync=True, tokens=TOKENS, peer=[a.url])
    files = {"w.bin": os.urandom(MiB), "c.json": b"{}"}
    digest = upload_resumable(a.url, "alpha/m@v1", files, headers=ALPHA)["manifest_sha256"]
    job = pulled(b, "alpha/m@v1", digest, [a.url], headers=ALPHA)
    assert job["state"] == "committed", job
    assert held(b, "alpha/m@v1") == files


def test_peak_rss_while_serving_and_pulling(mlos_server):
    """b pulls a model from a while c pulls another from b (b serves and pulls at once):
    each instance stays under 150 MB of peak RSS."""
    first = {"weights.bin": os.urandom(96 * MiB), "c.json": b"{}"}
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True, peer=[a.url])
    c = mlos_server(no_fsync=True, peer=[b.url])
    digest = upload_resumable(a.url, "hf/big@v1", first)["manifest_sha256"]
    assert pulled(b, "hf/big@v1", digest, [a.url])["state"] == "committed"
    del first
    second = {"weights.bin": os.urandom(96 * MiB), "c.json": b"[]"}
    digest2 = upload_resumable(a.url, "hf/big@v2", second)["manifest_sha256"]
    del second
    to_b = start_pull(b, "hf/big@v2", digest2, [a.url]).json()["pull_id"]
    to_c = start_pull(c, "hf/big@v1", digest, [b.url]).json()["pull_id"]
    assert wait_pull(b, to_b)["state"] == "committed"
    assert wait_pull(c, to_c)["state"] == "committed"

    def peak_mib(pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    peaks = {name: peak_mib(srv.pid) for name, srv in (("a", a), ("b", b), ("c", c))}
    assert all(peak < 150 for peak in peaks.values()), peaks


def test_a_model_placed_by_a_copy_is_served_from_its_files(mlos_server):
    a = mlos_server(no_fsync=True)
    root = a.models_dir / "hf" / "placed" / "v1"
    placed = {**FILES, "extra.txt": PLACED_EXTRA}
    for rel, data in placed.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest_for("hf/placed@v1", placed)))
    assert httpx.post(f"{a.url}/models/scan").json()["found"] == 1
    assert httpx.get(f"{a.url}/v1/blobs/{sha(BIG)}").status_code == 404  # not in its store
    b = mlos_server(no_fsync=True, peer=[a.url])
    digest = _digest_of(a, "hf/placed@v1")
    job = pulled(b, "hf/placed@v1", digest, [a.url], fallback=False)
    assert job["state"] == "committed", job
    assert held(b, "hf/placed@v1") == placed
    # a file the manifest lists that became a link out of the model is not served
    outside = a.models_dir.parent / "secret.txt"
    outside.write_bytes(PLACED_EXTRA)
    (root / "extra.txt").unlink()
    (root / "extra.txt").symlink_to(outside)
    assert httpx.get(f"{a.url}/v1/blobs/{sha(PLACED_EXTRA)}?model=hf/placed@v1").status_code == 404
    # a file of the same content at another path is served instead of a missing one
    (root / "sub/copy.json").unlink()
    assert (
        httpx.get(f"{a.url}/v1/blobs/{sha(FILES['config.json'])}?model=hf/placed@v1").content
        == FILES["config.json"]
    )
    assert httpx.get(f"{a.url}/v1/blobs/{sha(BIG)}?model=hf/placed@v1").content == BIG


def _digest_of(srv: Any, model_id: str) -> str:
    from modelpkg.manifest import Manifest

    text = httpx.get(f"{srv.url}/v1/models/{model_id}/manifest").text
    return Manifest.from_text(text, source="test").digest()


def test_a_pulled_model_passes_the_same_signature_check_as_an_upload(mlos_server, tmp_path):
    from tests.fixtures.signing import make_key

    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "alice.pub").write_bytes(make_key(tmp_path / "keys", "alice").public.read_bytes())
    a = mlos_server(no_fsync=True)
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]
    b = mlos_server(no_fsync=True, peer=[a.url], trusted_keys=trusted)
    job = pulled(b, "hf/m@v1", digest, [a.url])
    assert job["state"] == "failed" and job["code"] == "signature_required", job
    assert not visible(b, "hf/m@v1")


def test_a_source_that_drips_is_left_for_another(mlos_server):
    a = mlos_server(no_fsync=True)
    digest = upload_resumable(a.url, "hf/m@v1", FILES)["manifest_sha256"]

    def drip(req: Seen) -> Any:
        if req.path.startswith("/v1/blobs/"):
            real = httpx.get(f"{a.url}{req.raw_path}", timeout=30).content
            return [head_only(200, {"Content-Length": str(len(real))}), Drip(real, every=0.01)]
        text = httpx.get(f"{a.url}{req.raw_path}").content  # the manifest, honestly
        return reply(200, text, content_type="application/yaml")

    with HostileServer(drip) as slow:
        b = mlos_server(no_fsync=True, peer=[slow.url, a.url], body_timeout=2)
        started = time.monotonic()
        job = pulled(b, "hf/m@v1", digest, [slow.url])
        assert job["state"] == "committed", job
        assert [t["code"] for t in job["tried"]] == ["source_too_slow"] * len(job["tried"])
        assert job["tried"] and job["source"] == a.url
        assert time.monotonic() - started < 30
        assert held(b, "hf/m@v1") == FILES
