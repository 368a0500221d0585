"""The connection layer of a real mlos-core (mlos_core.http.server): request head size, header
and body deadlines, keep-alive, and the connection cap, over raw sockets on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.fixtures.mlos import Server, manifest_for

pytestmark = pytest.mark.slow


# ---- raw HTTP on a socket ----------------------------------------------------------------
def connect(srv: Server, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send(s: socket.socket, data: bytes) -> bool:
    """Send; False once the server has closed the connection."""
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def read_until_closed(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``timeout`` s); and when it closed
    (``inf`` when it did not), counted from the call."""
    started = time.monotonic()
    data = b""
    s.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, time.monotonic() - started
        if not chunk:
            return data, time.monotonic() - started
        data += chunk
    return data, float("inf")


def status(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw[9:12])


def error_code(raw: bytes) -> str:
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == "error", body
    code: str = body["code"]
    return code


def drip(s: socket.socket, data: bytes, every: float, until: float) -> tuple[bytes, float]:
    """Send ``data`` a byte every ``every`` s (at most ``until`` s), reading what comes back;
    return what the server sent and when it closed (``inf``: it did not)."""
    started = time.monotonic()
    got = b""
    s.settimeout(every)
    for byte in data:
        if time.monotonic() - started > until or not send(s, bytes([byte])):
            break
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got, time.monotonic() - started
        if not chunk:
            return got, time.monotonic() - started
        got += chunk
    rest, closed = read_until_closed(s, 5)
    return got + rest, time.monotonic() - started if closed != float("inf") else closed


def healthy(srv: Server) -> bool:
    return httpx.get(f"{srv.url}/health", timeout=5).status_code == 200


# ---- the request head --------------------------------------------------------------------
@pytest.mark.parametrize("pieces", [1, 64], ids=["one-write", "small-writes"])
def test_oversize_header_is_431_and_closed(mlos_server: Any, pieces: int) -> None:
    srv = mlos_server(max_header_size="16K")
    value = b"a" * (256 * 1024)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + value + b"\r\n\r\n"
    with connect(srv) as s:
        step = len(request) // pieces + 1
        for i in range(0, len(request), step):
            if not send(s, request[i : i + step]):
                break
            time.sleep(0.001 if pieces > 1 else 0)
        raw, closed = read_until_closed(s, 10)
    assert status(raw) == 431 and error_code(raw) == "header_too_large", raw[:300]
    assert b"--max-header-size" in raw and closed < 10
    assert healthy(srv)


def test_request_line_over_limit_is_414_and_many_headers_431(mlos_server: Any) -> None:
    srv = mlos_server(max_header_size="8K")
    with connect(srv) as s:
        send(s, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        raw, closed = read_until_closed(s, 10)
    assert status(raw) == 414 and error_code(raw) == "uri_too_long" and closed < 10
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))  # ~20 KiB of small headers
    with connect(srv) as s:
        send(s, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        raw, closed = read_until_closed(s, 10)
    assert status(raw) == 431 and closed < 10


def test_head_under_the_limit_and_pipelining_still_work(mlos_server: Any) -> None:
    srv = mlos_server(max_header_size="16K")
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 15000 + b"\r\n\r\n"
    with connect(srv) as s:
        for i in range(0, len(big), 1000):  # a head near the limit, in many reads
            send(s, big[i : i + 1000])
            time.sleep(0.002)
        raw = s.recv(65536)
        assert status(raw) == 200, raw[:200]
    # a body then two pipelined requests in one write: heads that begin mid-read
    body = json.dumps({"model_id": "ns/none@v1"}).encode() + b" " * 40000
    post = b"POST /models/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: %d\r\n\r\n" % len(body) + body
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
    with connect(srv) as s:
        send(s, post + get + get + last[:20])  # the last head ends in the next read
        time.sleep(0.3)
        send(s, last[20:])
        raw, closed = read_until_closed(s, 10)
    assert raw.count(b"HTTP/1.1 ") == 4 and raw.count(b"HTTP/1.1 200 OK") >= 3, raw[:2000]
    assert closed < 10


# ---- deadlines ---------------------------------------------------------------------------
def test_header_drip_is_closed_within_the_deadline(mlos_server: Any) -> None:
    srv = mlos_server(header_timeout=2)
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"s" * 200 + b"\r\n\r\n"
    with connect(srv) as s:
        raw, closed = drip(s, request, every=0.1, until=15)
    assert 1.5 < closed < 5, closed
    assert status(raw) == 408 and error_code(raw) == "header_timeout"
    # a connection that sends nothing is closed without an answer
    with connect(srv) as s:
        raw, closed = read_until_closed(s, 10)
    assert raw == b"" and 1.5 < closed < 5, (raw, closed)
    # after a request, blank lines start no request and do not keep the connection open
    with connect(srv) as s:
        send(s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert status(s.recv(65536)) == 200
        raw, closed = drip(s, b"\r\n" * 100, every=0.1, until=15)
    assert 1.5 < closed < 5 and raw == b"", (raw, closed)


def test_keep_alive_idle_is_closed(mlos_server: Any) -> None:
    srv = mlos_server(keep_alive_timeout=1, header_timeout=30)
    with connect(srv) as s:
        send(s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert status(s.recv(65536)) == 200
        raw, closed = read_until_closed(s, 10)
    assert raw == b"" and 0.5 < closed < 4, closed
    # the next request's head, once begun, has --header-timeout (30 s): not the keep-alive 1 s
    with connect(srv) as s:
        send(s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert status(s.recv(65536)) == 200
        raw, _closed = drip(s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", every=0.05, until=10)
    assert status(raw) == 200


def _open_blob(srv: Server, data: bytes) -> str:
    model_id = "ns/drip@v1"
    files = {"w.bin": data}
    body = {"model_id": model_id, "manifest": manifest_for(model_id, files)}
    r = httpx.post(f"{srv.url}/v1/uploads", json=body, timeout=10)
    assert r.status_code in (200, 201), r.text
    upload_id = r.json()["upload_id"]
    return f"/v1/uploads/{upload_id}/blobs/{hashlib.sha256(data).hexdigest()}"


def test_body_drip_is_cut_and_what_arrived_is_kept(mlos_server: Any) -> None:
    srv = mlos_server(body_timeout=2, min_body_rate=500, no_fsync=True)
    data = os.urandom(200_000)
    path = _open_blob(srv, data)
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    with connect(srv) as s:
        send(s, head + data[:1000])
        raw, closed = drip(s, data[1000:], every=0.05, until=30)  # 20 bytes/s
    # the body never stalls for --body-timeout, but runs under --min-body-rate: cut at ~2 s
    assert closed < 8, closed
    assert status(raw) == 408 and error_code(raw) == "body_timeout", raw[:300]
    assert b"--min-body-rate" in raw
    # what arrived is kept for a resume
    offset = int(httpx.head(srv.url + path, timeout=10).headers["upload-offset"])
    assert 1000 <= offset < len(data)
    r = httpx.put(
        srv.url + path, content=data[offset:], headers={"Upload-Offset": str(offset)}, timeout=30
    )
    assert r.status_code == 201, r.text


def test_slow_body_above_the_rate_is_not_cut(mlos_server: Any) -> None:
    """A body that takes longer than --body-timeout in all, but keeps up the rate, is fine."""
    srv = mlos_server(body_timeout=1, min_body_rate=500, no_fsync=True)
    data = os.urandom(40_000)
    path = _open_blob(srv, data)
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    with connect(srv) as s:
        send(s, head)
        for i in range(0, len(data), 1000):  # ~4 s at ~10 KB/s
            assert send(s, data[i : i + 1000])
            time.sleep(0.1)
        s.settimeout(10)
        raw = s.recv(65536)
    assert status(raw) == 201, raw[:300]


def test_body_clock_waits_while_the_server_is_not_reading(mlos_server: Any) -> None:
    """Requests waiting for the server (their blob locked by a stalled upload) are not cut for
    the time they waited: one waits for its 100-continue, one has sent its body and the server
    stopped reading it (backpressure)."""
    srv = mlos_server(body_timeout=2, min_body_rate=500, no_fsync=True)
    data = os.urandom(1_000_000)
    path = _open_blob(srv, data)
    kept = 100_000
    rest = (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nUpload-Offset: {kept}\r\n"
        f"Content-Length: {len(data) - kept}\r\n"
    ).encode()
    answers: dict[str, bytes] = {}

    def waiter(kind: str) -> None:
        with connect(srv, timeout=30) as s:
            if kind == "expect":
                send(s, rest + b"Expect: 100-continue\r\n\r\n")
                assert s.recv(65536).startswith(b"HTTP/1.1 100 ")
                send(s, data[kept:])
            else:
                send(s, rest + b"\r\n" + data[kept:])
            answers[kind] = s.recv(65536)

    with connect(srv) as holder:
        head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        send(holder, head.encode() + data[: kept - 30_000])  # holds the blob
        time.sleep(0.3)
        waiters = [threading.Thread(target=waiter, args=(k,)) for k in ("expect", "pushed")]
        for t in waiters:
            t.start()
        for i in range(kept - 30_000, kept, 1000):  # 3 s at 10 KB/s, then it stalls
            send(holder, data[i : i + 1000])
            time.sleep(0.1)
        raw, closed = read_until_closed(holder, 15)
        for t in waiters:
            t.join(timeout=30)
    # the waiters waited ~5 s, more than --body-timeout
    assert status(raw) == 408 and closed < 8
    for kind in ("expect", "pushed"):
        assert status(answers[kind]) == 201, (kind, answers[kind][:300])


# ---- the connection cap ------------------------------------------------------------------
def test_at_the_cap_a_new_connection_evicts_a_slow_one_and_health_gets_in(
    mlos_server: Any,
) -> None:
    srv = mlos_server(max_connections=8, header_timeout=60, log_level="warning")
    slow = []
    for _ in range(12):  # the last 4 each take the place of an older one
        slow.append(connect(srv))
        send(slow[-1], b"GET /health HTTP/1.1\r\nX-Slow: ")
        time.sleep(0.05)
    time.sleep(0.3)
    for _ in range(3):
        started = time.monotonic()
        assert healthy(srv)
        assert time.monotonic() - started < 2
    # the oldest slow heads made room, answered 503 too_many_connections
    for s in slow[:5]:
        raw, closed = read_until_closed(s, 5)
        assert status(raw) == 503 and error_code(raw) == "too_many_connections" and closed < 5
    for s in slow[5:]:  # the youngest are still there
        kept, _ = read_until_closed(s, 0.3)
        assert kept == b""
    for s in slow:
        s.close()
    # the drop log is rate-limited: one line for the first eviction, the rest held back
    time.sleep(0.5)
    assert srv.log().count("dropped to make room") == 1, srv.log()


def test_at_the_cap_with_busy_connections_only_health_is_answered(mlos_server: Any) -> None:
    """Bodies in progress cannot give way (with --min-body-rate 0 none is ever behind): a new
    connection past the cap is answered for GET /health only."""
    srv = mlos_server(max_connections=4, min_body_rate=0, body_timeout=60)
    busy = [connect(srv) for _ in range(4)]
    for s in busy:
        send(s, b"POST /models/register HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.3)
    r = httpx.get(f"{srv.url}/health", timeout=5)
    assert r.status_code == 200 and r.headers["connection"] == "close"
    r = httpx.get(f"{srv.url}/models", timeout=5)
    assert r.status_code == 503 and r.json()["code"] == "too_many_connections"
    assert r.headers["retry-after"] == "1"
    for s in busy:  # the busy connections were left alone
        assert send(s, b"}" + b" " * 98)
        s.settimeout(10)
        assert 400 <= status(s.recv(65536)) < 500  # answered: {} is no registration
        s.close()
