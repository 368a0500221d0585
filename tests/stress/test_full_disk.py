"""A receiving disk that fills up: mlos-core's models directory on a small tmpfs the test
mounts (it needs root; without mount rights the disk cases skip saying so), and the
server's own ``--max-upload-size``. Clear error, nothing partial left, the server keeps
serving, and the upload resumes once space is back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.common import tmpfs
from tests.fixtures.mlos import ServerFactory, manifest_for
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
