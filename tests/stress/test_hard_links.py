"""Hard-link exhaustion: a version file is a hard link to its blob, and ext4 allows 65,000
links to one file. One tenant linking a content over and over must not block anyone's
publishes: the blob store starts a fresh copy when a blob runs out of links (``EMLINK``) and
the next links go to it. Manifests have limits (``--max-files``, ``--max-duplicates``) that
answer 413 naming the option.

The link limit is hit for real, on ext4 (where the tests' tmp dir is ext4, directly: 65,000
links take about a second; elsewhere on an ext4 image the test mounts, which needs root)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS, ServerFactory, manifest_for, upload_resumable
from tests.stress.figures import record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

EXT4_LINK_MAX = 65_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_path(models: Path, digest: str) -> Path:
    return models / ".mlos" / "blobs" / "sha256" / digest[:2] / digest


def _fs_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point above it)."""
    best, kind = "", ""
    target = str(path.resolve()) + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount = fields[4].replace("\\040", " ")
        fstype = fields[fields.index("-") + 1]
        if target.startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


@contextlib.contextmanager
def ext4_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on ext4 (link limit 65,000): ``tmp_path`` itself when it is on ext4, else
    a 512 MiB sparse ext4 image mounted there (skip, saying why, when that is denied)."""
    if _fs_type(tmp_path) == "ext4":
        yield tmp_path
        return
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(512 * 1024 * 1024)
    for cmd in (
        ["mkfs.ext4", "-q", "-F", str(image)],
        ["mount", "-o", "loop", str(image), str(mnt)],
    ):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            pytest.skip(f"no ext4 here ({_fs_type(tmp_path)}) and no {cmd[0]}: {exc}")
        if proc.returncode != 0:
            pytest.skip(f"no ext4 here and {cmd[0]} failed (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def exhaust_links(target: Path, hog: Path) -> int:
    """Hard-link ``target`` into ``hog`` until the filesystem refuses; the links made."""
    hog.mkdir(exist_ok=True)
    n = 0
    while True:
        try:
            os.link(target, hog / str(n))
        except OSError as exc:
            assert exc.errno == errno.EMLINK, exc
            return n
        n += 1
        assert n <= EXT4_LINK_MAX, "no link limit on this filesystem"


def test_a_blob_out_of_links_gets_a_fresh_copy_and_dedup_goes_on(
    mlos_server: ServerFactory, tmp_path: Path
) -> None:
    """The attack's end state, reached cheaply: the blob of bravo's file has no link left
    (linked 65,000 times from a directory beside the models). bravo's next publish of that
    file answers 200, not 500 "Too many links", still without sending it (dedup), and the
    publish after it links the same fresh copy."""
    with ext4_dir(tmp_path) as root:
        srv = mlos_server(models_dir=root / "models", tokens=TOKENS)
        models = srv.models_dir
        data = os.urandom(256 * 1024)
        blob = blob_path(models, sha(data))
        upload_resumable(srv.url, "bravo/m@v1", {"w.bin": data}, headers=BRAVO)
        old_ino = os.stat(blob).st_ino
        started = time.perf_counter()
        made = exhaust_links(blob, root / "hog")
        record("hard_links", "links_to_exhaust_a_blob", made + 2)  # + store + bravo/m@v1
        record("hard_links", "exhaust_seconds", round(time.perf_counter() - started, 2))
        assert os.stat(blob).st_nlink == EXT4_LINK_MAX

        started = time.perf_counter()
        answer = upload_resumable(
            srv.url, "bravo/m@v2", {"w.bin": data, "c.json": b"{}"}, headers=BRAVO
        )
        record("hard_links", "publish_at_emlink_seconds", round(time.perf_counter() - started, 3))
        assert answer["opened"]["have"] == ["w.bin"]  # not sent again
        fresh = os.stat(blob)
        assert fresh.st_ino != old_ino and fresh.st_nlink == 2  # the store's name + v2
        assert os.stat(models / "bravo/m/v2/w.bin").st_ino == fresh.st_ino
        assert os.stat(models / "bravo/m/v1/w.bin").st_ino == old_ino  # v1 keeps its file
        for version in ("v1", "v2"):
            assert (models / f"bravo/m/{version}/w.bin").read_bytes() == data

        again = upload_resumable(srv.url, "bravo/m@v3", {"w.bin": data}, headers=BRAVO)
        assert again["opened"]["have"] == ["w.bin"]
        assert os.stat(models / "bravo/m/v3/w.bin").st_ino == fresh.st_ino
        assert os.stat(blob).st_nlink == 3
        # the old copy goes with the last link to it; the store keeps the fresh one
        shutil.rmtree(root / "hog")
        assert httpx.delete(f"{srv.url}/models/bravo/m@v1", headers=BRAVO).status_code == 200
        assert os.stat(blob).st_ino == fresh.st_ino and blob.read_bytes() == data
        leftovers = [p for p in blob.parent.iterdir() if p.name != blob.name]
        assert leftovers == []


def _many(model_id: str, data: bytes, n: int) -> dict[str, Any]:
    """A manifest listing ``n`` files, all with the content ``data``."""
    manifest = manifest_for(model_id, {"seed": data})
    digest = sha(data)
    manifest["spec"]["format"]["files"] = [
        {"path": f"d{i // 1000:03d}/f{i:05d}.bin", "size": len(data), "sha256": digest}
        for i in range(n)
    ]
    return manifest


def test_one_manifest_past_the_link_limit_commits(
    mlos_server: ServerFactory, tmp_path: Path
) -> None:
    """The attacker's second case, with the limits raised by the operator: one manifest of
    65,001 files with one content. It crosses the link limit in the middle of the commit:
    200, every file there, two copies of the content. Then another tenant's publish of the
    same content (which it must send: dedup is per tenant) commits too."""
    n = EXT4_LINK_MAX + 1
    with ext4_dir(tmp_path) as root:
        srv = mlos_server(models_dir=root / "models", tokens=TOKENS, max_files=n, max_duplicates=n)
        data = b"the same content, many times\n" * 10
        body = {"model_id": "alpha/many@v1", "manifest": _many("alpha/many@v1", data, n)}
        with httpx.Client(base_url=srv.url, headers=ALPHA, timeout=600) as c:
            started = time.perf_counter()
            r = c.post("/v1/uploads", json=body)
            record(
                "hard_links", "open_65001_files_seconds", round(time.perf_counter() - started, 2)
            )
            assert r.status_code == 201, r.text[:300]
            opened = r.json()
            assert [need["sha256"] for need in opened["needed"]] == [sha(data)]
            uid = opened["upload_id"]
            assert c.put(f"/v1/uploads/{uid}/blobs/{sha(data)}", content=data).status_code == 201
            started = time.perf_counter()
            r = c.post(f"/v1/uploads/{uid}/commit")
            elapsed = time.perf_counter() - started
            record("hard_links", "commit_65001_files_seconds", round(elapsed, 2))
            assert r.status_code == 200, r.text[:300]
        version = srv.models_dir / "alpha/many/v1"
        inodes = {os.stat(p).st_ino for p in version.rglob("*.bin")}
        assert len(inodes) == 2  # the first 64,999 links, then the fresh copy's
        assert sum(1 for _ in version.rglob("*.bin")) == n
        assert os.stat(blob_path(srv.models_dir, sha(data))).st_nlink == 3  # store + 2 links
        # bravo, who read that sha256 somewhere, still publishes the same content
        answer = upload_resumable(srv.url, "bravo/one@v1", {"w.bin": data}, headers=BRAVO)
        assert [need["sha256"] for need in answer["opened"]["needed"]] == [sha(data)]
        assert (srv.models_dir / "bravo/one/v1/w.bin").read_bytes() == data


def _open(srv: Any, manifest: dict[str, Any], model_id: str) -> httpx.Response:
    body = {"model_id": model_id, "manifest": manifest}
    return httpx.post(f"{srv.url}/v1/uploads", json=body, timeout=120)


def _assert_limit(r: httpx.Response, code: str, option: str, limit: int) -> None:
    assert r.status_code == 413, r.text[:300]
    body = r.json()
    assert body["code"] == code, body
    assert option in body["message"] and f"{limit}" in body["message"], body["message"]


def test_manifest_limits_answer_413_naming_the_option(
    mlos_server: ServerFactory, tmp_path: Path
) -> None:
    """By default one manifest of 65,001 files with one content is refused up front (413,
    --max-duplicates 10000), not a 500 from the filesystem; a lower --max-files refuses more
    files than that on both upload paths, and nothing is stored."""
    srv = mlos_server()
    data = b"dup"
    r = _open(srv, _many("ns/dups@v1", data, EXT4_LINK_MAX + 1), "ns/dups@v1")
    _assert_limit(r, "too_many_duplicates", "--max-duplicates", 10000)
    at_limit = _open(srv, _many("ns/dups@v1", data, 10_000), "ns/dups@v1")
    assert at_limit.status_code == 201, at_limit.text[:300]

    small = mlos_server(max_files=100, max_duplicates=3)
    files = {f"f{i:03d}.txt": f"file {i}".encode() for i in range(101)}
    r = _open(small, manifest_for("ns/wide@v1", files), "ns/wide@v1")
    _assert_limit(r, "too_many_files", "--max-files", 100)
    del files["f100.txt"]
    at_limit = _open(small, manifest_for("ns/wide@v1", files), "ns/wide@v1")
    assert at_limit.status_code == 201, at_limit.text[:300]
    # aborted: its files would be kept for it, and the one-shot cases below must store none
    assert httpx.delete(f"{small.url}/v1/uploads/{at_limit.json()['upload_id']}").is_success
    four = {f"same{i}.txt": b"same" for i in range(4)}
    r = _open(small, manifest_for("ns/same@v1", four), "ns/same@v1")
    _assert_limit(r, "too_many_duplicates", "--max-duplicates", 3)

    # the one-shot upload: a manifest listing too many, and more files sent than allowed
    def oneshot(manifest: dict[str, Any], parts: dict[str, bytes]) -> httpx.Response:
        return httpx.post(
            f"{small.url}/models/upload",
            data={"model_id": "ns/shot@v1", "manifest": json.dumps(manifest)},
            files=[("model_files", (name, b)) for name, b in parts.items()],
            timeout=120,
        )

    files["f100.txt"] = b"one too many"
    r = oneshot(manifest_for("ns/shot@v1", files), {"f000.txt": files["f000.txt"]})
    _assert_limit(r, "too_many_files", "--max-files", 100)
    r = oneshot(manifest_for("ns/shot@v1", {}), files)
    _assert_limit(r, "too_many_files", "--max-files", 100)
    r = oneshot(manifest_for("ns/shot@v1", {}), four)
    _assert_limit(r, "too_many_duplicates", "--max-duplicates", 3)
    assert httpx.get(f"{small.url}/models/ns/shot@v1").status_code == 404
    blobs = small.models_dir / ".mlos" / "blobs" / "sha256"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []
    record("hard_links", "limit_cases", 8)
