"""Slow and endless clients against a real mlos-core started under ``ulimit -n 1024``.

- slowloris: 1,200 connections (more than 1,024 open files allow), each sending its request
  head a byte a second and coming back as soon as it is dropped;
- header flood: connections sending one endless header as fast as they can, over and over.

During each attack a prober opens a new connection for ``GET /health`` every 0.2 s (as a load
balancer does): every probe must be answered, quickly. Recorded: the connections the server
held, the probes' latency (p50/max), the server's RSS before/after and its CPU use.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from benchmarks.common import percentile

from tests.fixtures.mlos import Server, ServerFactory
from tests.stress.figures import record, scale

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NOFILE = 1024  # the server's ulimit -n: the situation of the report
SLOWLORIS = 1200  # more connections than ulimit -n 1024 allows
SLOWLORIS_SECONDS = scale(22, 60)  # two header deadlines (--header-timeout 10) and more
FLOODERS = scale(4, 8)
FLOOD_SECONDS = scale(10, 30)
MiB = 2**20


@dataclass
class Watch:
    """What the server does while attacked: /health probes, connections held, RSS, CPU."""

    srv: Server
    latency: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.proc = psutil.Process(self.srv.pid)
        self.rss_before = self.proc.memory_info().rss
        self.rss_peak = self.rss_before
        self.cpu_before = sum(self.proc.cpu_times()[:2])
        self.idle_latency: list[float] = []
        for _ in range(10):  # the server unattacked, for comparison
            started = time.perf_counter()
            _get_health(self.srv.port)
            self.idle_latency.append(time.perf_counter() - started)
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._probe), threading.Thread(target=self._look)]
        for t in self._threads:
            t.start()

    def _probe(self) -> None:
        while not self.stop.wait(0.2):
            started = time.perf_counter()
            try:
                answer = _get_health(self.srv.port)
                if not answer.startswith(b"HTTP/1.1 200 "):
                    self.failures.append(answer[:200].decode("latin-1"))
            except OSError as exc:
                self.failures.append(repr(exc))
            self.latency.append(time.perf_counter() - started)

    def _look(self) -> None:
        while not self.stop.wait(0.5):
            conns = self.proc.net_connections(kind="tcp")
            self.held.append(sum(1 for c in conns if c.laddr and c.laddr.port == self.srv.port))
            self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for t in self._threads:
            t.join()
        wall = time.monotonic() - self.started
        cpu = sum(self.proc.cpu_times()[:2]) - self.cpu_before
        time.sleep(1)
        rss_after = self.proc.memory_info().rss
        return {
            "health_probes": len(self.latency),
            "health_failures": len(self.failures),
            "health_ms_p50_max": f"{percentile(self.latency, 0.5) * 1000:.0f}/"
            f"{max(self.latency, default=0) * 1000:.0f}",
            "health_ms_p50_unattacked": f"{percentile(self.idle_latency, 0.5) * 1000:.1f}",
            "connections_held_max": max(self.held, default=0) - 1,  # minus the listener
            "rss_mib_before_peak_after": f"{self.rss_before / MiB:.0f}/{self.rss_peak / MiB:.0f}/"
            f"{rss_after / MiB:.0f}",
            "cpu_pct": round(100 * cpu / wall),
            "_rss_growth": rss_after - self.rss_before,
        }


def _get_health(port: int) -> bytes:
    """GET /health on a new connection, as a load balancer's probe does (raw: the latency
    measured is the server's, not an HTTP client's set-up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def _raise_own_nofile(need: int) -> int:
    """This test process needs ``need`` sockets: raise its soft limit; return what it has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        soft = min(hard, need)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def _dropped_lines(srv: Server) -> int:
    return sum("mlos_core.http.server" in line for line in srv.log().splitlines())


def _serve(mlos_server: ServerFactory) -> Server:
    srv = mlos_server(nofile=NOFILE, no_fsync=True, log_level="warning")
    assert psutil.Process(srv.pid).rlimit(psutil.RLIMIT_NOFILE) == (NOFILE, NOFILE)
    return srv


def test_slowloris_cannot_lock_out_health(mlos_server: ServerFactory) -> None:
    srv = _serve(mlos_server)
    count = min(SLOWLORIS, _raise_own_nofile(SLOWLORIS + 200) - 200)
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Slow: "
    socks: list[socket.socket | None] = [None] * count
    reconnects = 0

    def attach(i: int) -> None:
        nonlocal reconnects
        old = socks[i]
        if old is not None:
            old.close()
            reconnects += 1
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
            s.sendall(head)
            s.setblocking(False)
            socks[i] = s
        except OSError:
            socks[i] = None

    watch = Watch(srv)
    for i in range(count):
        attach(i)
    until = time.monotonic() + SLOWLORIS_SECONDS
    while time.monotonic() < until:
        tick = time.monotonic()
        for i, s in enumerate(socks):
            try:
                if s is None or s.send(b"a") != 1:
                    raise ConnectionError
            except OSError:
                attach(i)  # dropped: come back at once, as slowloris does
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    figures = watch.finish()
    alive = sum(s is not None for s in socks)
    for s in socks:
        if s is not None:
            s.close()
    assert figures["health_failures"] == 0, watch.failures[:5]
    assert max(watch.latency) < 5, figures
    assert figures["connections_held_max"] < NOFILE - 64, figures
    assert figures["_rss_growth"] < 64 * MiB, figures
    assert _dropped_lines(srv) < 20 * (SLOWLORIS_SECONDS / 10 + 1), "drop log not rate-limited"
    for key, value in figures.items():
        if not key.startswith("_"):
            record("slow_clients", f"slowloris_{key}", value)
    record("slow_clients", "slowloris_connections", count)
    record("slow_clients", "slowloris_seconds", SLOWLORIS_SECONDS)
    record("slow_clients", "slowloris_dropped_and_back", reconnects)
    record("slow_clients", "slowloris_attackers_alive_at_end", alive)
    record("slow_clients", "slowloris_log_lines", _dropped_lines(srv))


def test_endless_header_flood_is_cut_at_the_limit(mlos_server: ServerFactory) -> None:
    srv = _serve(mlos_server)
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: "
    block = b"a" * 65536
    until = time.monotonic() + FLOOD_SECONDS
    sent_per_conn: list[int] = []
    lock = threading.Lock()

    def flood() -> None:
        while time.monotonic() < until:
            sent = 0
            try:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                    s.sendall(head)
                    while time.monotonic() < until:
                        s.sendall(block)
                        sent += len(block)
            except OSError:
                pass  # cut by the server: the next connection
            if time.monotonic() < until:
                with lock:
                    sent_per_conn.append(sent)

    watch = Watch(srv)
    threads = [threading.Thread(target=flood) for _ in range(FLOODERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    figures = watch.finish()
    assert figures["health_failures"] == 0, watch.failures[:5]
    assert max(watch.latency) < 5, figures
    assert figures["_rss_growth"] < 64 * MiB, figures
    assert sent_per_conn, "the server never cut a flooding connection"
    # what the kernel buffers on loopback aside, a connection is cut after --max-header-size
    assert percentile([float(n) for n in sent_per_conn], 0.5) < 16 * MiB
    assert _dropped_lines(srv) < 20 * (FLOOD_SECONDS / 10 + 1), "drop log not rate-limited"
    for key, value in figures.items():
        if not key.startswith("_"):
            record("slow_clients", f"header_flood_{key}", value)
    record("slow_clients", "header_flood_connections", len(sent_per_conn))
    record("slow_clients", "header_flood_seconds", FLOOD_SECONDS)
    record(
        "slow_clients",
        "header_flood_mib_sent_per_conn_p50_max",
        f"{percentile([float(n) for n in sent_per_conn], 0.5) / MiB:.1f}/"
        f"{max(sent_per_conn) / MiB:.1f}",
    )
    record("slow_clients", "header_flood_log_lines", _dropped_lines(srv))
