"""Relay: one 256 MiB model to 1, 3 and 10 ``mlos-core`` instances over a slow uplink, the
instances pulling from each other, against today's direct push in the same run.

The publisher's uplink is one 25 MB/s link shared by all its connections: every instance's
address in the publisher's config is a port of one throttling proxy (:mod:`benchmarks.
throttle`'s token bucket, one for the whole uplink, not one per instance), while the
instances reach each other directly (each is the others' ``--peer`` at its own address, the
one it advertises). So a direct push to N instances moves N copies through 25 MB/s; a relay
moves one, and the instances spread it among themselves on loopback.

Per instance count and mode, fresh servers (no instance holds any blob before):

* ``direct N``: ``axon publish REF --target fan --no-relay`` (today: every byte from here).
* ``relay N``: ``axon publish REF --target fan --relay`` (one seed, fanout 3). Its ratio is
  to the direct push to the same N; its note gives the scaling (relay N vs relay 1, the
  target's measure: 10 instances <= 1.3x) and the bytes over the uplink / model size
  (target <= 1.05 for any N).
* ``promote 1 -> 3``: ``axon promote`` from a one-instance cluster holding the model to three
  fresh ones; the bytes over the uplink (target: no model bytes, only control traffic).

Peak RSS: the largest VmHWM of any instance while it served and pulled (target < 150 MB),
read from /proc before it stops. One run each (``AXON_BENCH_RELAY_MB``, default 256;
``AXON_BENCH_QUICK=1``: 16; ``AXON_BENCH_RELAY_RATE``, default 25MB;
``AXON_BENCH_RELAY_FANOUT``, default 3; ``AXON_BENCH_RELAY_ONLY=1`` skips the direct pushes,
to try settings). Servers run with
``--no-fsync``: this measures the relay, not the disk.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import yaml

from benchmarks.common import (
    MiB,
    Mlos,
    Row,
    Target,
    axon_bin,
    drop_caches_if_possible,
    free_port,
    install_model,
    size_from_env,
    timed_run,
)
from benchmarks.throttle import Bucket, Link, Throttle, parse_rate

REF = "bench/relay@v1"


class Uplink:
    """The publisher's one uplink: a proxy port per instance, all paced by one bucket per
    direction (so parallel connections share the rate, as on one real link)."""

    def __init__(self, throttle: Throttle, rate: float) -> None:
        self.throttle = throttle
        self.up, self.down = Bucket(rate), Bucket(rate)
        self.links: list[Link] = []

    def port_for(self, target_port: int) -> int:
        link = Link(target_port, None)
        link.up, link.down = self.up, self.down
        asyncio.run_coroutine_threadsafe(link.start(), self.throttle.loop).result(timeout=10)
        self.throttle.links.append(link)
        self.links.append(link)
        return link.port

    @property
    def bytes_up(self) -> int:
        return sum(link.bytes_up for link in self.links)

    @property
    def bytes_down(self) -> int:
        return sum(link.bytes_down for link in self.links)


class Cluster:
    """``n`` fresh peered instances; the publisher reaches them through ``uplink``."""

    def __init__(
        self, root: Path, n: int, uplink: Uplink, name: str, sources: Cluster | None = None
    ) -> None:
        self.root = root / f"{name}-{time.monotonic_ns()}"
        self.ports = [free_port() for _ in range(n)]
        self.servers: list[Mlos] = []
        # promotion: the members of ``sources`` are peers too
        extra = [a for p in (sources.ports if sources else []) for a in ("--peer", _url(p))]
        for i, port in enumerate(self.ports):
            peers = [a for j, p in enumerate(self.ports) if j != i for a in ("--peer", _url(p))]
            flags = ("--no-fsync", "--instance-id", f"{name}-{i}", *peers, *extra)
            self.servers.append(_start(self.root / f"m{i}", port, flags))
        for server in self.servers:
            server.wait_healthy()
        self.urls = [f"http://127.0.0.1:{uplink.port_for(p)}" for p in self.ports]

    def peak_rss_mb(self) -> float:
        return max(s.peak_rss_mb() for s in self.servers)

    def close(self) -> None:
        for server in self.servers:
            server.proc.terminate()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _start(models: Path, port: int, flags: tuple[str, ...]) -> Mlos:
    """start_mlos on a port chosen beforehand (the others' --peer names it)."""
    import subprocess
    import sys

    models.mkdir(parents=True, exist_ok=True)
    log = models.with_name(f"{models.name}.log")
    cmd = [sys.executable, "-m", "mlos_core", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--models-dir", str(models), "--log-level", "warning", *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return Mlos(proc, port, models, log)


FANOUT = int(os.environ.get("AXON_BENCH_RELAY_FANOUT", "3"))
RELAY_ONLY = os.environ.get("AXON_BENCH_RELAY_ONLY", "") not in ("", "0")


def _config(home: Path, clusters: dict[str, list[str]]) -> None:
    relay = {"fanout": FANOUT}
    body = {
        name: {"instances": urls, "storage_type": "api", "relay": relay}
        for name, urls in clusters.items()
    }
    (home / "config.yaml").write_text(yaml.safe_dump({"clusters": body}))


def _publish(env: dict[str, str], n: int, relay: bool) -> tuple[float, float]:
    drop_caches_if_possible()
    cmd = [axon_bin(), "publish", REF, "--target", "fan", "-q", "--retries", "0"]
    cmd += ["--timeout", "120", "--max-parallel", str(n), "--relay" if relay else "--no-relay"]
    return timed_run(cmd, env=env)


class Run:
    """One measured publish: seconds, bytes over the uplink, peak RSS of the instances."""

    def __init__(self, seconds: float, uplink_bytes: int, rss: float) -> None:
        self.seconds, self.uplink_bytes, self.rss = seconds, uplink_bytes, rss


def _one(
    workdir: Path, env: dict[str, str], throttle: Throttle, rate: float, n: int, relay: bool
) -> Run:
    uplink = Uplink(throttle, rate)
    cluster = Cluster(workdir, n, uplink, "fan")
    try:
        _config(Path(env["AXON_HOME"]), {"fan": cluster.urls})
        seconds, _axon_rss = _publish(env, n, relay)
        return Run(seconds, uplink.bytes_up, cluster.peak_rss_mb())
    finally:
        cluster.close()


def _promote(workdir: Path, env: dict[str, str], throttle: Throttle, rate: float) -> Run:
    """A one-instance staging cluster gets the model; three fresh production instances (which
    take staging's member as a peer) are promoted to it."""
    uplink = Uplink(throttle, rate)
    staging = Cluster(workdir, 1, uplink, "staging")
    prod = Cluster(workdir, 3, uplink, "prod", sources=staging)
    try:
        _config(Path(env["AXON_HOME"]), {"staging": staging.urls, "prod": prod.urls})
        cmd = [axon_bin(), "publish", REF, "--target", "staging", "-q", "--retries", "0"]
        timed_run([*cmd, "--timeout", "120"], env=env)
        before = uplink.bytes_up + uplink.bytes_down
        cmd = [axon_bin(), "promote", REF, "--from", "staging", "--to", "prod", "-q"]
        seconds, _rss = timed_run([*cmd, "--timeout", "120"], env=env)
        moved = uplink.bytes_up + uplink.bytes_down - before
        return Run(seconds, moved, max(staging.peak_rss_mb(), prod.peak_rss_mb()))
    finally:
        staging.close()
        prod.close()


def run(workdir: Path) -> list[Row]:
    size = size_from_env("AXON_BENCH_RELAY_MB", 256)
    rate_text = os.environ.get("AXON_BENCH_RELAY_RATE", "25MB")
    rate = parse_rate(rate_text)
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.rglob("*") if p.is_file() and p.name != ".axon")
    rows: list[Row] = []
    with Throttle() as throttle:
        runs = {
            (n, relay): _one(workdir, env, throttle, rate, n, relay)
            for n in (1, 3, 10)
            for relay in (False, True)
            if relay or not RELAY_ONLY
        }
        promotion = _promote(workdir, env, throttle, rate)
    one = runs[(1, True)].seconds
    for n in (1, 3, 10):
        relayed = runs[(n, True)]
        direct = runs.get((n, False), relayed)  # AXON_BENCH_RELAY_ONLY: no direct pushes
        rows.append(
            Row(
                f"direct push {n} instance(s) @{rate_text}/s",
                direct.seconds,
                total * n,
                peak_rss_mb=direct.rss,
                note=f"1 run; uplink bytes / model size {direct.uplink_bytes / total:.2f}",
            )
        )
        scaling = relayed.seconds / one
        notes = [
            "1 run",
            f"{n} vs 1 instance (relay): {scaling:.2f}x" + (", target <= 1.3x" if n == 10 else ""),
            f"uplink bytes / model size {relayed.uplink_bytes / total:.3f} (target <= 1.05)",
            "RSS: the largest instance's",
        ]
        rows.append(
            Row(
                f"relay {n} instance(s) @{rate_text}/s",
                relayed.seconds,
                total * n,
                baseline=f"direct push {n}",
                baseline_seconds=direct.seconds,
                peak_rss_mb=relayed.rss,
                note="; ".join(notes),
                target=Target(150, "rss", strict=True),
            )
        )
    rows.append(
        Row(
            "relay 10 vs relay 1 instance (time ratio)",
            runs[(10, True)].seconds,
            total * 10,
            baseline="relay 1",
            baseline_seconds=one,
            note="the scaling target",
            target=Target(1.3),
        )
    )
    rows.append(
        Row(
            "promote 1 -> 3 instances",
            promotion.seconds,
            total * 3,
            peak_rss_mb=promotion.rss,
            note=f"bytes over the uplink: {promotion.uplink_bytes} (control only; model "
            f"{total}); 1 run",
        )
    )
    for (n, relay), r in sorted(runs.items()):
        kind = "relay" if relay else "direct"
        print(
            f"  {kind:6} {n:2} instance(s): {r.seconds:6.2f} s, uplink "
            f"{r.uplink_bytes / MiB:8.1f} MiB = {r.uplink_bytes / total:.3f} x model, "
            f"instance peak RSS {r.rss:.0f} MB"
        )
    print(f"  promote 1 -> 3: {promotion.seconds:.2f} s, uplink {promotion.uplink_bytes} bytes")
    return rows
