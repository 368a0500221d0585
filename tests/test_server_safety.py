"""Never a half model: atomic replacement under readers, concurrent uploads, kill -9, tenants."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures.common import wait_for
from tests.fixtures.mlos import manifest_for, upload_resumable


def generation(n: int) -> dict[str, bytes]:
    """Files whose content says which generation they belong to."""
    tag = f"gen-{n:04d}".encode()
    return {"a.bin": tag * 20_000, "b.bin": tag * 3, "sub/c.txt": tag}


def read_consistent(model_dir: Path) -> set[bytes] | None:
    """Read a model the way a careful reader does (one directory fd); None if it vanished."""
    try:
        fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        with open(os.open("manifest.yaml", os.O_RDONLY, dir_fd=fd), "rb") as fh:
            manifest = yaml.safe_load(fh)
        tags = set()
        for f in manifest["spec"]["format"]["files"]:
            with open(os.open(f["path"], os.O_RDONLY, dir_fd=fd), "rb") as fh:
                data = fh.read()
            assert len(data) == f["size"], f"partial file {f['path']}"
            assert hashlib.sha256(data).hexdigest() == f["sha256"]
            tags.add(data[:8])
        return tags
    except FileNotFoundError:
        return None  # the old generation was removed under us: never a mix
    finally:
        os.close(fd)


def test_replacement_is_atomic_for_filesystem_and_http_readers(mlos_server):
    srv = mlos_server()
    upload_resumable(srv.url, "ns/m@v1", generation(0))
    model_dir = srv.models_dir / "ns" / "m" / "v1"
    stop = threading.Event()
    problems: list[str] = []
    reads = [0, 0]
    whole = [
        {path: hashlib.sha256(data).hexdigest() for path, data in generation(n).items()}
        for n in range(8)
    ]
    seen_over_http: set[int] = set()

    def fs_reader() -> None:
        while not stop.is_set():
            tags = read_consistent(model_dir)
            if tags is not None and len(tags) != 1:
                problems.append(f"mixed generations {tags}")
            reads[0] += 1

    def http_reader() -> None:
        # what an HTTP reader sees: the registered entry and the manifest of the visible
        # version, which must always be one whole generation's
        with httpx.Client() as c:
            while not stop.is_set():
                r = c.get(f"{srv.url}/models/ns/m@v1")
                m = c.get(f"{srv.url}/v1/models/ns%2Fm%40v1/manifest")
                if r.status_code != 200 or m.status_code != 200:
                    problems.append(f"GET answered {r.status_code} / manifest {m.status_code}")
                    continue
                files = yaml.safe_load(m.text)["spec"]["format"]["files"]
                shas = {f["path"]: f["sha256"] for f in files}
                if shas not in whole:
                    problems.append(f"the manifest over HTTP is no whole generation: {shas}")
                else:
                    seen_over_http.add(whole.index(shas))
                if r.json().get("size") != sum(f["size"] for f in files):
                    problems.append(f"registered size {r.json().get('size')} != the manifest's")
                reads[1] += 1

    threads = [threading.Thread(target=fs_reader), threading.Thread(target=http_reader)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 8):
            upload_resumable(srv.url, "ns/m@v1", generation(n))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems[:5]
    assert reads[0] > 10 and reads[1] > 10
    assert len(seen_over_http) >= 2, f"HTTP reads saw only generations {seen_over_http}"
    assert read_consistent(model_dir) == {b"gen-0007"}
    # the replaced generation is kept for rollback; rolling back twice rolls forward
    r = httpx.post(f"{srv.url}/v1/models/ns%2Fm%40v1/rollback")
    assert r.status_code == 200, r.text
    assert read_consistent(model_dir) == {b"gen-0006"}
    httpx.post(f"{srv.url}/v1/models/ns/m@v1/rollback").raise_for_status()
    assert read_consistent(model_dir) == {b"gen-0007"}
    assert httpx.post(f"{srv.url}/v1/models/ns/none@v1/rollback").status_code == 404


def test_two_concurrent_uploads_of_one_model_end_with_one_complete_version(mlos_server):
    srv = mlos_server()
    big = {n: {"w.bin": os.urandom(2_000_000) + bytes([n]), "tag": bytes([n]) * 10} for n in (1, 2)}
    errors: list[BaseException] = []

    def go(n: int) -> None:
        try:
            upload_resumable(srv.url, "ns/race@v1", big[n])
        except BaseException as exc:
            errors.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=go, args=(n,)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        d = srv.models_dir / "ns" / "race" / "v1"
        tag = (d / "tag").read_bytes()
        winner = big[tag[0]]
        assert (d / "w.bin").read_bytes() == winner["w.bin"]
        on_disk = yaml.safe_load((d / "manifest.yaml").read_text())
        assert (
            on_disk["spec"]["format"]["files"]
            == manifest_for("ns/race@v1", winner)["spec"]["format"]["files"]
        )


def test_different_models_upload_in_parallel(mlos_server):
    srv = mlos_server()
    files = {i: {"w.bin": os.urandom(1_500_000)} for i in range(4)}
    threads = [
        threading.Thread(target=upload_resumable, args=(srv.url, f"ns/p{i}@v1", files[i]))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert (srv.models_dir / f"ns/p{i}/v1/w.bin").read_bytes() == files[i]["w.bin"]
    assert httpx.get(f"{srv.url}/models").json()["total"] == 4


def test_kill_9_mid_upload_then_restart_and_resume(mlos_server):
    srv = mlos_server()
    old = {"w.bin": b"old" * 1000}
    upload_resumable(srv.url, "ns/k@v1", old)
    new = os.urandom(24 * 1024 * 1024)
    digest = hashlib.sha256(new).hexdigest()
    opened = httpx.post(
        f"{srv.url}/v1/uploads",
        json={"model_id": "ns/k@v1", "manifest": manifest_for("ns/k@v1", {"w.bin": new})},
    ).json()
    uid = opened["upload_id"]
    sent = [0]

    def slow_body():
        for i in range(0, len(new), 1 << 20):
            sent[0] += 1 << 20
            yield new[i : i + (1 << 20)]
            time.sleep(0.05)

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under us
            httpx.put(f"{srv.url}/v1/uploads/{uid}/blobs/{digest}", content=slow_body(), timeout=30)

    t = threading.Thread(target=send)
    t.start()
    wait_for(lambda: sent[0] >= 10 << 20, timeout=20, what="half the body sent")
    srv.kill()
    t.join()
    # a leftover of an interrupted version swap, as a crash could leave it
    (srv.models_dir / ".mlos" / "staging" / "deadbeef").mkdir()
    stale = srv.models_dir / "ns" / "k" / ".v1.staging-abc123"
    stale.mkdir()
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))
    # a fresh staging dir in the models tree may be a writer at work on a shared dir (axon
    # publishing to it): it must survive a restart of a reader instance
    fresh = srv.models_dir / "ns" / "k" / ".v2.staging-0123456789abcdef"
    fresh.mkdir()
    srv.start()
    # the previous state is intact and served
    assert (srv.models_dir / "ns/k/v1/w.bin").read_bytes() == old["w.bin"]
    assert httpx.get(f"{srv.url}/models/ns/k@v1").status_code == 200
    assert not (srv.models_dir / ".mlos" / "staging" / "deadbeef").exists()
    assert not stale.exists()
    assert fresh.exists()
    # the upload survived the crash: resume from the offset the server reports
    state = httpx.get(f"{srv.url}/v1/uploads/{uid}").json()
    offset = state["needed"][0]["offset"]
    assert 0 < offset < len(new)
    r = httpx.put(
        f"{srv.url}/v1/uploads/{uid}/blobs/{digest}",
        content=new[offset:],
        headers={"Upload-Offset": str(offset)},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit").status_code == 200
    assert (srv.models_dir / "ns/k/v1/w.bin").read_bytes() == new


TOKENS = {
    "tenants": {
        "acme": {"tokens": ["tok-acme"], "namespaces": ["acme", "acme-*"]},
        "beta": {
            "token_sha256": [hashlib.sha256(b"tok-beta").hexdigest()],
            "namespaces": ["beta"],
        },
    }
}


def test_tenants_isolated_and_refusals_change_nothing(mlos_server):
    srv = mlos_server(tokens=TOKENS)
    acme = {"Authorization": "Bearer tok-acme"}
    beta = {"Authorization": "Bearer tok-beta"}
    files = {"w.bin": b"w" * 100}
    body = {"model_id": "acme/m@v1", "manifest": manifest_for("acme/m@v1", files)}
    # no token / unknown token: 401; another tenant's namespace: 403
    assert httpx.post(f"{srv.url}/v1/uploads", json=body).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{srv.url}/v1/uploads", json=body, headers=bad).status_code == 401
    r = httpx.post(f"{srv.url}/v1/uploads", json=body, headers=beta)
    assert r.status_code == 403 and "beta" in r.json()["message"]
    r = httpx.post(
        f"{srv.url}/models/upload",
        headers=beta,
        data={"model_id": "acme/m@v1", "manifest": "{}"},
        files=[("model_files", ("w.bin", b"w" * 100))],
    )
    assert r.status_code == 403
    reg = {"model_id": "acme/m@v1", "path": str(srv.models_dir)}
    assert httpx.post(f"{srv.url}/models/register", json=reg, headers=beta).status_code == 403
    assert httpx.delete(f"{srv.url}/models/acme/m@v1").status_code == 401
    assert not (srv.models_dir / "acme").exists()
    # the owner publishes; patterns match; reads stay open
    upload_resumable(srv.url, "acme/m@v1", files, headers=acme)
    upload_resumable(srv.url, "acme-labs/m@v1", files, headers=acme)
    assert httpx.get(f"{srv.url}/models").json()["total"] == 2
    # beta cannot touch acme's open upload, nor delete or roll back acme's model
    uid = upload_resumable(srv.url, "acme/m@v2", files, headers=acme, commit=False)["upload_id"]
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit", headers=beta).status_code == 403
    assert httpx.delete(f"{srv.url}/v1/uploads/{uid}", headers=beta).status_code == 403
    assert httpx.delete(f"{srv.url}/models/acme/m@v1", headers=beta).status_code == 403
    assert httpx.post(f"{srv.url}/v1/models/acme/m@v1/rollback", headers=beta).status_code == 403
    assert (srv.models_dir / "acme/m/v1/w.bin").exists()
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit", headers=acme).status_code == 200
    upload_resumable(srv.url, "beta/x@v1", files, headers=beta)
    assert httpx.delete(f"{srv.url}/models/acme/m@v1", headers=acme).status_code == 200


@pytest.mark.parametrize(
    ("point", "no_exchange", "visible"),
    [
        ("staged", False, 1),  # killed before the swap: the old version stays
        ("swapped", False, 2),  # killed right after the atomic exchange: the new one is in
        ("kept-previous", False, 2),
        ("moved-aside", True, 1),  # no RENAME_EXCHANGE, killed between the two renames
    ],
)
def test_kill_9_at_each_step_of_a_commit(mlos_server, monkeypatch, point, no_exchange, visible):
    srv = mlos_server()
    upload_resumable(srv.url, "ns/c@v1", generation(1))
    srv.stop()
    monkeypatch.setenv("MLOS_CORE_CRASHPOINT", point)
    if no_exchange:
        monkeypatch.setenv("MLOS_CORE_NO_EXCHANGE", "1")
    srv.start()
    with pytest.raises(httpx.HTTPError):
        upload_resumable(srv.url, "ns/c@v1", generation(2))
    wait_for(lambda: not srv.running, timeout=10, what="server killed at the crash point")
    monkeypatch.delenv("MLOS_CORE_CRASHPOINT")
    srv.start()
    model_dir = srv.models_dir / "ns" / "c" / "v1"
    assert read_consistent(model_dir) == {f"gen-{visible:04d}".encode()}
    assert httpx.get(f"{srv.url}/models/ns/c@v1").json()["size"] == sum(
        len(b) for b in generation(visible).values()
    )
    state = srv.models_dir / ".mlos"
    assert not list((state / "staging").iterdir()) and not list((state / "trash").iterdir())
    # and the next publish works normally
    upload_resumable(srv.url, "ns/c@v1", generation(3))
    assert read_consistent(model_dir) == {b"gen-0003"}
