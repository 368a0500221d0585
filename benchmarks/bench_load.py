"""mlos-core under many small uploads at once: ``MODELS`` small models (4 files each) sent
by 4 concurrent clients (one-shot multipart, fsync on), while a reader lists ``/models``.

Each upload carries the model's real manifest (every file's size and sha256, computed
before timing, as axon sends it): the server hashes every byte it receives, checks it
against the manifest, commits the version atomically and registers it. Compared in the same
run with copying the same files to the same disk with the standard tool (``cp -r`` then
``sync``): the ratio says what that HTTP + verification + atomic-commit path costs for small
models over one plain durable copy of the same bytes.

Each run gets a new server; the two run ``AXON_BENCH_ROUNDS`` rounds (default 3) in rotated
order, everything synced and the page cache dropped (when root) before each; the table shows
medians. Also reports upload latency p50/p95/p99 over all runs, listings answered meanwhile
(median per run), and the server's peak RSS. ``AXON_BENCH_LOAD_MODELS`` changes the count
(default 120; ``AXON_BENCH_QUICK=1``: 12).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.common import (
    QUICK,
    Mlos,
    Row,
    Sample,
    command,
    on_fresh_mlos,
    percentile,
    rounds,
    run_rounds,
)

MODELS = int(os.environ.get("AXON_BENCH_LOAD_MODELS", "12" if QUICK else "120"))
FILES = {
    "config.json": 2048,
    "tokenizer.json": 64 * 1024,
    "w1.bin": 256 * 1024,
    "w2.bin": 512 * 1024,
}
CLIENTS = 4


def _make_models(root: Path, manifests: Path) -> list[Path]:
    """The models under ``root``, each with its manifest (sizes and sha256) in
    ``manifests/<model>.json`` (not copied by the baseline: axon holds it in its cache)."""
    out = []
    manifests.mkdir(parents=True)
    for i in range(MODELS):
        d = root / f"m{i}"
        d.mkdir(parents=True)
        files = []
        for name, size in FILES.items():
            data = os.urandom(size)
            (d / name).write_bytes(data)
            files.append({"path": name, "size": size, "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {
            "apiVersion": "axon.mlos.io/v1",
            "kind": "Model",
            "spec": {"format": {"files": files}},
        }
        (manifests / f"{d.name}.json").write_text(json.dumps(manifest))
        out.append(d)
    return out


def _upload(client: httpx.Client, model: Path, manifest: str) -> float:
    model_id = f"bench/{model.name}@v1"
    parts = [("model_files", (p.name, p.read_bytes())) for p in sorted(model.iterdir())]
    started = time.perf_counter()
    r = client.post(
        "/models/upload",
        data={"model_id": model_id, "manifest": manifest},
        files=parts,
    )
    r.raise_for_status()
    return time.perf_counter() - started


class _Load:
    """One run: the uploads from ``CLIENTS`` clients while a lister runs."""

    def __init__(self, models: list[Path], manifests: Path) -> None:
        self.models = models
        self.manifests = manifests
        self.latencies: list[float] = []
        self.listings: list[int] = []

    def upload(self, client: httpx.Client, model: Path) -> float:
        return _upload(client, model, (self.manifests / f"{model.name}.json").read_text())

    def __call__(self, server: Mlos) -> Sample:
        listings = 0
        lister_errors: list[BaseException] = []
        done = threading.Event()

        def lister() -> None:
            nonlocal listings
            try:
                with httpx.Client(base_url=server.url, timeout=60) as c:
                    while not done.is_set():
                        c.get("/models").raise_for_status()
                        listings += 1
            except BaseException as exc:  # reported below: a silent stop would read as "no errors"
                lister_errors.append(exc)

        reader = threading.Thread(target=lister)
        reader.start()
        clients = [httpx.Client(base_url=server.url, timeout=120) for _ in range(CLIENTS)]
        try:
            started = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                latencies = list(
                    pool.map(
                        lambda ia: self.upload(clients[ia[0] % CLIENTS], ia[1]),
                        enumerate(self.models),
                    )
                )
            seconds = time.perf_counter() - started
        finally:
            done.set()
            reader.join()
            for c in clients:
                c.close()
        if lister_errors:
            raise RuntimeError(f"listing /models failed during the load: {lister_errors[0]!r}")
        self.latencies += latencies
        self.listings.append(listings)
        return Sample(seconds, server.peak_rss_mb())


def run(workdir: Path) -> list[Row]:
    src = workdir / "src"
    manifests = workdir / "manifests"
    models = _make_models(src, manifests)
    nbytes = MODELS * sum(FILES.values())
    copy = workdir / "cp-dst"
    load = _Load(models, manifests)
    runs = run_rounds(
        {
            "cp": command(
                ["sh", "-c", 'cp -r "$0" "$1" && sync -f "$1"', str(src), str(copy)],
                reset=lambda: shutil.rmtree(copy),
            ),
            "load": on_fresh_mlos(workdir, load),
        },
        rounds(3),
        cold=True,
    )
    lat = "/".join(f"{percentile(load.latencies, q) * 1000:.0f}" for q in (0.5, 0.95, 0.99))
    listings = statistics.median(load.listings)
    return [
        runs["load"].row(
            f"mlos-core: {MODELS} small models, {CLIENTS} clients",
            nbytes,
            ("cp -r + sync", runs["cp"]),
            f"upload p50/p95/p99 {lat} ms; {listings:.0f} listings served meanwhile; server RSS",
        )
    ]
