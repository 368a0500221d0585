"""Progress counts each byte of a file once, also across a 409 offset re-sync.

A killed publish's last bytes may still be in flight through a buffering link when the next
run opens its upload: the server then holds more of the blob than the open answer said, the
next run's PUT is refused with ``409 offset_mismatch`` after its body went out, and the
transport sends again from the server's offset. Bytes sent again below what was already
counted are not counted again (the line read "27.9 MiB of 16.0 MiB"). Real mlos-core.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from axon.transports.api import ApiTransport
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef
from tests.fixtures.mlos import Server, ServerFactory, manifest_for
from tests.fixtures.models import InstallModel, MakeModelDir
from tests.fixtures.proxy import ProxyFactory
from tests.helpers import run_publish, start_publish

MiB = 1024 * 1024
LINE = re.compile(r": (\d+)% \(([\d.]+ (?:B|KiB|MiB|GiB)) of ([\d.]+ (?:B|KiB|MiB|GiB))")


def _resyncs(server: Server, sha256: str) -> int:
    """PUTs of the blob the server refused with 409 (its log has one line per request,
    written once answered: waits a little for the first)."""
    deadline = time.monotonic() + 10
    while True:
        found = sum(1 for x in server.log().splitlines() if f'/blobs/{sha256}" 409 ' in x)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.slow
def test_bytes_in_flight_from_a_killed_run_are_not_counted_twice(
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
    mlos_server: ServerFactory,
    tcp_proxy: ProxyFactory,
) -> None:
    source = make_model_dir("resync", weights_size=16 * MiB)
    ref = install_model(source, "hf/resync@v1")
    weights = Path(source) / "model.safetensors"
    size, sha256 = weights.stat().st_size, hashlib.sha256(weights.read_bytes()).hexdigest()
    srv = mlos_server()
    proxy = tcp_proxy(srv.port)
    proxy.throttle(2 * MiB)  # the proxy holds what the killed run had sent, and passes it on
    first = start_publish(ref, proxy.url, interval=0.3)
    assert first.stderr is not None
    seen, deadline = "", time.monotonic() + 90
    while time.monotonic() < deadline:  # kill it a quarter of the way in
        line = first.stderr.readline()
        seen += line
        if (m := LINE.search(line)) and int(m.group(1)) >= 25:
            break
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert LINE.search(seen), seen

    # no drop_all(): the killed run's bytes still reach the server while this one opens
    proc = run_publish(ref, proxy.url, interval=0.3)
    assert proc.code == 0, proc.err
    assert _resyncs(srv, sha256) >= 1, srv.log()  # the case under test happened
    lines = [m.groups() for x in proc.err.splitlines() if (m := LINE.search(x))]
    whole = f"{size / MiB:.1f} MiB"
    assert lines and {of for _pct, _done, of in lines} == {whole}, proc.err
    for _pct, done, _of in lines:  # never more done than the whole
        value, unit = done.split()
        assert unit != "GiB" and (unit != "MiB" or float(value) <= size / MiB), proc.err
    final = [x for x in proc.err.splitlines() if f"{proxy.url}: done, " in x]
    assert final and f"{proxy.url}: done, {whole} in " in final[-1], proc.err


def _cut_put(url: str, upload_id: str, sha256: str, data: bytes, size: int) -> None:
    """Another client's PUT of the blob that ends after ``data`` (its connection closed):
    the server keeps those bytes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80)) as s:
        head = (
            f"PUT /v1/uploads/{upload_id}/blobs/{sha256} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nUpload-Offset: 0\r\nContent-Length: {size}\r\n\r\n"
        )
        s.sendall(head.encode("ascii") + data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(30)
        while s.recv(65536):  # the server's answer (or its close): it stored what came
            pass


def test_a_resync_below_what_was_sent_counts_each_byte_once(mlos_server: ServerFactory) -> None:
    """Deterministic, without a proxy: the upload is opened at offset 0, then another
    client stores the first 5 MiB; the session's PUT from 0 is refused (409 at 5 MiB) and
    sent again from there. Each byte is reported once: the file's size in all."""
    srv = mlos_server()
    data = os.urandom(12 * MiB)
    ref = ModelRef.parse("hf/resync@v1")
    manifest = Manifest(manifest_for(ref.id, {"weights.bin": data}), source="test")
    entry = manifest.files[0]
    source = srv.workdir / "weights.bin"
    source.write_bytes(data)
    lock, reported = threading.Lock(), [0]

    def on_bytes(n: int) -> None:
        with lock:
            reported[0] += n

    with ApiTransport(srv.url) as transport:
        session = transport.open(ref, manifest)
        assert session.offset(entry) == 0
        other = httpx.post(
            f"{srv.url}/v1/uploads",
            json={"model_id": "hf/other@v1", "manifest": manifest_for("hf/other@v1", {"w": data})},
        ).json()
        _cut_put(srv.url, other["upload_id"], entry.sha256, data[: 5 * MiB], entry.size)
        held = httpx.head(f"{srv.url}/v1/uploads/{other['upload_id']}/blobs/{entry.sha256}")
        assert held.headers["Upload-Offset"] == str(5 * MiB)
        session.send(entry, source, on_bytes)
        session.commit()
    assert _resyncs(srv, entry.sha256) == 1, srv.log()
    assert reported[0] == entry.size
