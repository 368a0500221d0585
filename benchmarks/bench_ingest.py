"""mlos-core ingest: a 1 GiB model uploaded over loopback, sha256 verification on.

Compared in the same run with writing the same bytes durably to the same disk
(``dd bs=4M conv=fdatasync``). Reports throughput, the ratio to dd (target: ingest takes at
most 2x dd's time, i.e. >= 50% of durable disk speed) and the server's peak RSS (VmHWM,
target < 150 MB). The client is curl (streams the file, negligible CPU), so the figure is the
server's. ``AXON_BENCH_INGEST_MB`` changes the size.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.common import MiB, Row, make_file, peak_rss_mb_of, timed_run


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _start_server(models: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "mlos_core", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--models-dir", str(models), "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"mlos-core did not start: {log.read_text()}")


def _resumable(url: str, model_id: str, src: Path, digest: str, size: int) -> float:
    manifest = {
        "apiVersion": "axon.mlos.io/v1",
        "kind": "Model",
        "metadata": {},
        "spec": {"format": {"files": [{"path": "weights.bin", "size": size, "sha256": digest}]}},
    }
    start = time.perf_counter()
    opened = httpx.post(f"{url}/v1/uploads", json={"model_id": model_id, "manifest": manifest})
    opened.raise_for_status()
    uid = opened.json()["upload_id"]
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-T", str(src), "-X", "PUT",
         "-H", "Content-Type: application/octet-stream", "-H", "Expect:",
         f"{url}/v1/uploads/{uid}/blobs/{digest}"],
        check=True,
    )  # fmt: skip
    httpx.post(f"{url}/v1/uploads/{uid}/commit", timeout=120).raise_for_status()
    return time.perf_counter() - start


def _multipart(url: str, model_id: str, src: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", "Expect:",
         "-F", f"model_id={model_id}", "-F", "manifest={}",
         "-F", f"model_files=@{src};filename=weights.bin", f"{url}/models/upload"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def run(workdir: Path) -> list[Row]:
    size = int(os.environ.get("AXON_BENCH_INGEST_MB", "1024")) * MiB
    src = make_file(workdir / "src.bin", size)
    digest = _sha256(src)
    os.sync()
    dd_out = workdir / "dd.out"
    dd_seconds, _ = timed_run(
        ["dd", f"if={src}", f"of={dd_out}", "bs=4M", "conv=fdatasync", "status=none"]
    )
    dd_out.unlink()
    os.sync()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_server(workdir / "models", port, workdir / "server.log")
    try:
        put_seconds = _resumable(url, "bench/ingest@v1", src, digest, size)
        rss_put = peak_rss_mb_of(proc.pid)
        os.sync()
        mp_seconds = _multipart(url, "bench/ingest-mp@v1", src)
        rss = peak_rss_mb_of(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    mb = size // MiB

    def note(seconds: float) -> str:
        return f"{100 * dd_seconds / seconds:.0f}% of durable disk speed"

    return [
        Row(f"dd bs=4M conv=fdatasync ({mb} MiB)", dd_seconds, size),
        Row(
            f"ingest resumable PUT, sha256 ({mb} MiB)",
            put_seconds,
            size,
            baseline="dd fdatasync",
            baseline_seconds=dd_seconds,
            peak_rss_mb=rss_put,
            note=note(put_seconds),
        ),
        Row(
            f"ingest multipart POST, sha256 ({mb} MiB)",
            mp_seconds,
            size,
            baseline="dd fdatasync",
            baseline_seconds=dd_seconds,
            peak_rss_mb=rss,
            note=note(mp_seconds),
        ),
    ]
