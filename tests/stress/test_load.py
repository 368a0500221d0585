"""Sustained mixed load on one mlos-core for a bounded time: concurrent small uploads (one-shot
multipart and resumable), listings and health checks. No errors, memory steady (the server's
RSS sampled throughout), p50/p95/p99 latency per kind of request reported."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import httpx
import psutil
import pytest
from benchmarks.common import percentile

from tests.fixtures.mlos import ServerFactory, manifest_for, upload_resumable
from tests.stress.checkers import check_fs_root, check_registered
from tests.stress.figures import record, scale

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SECONDS = scale(8, 90)
UPLOADERS, READERS = 4, 3
MODELS = 12  # a fixed pool of ids, re-published over and over: the state stays bounded


class Load:
    def __init__(self, url: str, until: float) -> None:
        self.url = url
        self.until = until
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def timed(self, kind: str, call: Callable[[], httpx.Response | object]) -> None:
        started = time.perf_counter()
        try:
            r = call()
            if isinstance(r, httpx.Response) and r.status_code >= 300:
                raise RuntimeError(f"{r.status_code} {r.text[:200]}")
        except Exception as exc:
            with self.lock:
                self.errors.append(f"{kind}: {exc!r}"[:300])
            return
        with self.lock:
            self.latency[kind].append(time.perf_counter() - started)

    def uploader(self, n: int) -> None:
        i = 0
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while time.monotonic() < self.until:
                self.upload_one(c, f"load/m{(n * 7 + i) % MODELS}@v{i % 3}", i)
                i += 1

    def upload_one(self, c: httpx.Client, model_id: str, i: int) -> None:
        files = {"w.bin": os.urandom(32 * 1024), "config.json": b'{"n": %d}' % i}
        if i % 2:
            self.timed("upload_resumable", lambda: upload_resumable(self.url, model_id, files))
            return
        form = {"model_id": model_id, "manifest": json.dumps(manifest_for(model_id, files))}
        parts = [("model_files", (p, b)) for p, b in files.items()]
        self.timed("upload_multipart", lambda: c.post("/models/upload", data=form, files=parts))

    def reader(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while time.monotonic() < self.until:
                self.timed("list", lambda: c.get("/models"))
                self.timed("health", lambda: c.get("/health"))
                if n == 0:
                    self.timed("stats", lambda: c.get("/stats"))


def test_sustained_mixed_load(mlos_server: ServerFactory) -> None:
    srv = mlos_server(no_fsync=True, log_level="warning")
    proc = psutil.Process(srv.pid)
    load = Load(srv.url, time.monotonic() + SECONDS)
    threads = [threading.Thread(target=load.uploader, args=(n,)) for n in range(UPLOADERS)]
    threads += [threading.Thread(target=load.reader, args=(n,)) for n in range(READERS)]
    for t in threads:
        t.start()
    rss: list[int] = []
    while any(t.is_alive() for t in threads):
        rss.append(proc.memory_info().rss)
        time.sleep(0.25)
    for t in threads:
        t.join()
    assert load.errors == [], load.errors[:10]
    requests = sum(len(v) for v in load.latency.values())
    assert load.latency["upload_multipart"] and load.latency["list"]
    # memory steady: the last quarter of samples is not far above the second quarter
    q = max(1, len(rss) // 4)
    early, late = statistics.median(rss[q : 2 * q]), statistics.median(rss[-q:])
    assert late < early * 1.5 + 32 * 2**20, f"RSS grew from {early >> 20} MiB to {late >> 20} MiB"
    _n, problems = check_fs_root(srv.models_dir)
    assert problems + check_registered(srv.url, srv.models_dir) == []
    record("load", "seconds", SECONDS)
    record("load", "requests", requests)
    record("load", "errors", len(load.errors))
    record("load", "requests_per_s", round(requests / SECONDS, 1))
    record("load", "rss_mib_early_late", f"{early / 2**20:.0f}->{late / 2**20:.0f}")
    for kind, values in sorted(load.latency.items()):
        p50, p95, p99 = (percentile(values, x) * 1000 for x in (0.5, 0.95, 0.99))
        record("load", f"{kind}_ms_p50_p95_p99", f"{p50:.0f}/{p95:.0f}/{p99:.0f}")
