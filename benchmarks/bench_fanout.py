"""Cluster fan-out: one 256 MiB model to 1, 3 and 10 ``mlos-core`` instances at once.

On one machine every instance shares the CPU, the disk and loopback, so each instance sits
behind its own bandwidth-limited proxy (:mod:`benchmarks.throttle`, 25 MB/s by default),
standing in for separate network links. Then publishing to N instances in parallel should
take about as long as publishing to one: the target is 10 instances <= 1.3x the 1-instance
time measured in the same run. axon's peak RSS must stay flat in N (it streams; it never
holds a file per instance).

Per instance count, fresh servers for each tool, so no instance already holds any blob:

* ``curl N instance(s)``: the baseline: one ``curl -F`` per instance, all at once, of the
  same files to the one-shot ``POST /models/upload``, each through its own proxy; timed until
  the last is done.
* ``axon N instance(s)``: ``axon publish REF --target fan`` (a cluster of the N, api access
  method), the whole command. Its ratio is to curl to the same N instances (the same bytes);
  its note gives the scaling, its time over axon's 1-instance time (the target's measure).
* unthrottled 1 and 3 instances (no proxy): what this machine does without link limits.

One run each (a 10-instance throttled row alone takes ~20 s at the default size).
Servers run with ``--no-fsync``: this measures the fan-out, not the disk (bench_ingest does).
``AXON_BENCH_FANOUT_MB`` (default 256; ``AXON_BENCH_QUICK=1``: 16) and
``AXON_BENCH_FANOUT_RATE`` (default 25MB) change the size and the per-link rate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from benchmarks.common import (
    MiB,
    Mlos,
    Row,
    axon_bin,
    drop_caches_if_possible,
    install_model,
    size_from_env,
    start_mlos,
    timed_run,
)
from benchmarks.throttle import Throttle, parse_rate

REF = "bench/fanout@v1"


class Servers:
    """``n`` fresh mlos-core processes on loopback, each optionally behind a throttled proxy."""

    def __init__(self, workdir: Path, n: int, throttle: Throttle | None, rate: float | None):
        self.root = workdir / f"servers-{time.monotonic_ns()}"
        self.servers: list[Mlos] = []
        self.urls: list[str] = []
        for i in range(n):
            flags = ("--no-fsync", "--instance-id", f"bench-{i}")
            server = start_mlos(self.root / f"m{i}", *flags, wait=False)
            self.servers.append(server)
            front = throttle.add(server.port, rate) if throttle is not None and rate else None
            self.urls.append(f"http://127.0.0.1:{front}" if front else server.url)
        for server in self.servers:
            server.wait_healthy()

    def close(self) -> None:
        for server in self.servers:
            server.proc.terminate()  # all at once; stop() then waits for each
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _axon_publish(env: dict[str, str], home: Path, servers: Servers) -> tuple[float, float]:
    clusters = {"fan": {"instances": servers.urls, "storage_type": "api"}}
    (home / "config.yaml").write_text(yaml.safe_dump({"clusters": clusters}))
    drop_caches_if_possible()
    cmd = [axon_bin(), "publish", REF, "--target", "fan", "-q", "--retries", "0"]
    cmd += ["--timeout", "120", "--max-parallel", str(len(servers.urls))]
    return timed_run(cmd, env=env)


def _curl_upload(cached: Path, servers: Servers) -> float:
    """The baseline: one ``curl -F`` per instance, all at once, of the same files to the
    one-shot ``POST /models/upload``; the seconds until the last is done."""
    cmd = ["curl", "-sS", "-f", "-o", "/dev/null", "-F", f"model_id={REF}"]
    cmd += ["-F", f"manifest=<{cached / 'manifest.yaml'}"]
    for path in sorted(p for p in cached.rglob("*") if p.is_file()):
        rel = path.relative_to(cached).as_posix()
        if rel == "manifest.yaml" or rel.startswith("."):
            continue
        cmd += ["-F", f"model_files=@{path};filename={rel}"]
    drop_caches_if_possible()
    started = time.perf_counter()
    procs = [subprocess.Popen([*cmd, f"{url}/models/upload"]) for url in servers.urls]
    failed = [url for url, p in zip(servers.urls, procs, strict=True) if p.wait() != 0]
    seconds = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"curl upload to {', '.join(failed)} failed (see curl's message)")
    return seconds


def _pair(
    workdir: Path,
    env: dict[str, str],
    cached: Path,
    n: int,
    links: tuple[Throttle, float] | None,
) -> tuple[float, tuple[float, float]]:
    """curl and axon to ``n`` instances (fresh servers for each): (curl s, (axon s, RSS))."""
    throttle, rate = links if links else (None, None)
    home = Path(env["AXON_HOME"])
    servers = Servers(workdir, n, throttle, rate)
    try:
        curl = _curl_upload(cached, servers)
    finally:
        servers.close()
    servers = Servers(workdir, n, throttle, rate)
    try:
        axon = _axon_publish(env, home, servers)
    finally:
        servers.close()
    return curl, axon


def _rows(
    label: str,
    total: int,
    pairs: dict[int, tuple[float, tuple[float, float]]],
    note: Callable[[int], str] = lambda n: "",
) -> list[Row]:
    """A curl row and an axon row (ratio to curl: the same bytes) per instance count; the
    axon row's note says how it scales (N instances vs 1, both axon, this run)."""
    rows = []
    one = pairs[1][1][0]
    for n, (curl, (axon, rss)) in pairs.items():
        rows.append(Row(f"curl {n} instance(s) {label}", curl, total * n, note="baseline"))
        notes = ["1 run"]
        if n > 1:
            target = ", target <= 1.3x" if n == 10 else ""
            notes += [f"{n} vs 1 instance (axon): {axon / one:.2f}x{target}", note(n)]
        rows.append(
            Row(
                f"axon {n} instance(s) {label}",
                axon,
                total * n,
                baseline=f"curl {n} instance(s)",
                baseline_seconds=curl,
                peak_rss_mb=rss,
                note="; ".join(part for part in notes if part),
            )
        )
    return rows


def run(workdir: Path) -> list[Row]:
    size = size_from_env("AXON_BENCH_FANOUT_MB", 256)
    rate_text = os.environ.get("AXON_BENCH_FANOUT_RATE", "25MB")
    rate = parse_rate(rate_text)
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.rglob("*") if p.is_file())
    if shutil.which("curl") is None:
        raise RuntimeError("the fan-out benchmark needs curl (its baseline): apt-get install curl")
    # unthrottled first: what this machine moves at most, to judge the throttled figures
    free = {n: _pair(workdir, env, cached, n, None) for n in (1, 3)}
    capacity = total * 3 / free[3][1][0] / MiB
    with Throttle() as throttle:
        links = {n: _pair(workdir, env, cached, n, (throttle, rate)) for n in (1, 3, 10)}

    def need(n: int) -> str:
        return f"links need {n * rate / MiB:.0f} MiB/s, machine did {capacity:.0f} unthrottled"

    return _rows(f"@{rate_text}/s", total, links, need) + _rows("unthrottled", total, free)
