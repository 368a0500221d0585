"""A receiving disk that fills up: mlos-core's models directory on a small tmpfs the test
mounts (it needs root; without mount rights the disk cases skip saying so), and the
server's own ``--max-upload-size``. Clear error, nothing partial left, the server keeps
serving, and the upload resumes once space is back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.common import tmpfs
from tests.fixtures.mlos import ServerFactory, manifest_for, upload_resumable
from tests.fixtures.raw_http import json_request, on_one_connection, request_bytes
from tests.stress.checkers import check_fs_root
from tests.stress.figures import record
from tests.stress.harness import MiB, make_homes, run_axon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (the test skips, saying why, where mounting is not allowed)."""
    with tmpfs(tmp_path / "small-fs", "size=16m") as where:
        yield where


@pytest.mark.parametrize("limit", ["disk", "max-upload-size"])
def test_publish_bigger_than_the_disk(
    limit: str, mlos_server: ServerFactory, tmp_path: Path
) -> None:
    """ "disk": a real 16 MiB filesystem fills up (skips, saying why, where mounting is not
    allowed); "max-upload-size": the server's own size limit refuses it."""
    with contextlib.ExitStack() as stack:
        if limit == "disk":
            fs = stack.enter_context(tmpfs(tmp_path / "small-fs", "size=16m"))
            srv = mlos_server(models_dir=fs / "models", no_fsync=True)
        else:
            srv = mlos_server(models_dir=tmp_path / "models", max_upload_size="16M")
        _fill_and_recover(srv, limit, tmp_path)


def _fill_and_recover(srv: object, limit: str, tmp_path: Path) -> None:
    big, _ = make_homes(tmp_path / "big", "hf/big@v1", 24 * MiB)
    done = run_axon(big, "publish", "hf/big@v1", "-t", srv.url, "--json", "--retries", "1")  # type: ignore[attr-defined]
    assert done.returncode == 7, done.stdout + done.stderr  # EXIT_TRANSPORT
    (result,) = json.loads(done.stdout)["results"]
    assert result["error"]["type"] in ("NoSpaceError", "RemoteError")
    assert "space" in result["error"]["message"] or "size" in result["error"]["message"]
    assert check_fs_root(srv.models_dir) == (0, [])  # type: ignore[attr-defined]
    small, _ = make_homes(tmp_path / "small", "hf/small@v1", 1 * MiB)
    ok = run_axon(small, "publish", "hf/small@v1", "-t", srv.url, "-q")  # type: ignore[attr-defined]
    assert ok.returncode == 0, ok.stderr  # the server keeps serving
    assert check_fs_root(srv.models_dir)[0] == 1  # type: ignore[attr-defined]
    record("full_disk", f"mode_{limit}", "tmpfs" if limit == "disk" else "limit")
    record("full_disk", "trials", 1, add=True)


def test_disk_fills_during_an_upload_then_resumes(
    small_fs: Path, mlos_server: ServerFactory, tmp_path: Path
) -> None:
    srv = mlos_server(models_dir=small_fs / "models", no_fsync=True)
    data = os.urandom(6 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    files = {"w.bin": data}
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        body = {"model_id": "hf/fill@v1", "manifest": manifest_for("hf/fill@v1", files)}
        opened = c.post("/v1/uploads", json=body)
        assert opened.status_code == 201, opened.text
        uid = opened.json()["upload_id"]
        filler = small_fs / "filler"
        with open(filler, "wb") as fh:  # something else takes the space meanwhile
            try:
                while True:
                    fh.write(b"\0" * MiB)
                    fh.flush()
                    if os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize < 2 * MiB:
                        break
            except OSError:
                pass
        r = c.put(f"/v1/uploads/{uid}/blobs/{sha}", content=data)
        assert r.status_code == 507, r.text
        assert r.json()["code"] == "insufficient_storage"
        assert c.get("/health").status_code == 200
        assert check_fs_root(srv.models_dir) == (0, [])
        filler.unlink()
        offset = int(c.head(f"/v1/uploads/{uid}/blobs/{sha}").headers["Upload-Offset"])
        r = c.put(
            f"/v1/uploads/{uid}/blobs/{sha}",
            content=data[offset:],
            headers={"Upload-Offset": str(offset)},
        )
        assert r.status_code == 201, r.text
        assert c.post(f"/v1/uploads/{uid}/commit").status_code == 200
    assert check_fs_root(srv.models_dir) == (1, [])
    record("full_disk", "mid_upload_trials", 1, add=True)


def test_full_disk_answers_on_every_route_keep_the_connection(
    small_fs: Path, mlos_server: ServerFactory
) -> None:
    """register, scan and DELETE on a full disk (and on one turned read-only) each answer
    once, naming no server path, and the keep-alive connection serves the next request:
    these answers used to be followed by "Exception in ASGI application" and a reset."""
    srv = mlos_server(models_dir=small_fs / "models", no_fsync=True)
    upload_resumable(srv.url, "hf/gone@v1", {"w.bin": os.urandom(4096)})
    copied = srv.models_dir / "hf" / "copied" / "v1"  # copied in by hand: register, scan
    copied.mkdir(parents=True)
    (copied / "w.bin").write_bytes(b"copied")
    (copied / "manifest.yaml").write_text(
        json.dumps(manifest_for("hf/copied@v1", {"w.bin": b"copied"}))
    )
    filler = small_fs / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):  # every page taken
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    health = request_bytes("GET", "/health")
    calls = [
        json_request("POST", "/models/register", {"model_id": "hf/copied@v1"}),
        health,
        request_bytes("POST", "/models/scan"),
        health,
        request_bytes("DELETE", "/models/hf/gone@v1"),
        health,
    ]
    answers = on_one_connection(srv.url, calls)
    for i in (0, 2, 4):
        status, _, body = answers[i]
        assert status == 507, answers[i]
        assert json.loads(body)["code"] == "insufficient_storage"
        assert str(small_fs) not in body.decode()
    assert [a[0] for a in answers[1::2]] == [200, 200, 200]
    filler.unlink()  # space is back: the same calls succeed, still on one connection
    answers = on_one_connection(srv.url, [calls[0], calls[2], calls[4], health])
    assert [a[0] for a in answers] == [200, 200, 200, 200], answers
    assert httpx.get(f"{srv.url}/models/hf/copied@v1").status_code == 200
    assert httpx.get(f"{srv.url}/models/hf/gone@v1").status_code == 404
    # a filesystem error no code expects (read-only): a 500 with an incident id, no path
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        answers = on_one_connection(
            srv.url,
            [json_request("POST", "/models/register", {"model_id": "hf/copied@v1"}), health],
        )
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    status, _, body = answers[0]
    assert status == 500 and json.loads(body)["code"] == "internal", answers[0]
    assert str(small_fs) not in body.decode() and "Errno" not in body.decode()
    incident = json.loads(body)["message"].split()[2].rstrip(";")
    assert answers[1][0] == 200
    log = srv.log()
    assert "Exception in ASGI application" not in log
    assert f"internal error {incident}" in log and "Read-only file system" in log
    record("full_disk", "keepalive_routes", 4, add=True)
