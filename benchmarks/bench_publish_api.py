"""API publish of a 1 GiB model vs ``curl --upload-file`` into the same ``mlos-core``.

One ``mlos-core serve`` on a loopback port (fsync on, as in production) receives both:

* ``curl``: the baseline. A different 1 GiB file (so the server's dedupe cannot help
  either side) is sent as one blob of an open upload of another model: ``curl -X PUT
  --upload-file`` to the blob URL, then ``curl -X POST .../commit``; both timed together.
  Opening that upload (a JSON POST) is not timed.
* ``axon publish``: the whole command (``--target http://127.0.0.1:PORT -q``): start-up,
  config, validation through the hash index, open, streamed PUT, commit and register.
* ``axon publish (unchanged)``: the same publish again: one open, one commit, no bytes
  (best of 3 runs), next to the bare interpreter start-up for reference.

Page caches are dropped (when root) before each timed run so both read from disk alike.
``AXON_BENCH_PUBLISH_MB`` changes the size (default 1024).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.bench_publish_fs import axon_bin, install_model
from benchmarks.common import (
    MiB,
    Row,
    drop_caches_if_possible,
    make_file,
    timed_run,
    timed_run_cpu,
)

REF = "bench/publish-api@v1"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    models = workdir / "server-models"
    models.mkdir()
    log = open(workdir / "mlos-core.log", "wb")  # noqa: SIM115 - owned by the child
    cmd = [sys.executable, "-m", "mlos_core", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--models-dir", str(models), "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mlos-core did not start: {(workdir / 'mlos-core.log').read_text()}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def curl_upload(url: str, path: Path) -> float:
    """Open an upload for one blob (untimed), then time curl's PUT + commit."""
    size, sha = path.stat().st_size, _sha256(path)
    manifest = {
        "apiVersion": "axon.mlos.io/v1",
        "kind": "Model",
        "metadata": {"namespace": "bench", "name": "curl", "version": "v1"},
        "spec": {"format": {"files": [{"path": path.name, "size": size, "sha256": sha}]}},
    }
    answer = httpx.post(
        f"{url}/v1/uploads", json={"model_id": "bench/curl@v1", "manifest": manifest}, timeout=60
    ).json()
    upload = f"{url}/v1/uploads/{answer['upload_id']}"
    script = (
        'curl -sS -f -o /dev/null -X PUT -H "Upload-Offset: 0" --upload-file "$0" "$1" && '
        'curl -sS -f -o /dev/null -X POST "$2"'
    )
    drop_caches_if_possible()
    seconds, _ = timed_run(
        ["bash", "-c", script, str(path), f"{upload}/blobs/{sha}", f"{upload}/commit"]
    )
    return seconds


def run(workdir: Path) -> list[Row]:
    workdir = workdir.resolve()
    size = int(os.environ.get("AXON_BENCH_PUBLISH_MB", "1024")) * MiB
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.iterdir() if p.is_file())
    other = make_file(workdir / "curl-data" / "model.safetensors", size)
    proc, url = start_server(workdir)
    try:
        curl_s = curl_upload(url, other)
        publish = [axon_bin(), "publish", REF, "--target", url, "-q"]
        drop_caches_if_possible()
        axon_s, rss = timed_run(publish, env=env)
        again = [timed_run_cpu(publish, env=env) for _ in range(3)]
        again_s, again_cpu, again_rss = min(again)
        python_s = min(timed_run([sys.executable, "-c", "pass"])[0] for _ in range(3))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return [
        Row(f"api: axon publish ({size // MiB} MiB)", axon_s, total, "curl", curl_s, rss),
        Row(
            "api: axon publish unchanged",
            again_s,
            0,
            peak_rss_mb=again_rss,
            note=f"best of 3, {again_cpu:.2f} s CPU; target < 0.5 s",
        ),
        Row("api: python -c pass (reference)", python_s, note="interpreter start-up alone"),
    ]
