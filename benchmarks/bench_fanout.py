"""Cluster fan-out: one 256 MiB model to 1, 3 and 10 ``mlos-core`` instances at once.

On one machine every instance shares the CPU, the disk and loopback, so each instance sits
behind its own bandwidth-limited proxy (:mod:`benchmarks.throttle`, 25 MB/s by default),
standing in for separate network links. Then publishing to N instances in parallel should
take about as long as publishing to one: the target is 10 instances <= 1.3x the 1-instance
time measured in the same run. axon's peak RSS must stay flat in N (it streams; it never
holds a file per instance).

Rows (fresh servers for every row, so no instance already holds any blob):

* ``curl 1 instance``: the baseline tool: ``curl -F`` of the same files to the one-shot
  ``POST /models/upload`` through the same kind of proxy.
* ``axon 1/3/10 instances``: ``axon publish REF --target fanN`` (api access method), the
  whole command; ratio to the 1-instance axon time.
* unthrottled 1 and 3 instances (no proxy): what this machine does without link limits.

Servers run with ``--no-fsync``: this measures the fan-out, not the disk (bench_ingest does).
``AXON_BENCH_FANOUT_MB`` (default 256) and ``AXON_BENCH_FANOUT_RATE`` (default 25MB) change
the size and the per-link rate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.bench_publish_fs import axon_bin, install_model
from benchmarks.common import MiB, Row, drop_caches_if_possible, timed_run
from benchmarks.throttle import Throttle, parse_rate

REF = "bench/fanout@v1"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Servers:
    """``n`` fresh mlos-core processes on loopback, each optionally behind a throttled proxy."""

    def __init__(self, workdir: Path, n: int, throttle: Throttle | None, rate: float | None):
        self.root = workdir / f"servers-{time.monotonic_ns()}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        direct: list[str] = []
        for i in range(n):
            port = _free_port()
            models = self.root / f"m{i}"
            models.mkdir(parents=True)
            cmd = [sys.executable, "-m", "mlos_core", "serve", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--models-dir", str(models), "--no-fsync"]
            cmd += ["--log-level", "warning", "--instance-id", f"bench-{i}"]
            with open(self.root / f"m{i}.log", "wb") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            direct.append(f"http://127.0.0.1:{port}")
            front = throttle.add(port, rate) if throttle is not None and rate else port
            self.urls.append(f"http://127.0.0.1:{front}")
        for url in direct:
            _wait_healthy(url)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_healthy(url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"mlos-core at {url} did not start")


def _axon_publish(env: dict[str, str], home: Path, servers: Servers) -> tuple[float, float]:
    clusters = {"fan": {"instances": servers.urls, "storage_type": "api"}}
    (home / "config.yaml").write_text(yaml.safe_dump({"clusters": clusters}))
    drop_caches_if_possible()
    cmd = [axon_bin(), "publish", REF, "--target", "fan", "-q", "--retries", "0"]
    cmd += ["--timeout", "120", "--max-parallel", str(len(servers.urls))]
    return timed_run(cmd, env=env)


def _curl_upload(cached: Path, url: str) -> float:
    cmd = ["curl", "-sS", "-f", "-o", "/dev/null", "-F", "model_id=bench/curl@v1"]
    cmd += ["-F", f"manifest=<{cached / 'manifest.yaml'}"]
    for path in sorted(p for p in cached.rglob("*") if p.is_file()):
        rel = path.relative_to(cached).as_posix()
        if rel == "manifest.yaml" or rel.startswith("."):
            continue
        cmd += ["-F", f"model_files=@{path};filename={rel}"]
    drop_caches_if_possible()
    seconds, _rss = timed_run([*cmd, f"{url}/models/upload"])
    return seconds


def run(workdir: Path) -> list[Row]:
    size = int(os.environ.get("AXON_BENCH_FANOUT_MB", "256")) * MiB
    rate_text = os.environ.get("AXON_BENCH_FANOUT_RATE", "25MB")
    rate = parse_rate(rate_text)
    env, cached = install_model(workdir, size, REF)
    home = Path(env["AXON_HOME"])
    total = sum(p.stat().st_size for p in cached.rglob("*") if p.is_file())
    have_curl = shutil.which("curl") is not None
    # unthrottled first: what this machine moves at most, to judge the throttled figures
    free = _unthrottled(workdir, env, home, cached, total, have_curl)
    capacity = free[-1].mb_per_s or 0.0
    rows: list[Row] = []
    with Throttle() as throttle:
        curl_1 = None
        if have_curl:
            servers = Servers(workdir, 1, throttle, rate)
            try:
                curl_1 = _curl_upload(cached, servers.urls[0])
            finally:
                servers.close()
            rows.append(Row(f"curl 1 instance @{rate_text}/s", curl_1, total))
        one = None
        for n in (1, 3, 10):
            servers = Servers(workdir, n, throttle, rate)
            try:
                seconds, rss = _axon_publish(env, home, servers)
            finally:
                servers.close()
            if n == 1:
                one = seconds
                base, base_s = (f"curl 1 @{rate_text}/s", curl_1) if curl_1 else (None, None)
            else:
                base, base_s = "axon 1 instance", one
            note = ""
            if n > 1:
                need = n * rate / MiB
                note = f"links need {need:.0f} MiB/s, machine did {capacity:.0f} unthrottled"
            rows.append(
                Row(
                    f"axon {n} instance(s) @{rate_text}/s",
                    seconds,
                    total * n,
                    baseline=base,
                    baseline_seconds=base_s,
                    peak_rss_mb=rss,
                    note=("target <= 1.3x; " if n == 10 else "") + note,
                )
            )
    return rows + free


def _unthrottled(
    workdir: Path, env: dict[str, str], home: Path, cached: Path, total: int, have_curl: bool
) -> list[Row]:
    rows: list[Row] = []
    curl_1 = None
    if have_curl:
        servers = Servers(workdir, 1, None, None)
        try:
            curl_1 = _curl_upload(cached, servers.urls[0])
        finally:
            servers.close()
        rows.append(Row("curl 1 instance unthrottled", curl_1, total))
    one = None
    for n in (1, 3):
        servers = Servers(workdir, n, None, None)
        try:
            seconds, rss = _axon_publish(env, home, servers)
        finally:
            servers.close()
        base, base_s = ("curl 1 unthrottled", curl_1) if n == 1 else ("axon 1 unthrottled", one)
        one = seconds if n == 1 else one
        rows.append(
            Row(
                f"axon {n} instance(s) unthrottled",
                seconds,
                total * n,
                baseline=base if base_s else None,
                baseline_seconds=base_s,
                peak_rss_mb=rss,
            )
        )
    return rows
