"""A bare ASGI server as a baseline: uvicorn (httptools + uvloop, as ``mlos-core serve``) and
a minimal app that writes a ``PUT`` body to a file, with no hashing, no fsync and no
framework; the answer is 201. It measures what the ASGI body path itself costs: if it is
slower than the disk or sha256, that path is the limit of any ASGI server here.

``python -m benchmarks.asgi_sink --port PORT --dir DIR``; ``PUT /name`` stores ``DIR/name``.
:func:`start_asgi_sink` runs it as a child on a free loopback port.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import free_port


def make_app(root: Path) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        name = os.path.basename(scope["path"]) or "body"
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                more = message.get("more_body", False)
        finally:
            os.close(fd)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


@dataclass
class AsgiSink:
    proc: subprocess.Popen[bytes]
    port: int

    def url_of(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_asgi_sink(root: Path, timeout: float = 30.0) -> AsgiSink:
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.asgi_sink", "--port", str(port), "--dir", str(root)]
    repo = Path(__file__).resolve().parent.parent  # where ``-m benchmarks...`` is found
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return AsgiSink(proc, port)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the bare ASGI server did not start ({' '.join(cmd)})")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.dir),
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
