"""mlos-core under many small uploads at once: ``MODELS`` small models (4 files each) sent
by 4 concurrent clients (one-shot multipart, fsync on), while a reader lists ``/models``.

Compared in the same run with copying the same files to the same disk with the standard
tool (``cp -r`` then ``sync``): the ratio says what the HTTP + verification + atomic-commit
path costs for small models. Also reports upload latency p50/p95/p99, listings answered
meanwhile, and the server's peak RSS. ``AXON_BENCH_LOAD_MODELS`` changes the count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.bench_ingest import _free_port, _start_server
from benchmarks.common import Row, drop_caches_if_possible, peak_rss_mb_of, percentile

MODELS = int(os.environ.get("AXON_BENCH_LOAD_MODELS", "120"))
FILES = {
    "config.json": 2048,
    "tokenizer.json": 64 * 1024,
    "w1.bin": 256 * 1024,
    "w2.bin": 512 * 1024,
}
CLIENTS = 4


def _make_models(root: Path) -> list[Path]:
    out = []
    for i in range(MODELS):
        d = root / f"m{i}"
        d.mkdir(parents=True)
        for name, size in FILES.items():
            (d / name).write_bytes(os.urandom(size))
        out.append(d)
    return out


def _upload(client: httpx.Client, model: Path) -> float:
    model_id = f"bench/{model.name}@v1"
    manifest = {"apiVersion": "axon.mlos.io/v1", "kind": "Model", "spec": {"format": {"files": []}}}
    parts = [("model_files", (p.name, p.read_bytes())) for p in sorted(model.iterdir())]
    started = time.perf_counter()
    r = client.post(
        "/models/upload",
        data={"model_id": model_id, "manifest": json.dumps(manifest)},
        files=parts,
    )
    r.raise_for_status()
    return time.perf_counter() - started


def run(workdir: Path) -> list[Row]:
    models = _make_models(workdir / "src")
    nbytes = MODELS * sum(FILES.values())
    drop_caches_if_possible()
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(workdir / "src"), str(workdir / "cp-dst")], check=True)
    subprocess.run(["sync", "-f", str(workdir / "cp-dst")], check=True)
    cp_seconds = time.perf_counter() - started
    shutil.rmtree(workdir / "cp-dst")

    port = _free_port()
    proc = _start_server(workdir / "models", port, workdir / "server.log")
    url = f"http://127.0.0.1:{port}"
    listings = 0
    lister_errors: list[BaseException] = []
    done = threading.Event()

    def lister() -> None:
        nonlocal listings
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not done.is_set():
                    c.get("/models").raise_for_status()
                    listings += 1
        except BaseException as exc:  # reported below: a silent stop would read as "no errors"
            lister_errors.append(exc)

    try:
        drop_caches_if_possible()
        reader = threading.Thread(target=lister)
        reader.start()
        clients = [httpx.Client(base_url=url, timeout=120) for _ in range(CLIENTS)]
        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            latencies = list(
                pool.map(lambda ia: _upload(clients[ia[0] % CLIENTS], ia[1]), enumerate(models))
            )
        seconds = time.perf_counter() - started
        done.set()
        reader.join()
        for c in clients:
            c.close()
        if lister_errors:
            raise RuntimeError(f"listing /models failed during the load: {lister_errors[0]!r}")
        rss = peak_rss_mb_of(proc.pid)
    finally:
        done.set()
        proc.terminate()
        proc.wait(timeout=30)
    lat = "/".join(f"{percentile(latencies, q) * 1000:.0f}" for q in (0.5, 0.95, 0.99))
    return [
        Row(
            f"mlos-core: {MODELS} small models, {CLIENTS} clients",
            seconds,
            nbytes,
            baseline="cp -r + sync",
            baseline_seconds=cp_seconds,
            peak_rss_mb=rss,
            note=f"upload p50/p95/p99 {lat} ms; {listings} listings served meanwhile",
        )
    ]
