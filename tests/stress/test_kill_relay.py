"""kill -9 in the middle of relay pulls (docs/relay.md): of the instance pulling, and of the
instance serving the blobs.

Each trial pulls a model from a source reached through a throttling proxy (so the kill lands
at a chosen fraction of the bytes), kills one side with SIGKILL, and checks:

- **puller killed**: after a restart nothing of the model is visible and no leftover is
  served; the pull started again resumes from the bytes kept (it fetches at most the rest
  plus one batch) and ends bit-exact.
- **source killed**: the pull goes on from the other source (another instance holding the
  same build) from the bytes already received, and ends bit-exact; with no other source it
  fails cleanly (``no_source``), nothing visible, and a pull after the source came back
  completes.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from typing import Any

import httpx
import pytest

from tests.fixtures.common import wait_for
from tests.fixtures.mlos import ServerFactory, upload_resumable
from tests.stress.figures import record, scale, tally

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MiB = 1024 * 1024
TRIALS = scale(3, 12)
RATE = 8 * MiB  # bytes/s through the source's proxy
BATCH = 4 * MiB  # bytes the puller may lose to a kill (one batch in flight)


def _model(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "weights.bin": rng.randbytes(32 * MiB + rng.randrange(MiB)),
        "shard-2.bin": rng.randbytes(rng.randrange(1, 3 * MiB)),
        "config.json": f'{{"seed": {seed}}}'.encode(),
    }


def _job(srv: Any, pull_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{srv.url}/v1/pulls/{pull_id}", timeout=10).json()
    return job


def _start(srv: Any, model_id: str, digest: str, sources: list[str]) -> str:
    r = httpx.post(
        f"{srv.url}/v1/pulls",
        json={"model_id": model_id, "manifest_sha256": digest, "sources": sources},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    pull_id: str = r.json()["pull_id"]
    return pull_id


def _finish(srv: Any, pull_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = httpx.get(f"{srv.url}/v1/pulls/{pull_id}?wait=5", timeout=30).json()
        if job["state"] in ("committed", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job


def _files(srv: Any, model_id: str) -> dict[str, bytes]:
    ns, rest = model_id.split("/", 1)
    name, version = rest.split("@")
    root = srv.models_dir / ns / name / version
    if not root.is_dir():
        return {}
    out = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out.pop("manifest.yaml", None)
    return out


def _wait_bytes(srv: Any, pull_id: str, at: int) -> None:
    wait_for(lambda: _job(srv, pull_id)["bytes_done"] >= at, timeout=120, what=f"{at} B pulled")


def test_kill_9_of_puller_and_source_mid_pull(mlos_server: ServerFactory, tcp_proxy: Any) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    victims: dict[str, int] = {}
    resumed: list[str] = []
    for trial in range(TRIALS):
        files = _model(trial)
        model_id = f"hf/relay{trial}@v1"
        source = mlos_server(no_fsync=True)
        digest = upload_resumable(source.url, model_id, files)["manifest_sha256"]
        proxy = tcp_proxy(source.port)
        proxy.throttle(RATE)
        total = sum(
            len(b) for b in {hashlib.sha256(b).hexdigest(): b for b in files.values()}.values()
        )
        at = int(total * rng.uniform(0.15, 0.8))
        victim = ("puller", "source", "lone-source")[trial % 3]
        victims[victim] = victims.get(victim, 0) + 1
        if victim == "puller":
            puller = mlos_server(no_fsync=True, peer=[proxy.url])
            pull_id = _start(puller, model_id, digest, [proxy.url])
            _wait_bytes(puller, pull_id, at)
            kept = _job(puller, pull_id)["bytes_done"]
            puller.kill()
            puller.start()
            assert _files(puller, model_id) == {}, f"trial {trial}: visible after the kill"
            proxy.throttle(None)
            job = _finish(puller, _start(puller, model_id, digest, [proxy.url]))
            assert job["state"] == "committed", f"trial {trial}: {job}"
            assert job["bytes_fetched"] <= total - kept + BATCH, f"trial {trial}: {job}, {kept}"
            resumed.append(f"{kept * 100 // total}%")
        elif victim == "source":
            twin = mlos_server(no_fsync=True)
            upload_resumable(twin.url, model_id, files)
            puller = mlos_server(no_fsync=True, peer=[proxy.url, twin.url])
            pull_id = _start(puller, model_id, digest, [proxy.url])
            _wait_bytes(puller, pull_id, at)
            source.kill()
            job = _finish(puller, pull_id)
            assert job["state"] == "committed", f"trial {trial}: {job}"
            assert job["source"] == twin.url, f"trial {trial}: {job}"
            assert job["bytes_fetched"] <= total + BATCH, f"trial {trial}: {job}"
        else:
            puller = mlos_server(no_fsync=True, peer=[proxy.url])
            pull_id = _start(puller, model_id, digest, [proxy.url])
            _wait_bytes(puller, pull_id, at)
            source.kill()
            job = _finish(puller, pull_id)
            assert job["state"] == "failed" and job["code"] == "no_source", f"trial {trial}: {job}"
            assert _files(puller, model_id) == {}, f"trial {trial}: visible after a failed pull"
            source.start()
            proxy.throttle(None)
            job = _finish(puller, _start(puller, model_id, digest, [proxy.url]))
            assert job["state"] == "committed", f"trial {trial}: {job}"
        assert _files(puller, model_id) == files, f"trial {trial} ({victim}): not bit-exact"
    tally("kill_relay", "victims", victims)
    record("kill_relay", "trials", TRIALS)
    record("kill_relay", "puller_kills_resumed_at", ",".join(resumed))
