"""The fast body path of big uploads (mlos_core.http.server.BodyStream) over real sockets: the
connection hands a blob PUT's body over in batches of several MiB, and everything a client
sees stays as through ASGI: what arrived before a cut is kept to the byte, keep-alive and
pipelining work after a body read this way or refused before it was read, chunked bodies and
100-continue work. (A slow body's deadlines: tests/test_server_limits.py.)"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import httpx

from tests.fixtures.common import wait_for
from tests.fixtures.mlos import manifest_for

MiB = 1024 * 1024
BIG = os.urandom(13 * MiB + 12_345)  # three full batches and a short one


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open(srv: Any, model_id: str, files: dict[str, bytes]) -> str:
    r = httpx.post(
        f"{srv.url}/v1/uploads",
        json={"model_id": model_id, "manifest": manifest_for(model_id, files)},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    upload_id: str = r.json()["upload_id"]
    return upload_id


def _offset(srv: Any, path: str) -> int:
    return int(httpx.head(srv.url + path, timeout=10).headers["upload-offset"])


def _read_answer(fh: Any) -> tuple[int, bytes]:
    """The next answer (with a Content-Length body) from ``fh`` (``socket.makefile("rb")``):
    (status, body); answers sent back to back are read one at a time."""
    status = int(fh.readline()[9:12])
    length = 0
    while (line := fh.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, fh.read(length)


def test_cut_keeps_every_byte_that_arrived_then_resumes(mlos_server: Any) -> None:
    """A body cut after 6.5 MiB (one full batch handed over, the rest still being gathered)
    keeps exactly 6.5 MiB: the offset a resume starts from is exact."""
    srv = mlos_server()
    uid = _open(srv, "ns/cut@v1", {"w.bin": BIG})
    path = f"/v1/uploads/{uid}/blobs/{sha(BIG)}"
    sent = 6 * MiB + MiB // 2
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BIG)}\r\n\r\n".encode())
        s.sendall(BIG[:sent])  # then a clean close at once: every byte sent reaches the server
    wait_for(lambda: _offset(srv, path) == sent, timeout=20, what=f"offset {sent}")
    r = httpx.put(
        srv.url + path, content=BIG[sent:], headers={"Upload-Offset": str(sent)}, timeout=60
    )
    assert r.status_code == 201, r.text
    assert r.json()["offset"] == len(BIG)
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit", timeout=60).status_code == 200
    assert (srv.models_dir / "ns/cut/v1/w.bin").read_bytes() == BIG


def test_keep_alive_and_pipelining_after_big_bodies(mlos_server: Any) -> None:
    """On one connection: a blob PUT read by the fast path, a PUT refused before its body
    is read (wrong offset: 409), then two requests sent back to back with the next PUT; each
    gets its own answer."""
    srv = mlos_server()
    other = os.urandom(2 * MiB + 7)
    uid = _open(srv, "ns/keep@v1", {"w.bin": BIG, "o.bin": other})
    big_path = f"/v1/uploads/{uid}/blobs/{sha(BIG)}"
    other_path = f"/v1/uploads/{uid}/blobs/{sha(other)}"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as s:
        answers = s.makefile("rb")
        head = f"PUT {big_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BIG)}\r\n\r\n"
        s.sendall(head.encode() + BIG)
        status, body = _read_answer(answers)
        assert status == 201, body
        wrong = (
            f"PUT {other_path} HTTP/1.1\r\nHost: x\r\nUpload-Offset: 5\r\n"
            f"Content-Length: {len(other) - 5}\r\n\r\n"
        )
        s.sendall(wrong.encode() + other[5:])
        status, body = _read_answer(answers)
        assert status == 409, body
        right = f"PUT {other_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(other)}\r\n\r\n"
        s.sendall(right.encode() + other + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = _read_answer(answers)
        assert status == 201, body
        status, body = _read_answer(answers)
        assert status == 200, body
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit", timeout=60).status_code == 200
    assert (srv.models_dir / "ns/keep/v1/o.bin").read_bytes() == other


def test_chunked_body_and_100_continue(mlos_server: Any) -> None:
    """A chunked body (no Content-Length) and one that waits for 100 Continue."""
    srv = mlos_server()
    other = os.urandom(5 * MiB + 3)
    uid = _open(srv, "ns/chunked@v1", {"w.bin": BIG, "o.bin": other})

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(BIG), 1_000_003):
            yield BIG[i : i + 1_000_003]

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("PUT", f"/v1/uploads/{uid}/blobs/{sha(BIG)}", body=pieces(), encode_chunked=True)
    answer = conn.getresponse()
    assert answer.status == 201, answer.read()
    answer.read()
    conn.close()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as s:
        s.sendall(
            f"PUT /v1/uploads/{uid}/blobs/{sha(other)} HTTP/1.1\r\nHost: x\r\n"
            f"Expect: 100-continue\r\nContent-Length: {len(other)}\r\n\r\n".encode()
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 100 ")
        s.sendall(other)
        status, body = _read_answer(s.makefile("rb"))
        assert status == 201, body
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit", timeout=60).status_code == 200
    assert (srv.models_dir / "ns/chunked/v1/w.bin").read_bytes() == BIG


def test_one_shot_upload_of_a_big_file(mlos_server: Any) -> None:
    """multipart POST /models/upload reads its body the same way."""
    srv = mlos_server()
    files = {"w.bin": BIG, "config.json": b"{}"}
    manifest = manifest_for("ns/one@v1", files)
    r = httpx.post(
        f"{srv.url}/models/upload",
        data={"model_id": "ns/one@v1", "manifest": json.dumps(manifest)},
        files=[("model_files", (name, data)) for name, data in files.items()],
        timeout=60,
    )
    assert r.status_code in (200, 201), r.text
    assert (srv.models_dir / "ns/one/v1/w.bin").read_bytes() == BIG
