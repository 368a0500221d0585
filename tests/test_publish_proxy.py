"""The fault-injecting TCP proxy itself (tests/fixtures/proxy.py), against a loopback echo
server: forwards, cuts after N bytes, refuses, stalls and throttles."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.proxy import ProxyFactory


@pytest.fixture
def sink_server() -> Iterator[tuple[int, list[int]]]:
    """Counts the bytes each connection delivers, answers b"ok" + count on EOF."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    received: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            total = 0
            with conn:
                try:
                    while data := conn.recv(65536):
                        total += len(data)
                    conn.sendall(b"ok%d" % total)
                except OSError:
                    pass
            received.append(total)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], received
    stop.set()
    t.join(timeout=5)
    srv.close()


def _send(port: int, payload: bytes) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            return s.recv(100)
    except OSError:  # refused or reset: nothing came back
        return b""


def _wait(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():  # type: ignore[operator]
        time.sleep(0.02)


def test_forwards_bytes_both_ways(tcp_proxy: ProxyFactory, sink_server: tuple) -> None:
    port, _ = sink_server
    proxy = tcp_proxy(port)
    assert _send(proxy.port, b"x" * 300_000) == b"ok300000"
    assert proxy.bytes_up == 300_000
    assert proxy.bytes_down == len(b"ok300000")


def test_cut_after_n_bytes_then_normal(tcp_proxy: ProxyFactory, sink_server: tuple) -> None:
    port, received = sink_server
    proxy = tcp_proxy(port)
    proxy.cut_after(100_000)
    assert not _send(proxy.port, b"x" * 1_000_000).startswith(b"ok1000000")
    _wait(lambda: received)
    assert received[0] == 100_000
    assert proxy.cuts == 1
    assert _send(proxy.port, b"y" * 1000) == b"ok1000"  # only one connection was cut


def test_refuse_and_throttle(tcp_proxy: ProxyFactory, sink_server: tuple) -> None:
    port, _ = sink_server
    proxy = tcp_proxy(port)
    proxy.refuse = True
    assert _send(proxy.port, b"x" * 10) == b""
    proxy.refuse = False
    proxy.throttle(1_000_000)
    started = time.monotonic()
    assert _send(proxy.port, b"x" * 500_000) == b"ok500000"
    assert time.monotonic() - started >= 0.4


def test_stall_holds_traffic(tcp_proxy: ProxyFactory, sink_server: tuple) -> None:
    port, _ = sink_server
    proxy = tcp_proxy(port)
    proxy.stall(0.5)
    started = time.monotonic()
    assert _send(proxy.port, b"z" * 10) == b"ok10"
    assert time.monotonic() - started >= 0.4


def test_a_cut_goes_to_the_first_connection_that_passes_n(
    tcp_proxy: ProxyFactory, sink_server: tuple
) -> None:
    port, _ = sink_server
    proxy = tcp_proxy(port)
    proxy.cut_after(50_000, times=1)
    assert _send(proxy.port, b"s" * 1000) == b"ok1000"  # armed, but never reaches 50 kB
    assert not _send(proxy.port, b"b" * 200_000).startswith(b"ok")  # this one is cut
    assert _send(proxy.port, b"c" * 200_000) == b"ok200000"  # cuts used up
    assert proxy.cuts == 1


def test_only_loopback_upstreams() -> None:
    from tests.fixtures.proxy import TcpProxy

    with pytest.raises(ValueError):
        TcpProxy(80, upstream_host="192.0.2.1")
