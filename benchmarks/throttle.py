"""A bandwidth-limited loopback TCP proxy: one stands in for one instance's network link.

On one machine every instance shares the CPU, the disk and the loopback device, so a fan-out
benchmark without limits measures the machine, not the fan-out. Each instance sits behind
its own proxy with its own rate (e.g. 25 MB/s), like separate links to separate hosts.

All proxies of a process share one asyncio loop in one thread (less GIL contention than a
thread per proxy). Each proxy paces both directions with a token bucket shared by all its
connections, so parallel connections to one instance still share that instance's link.

    with Throttle() as throttle:
        port = throttle.add(target_port=8080, rate=25e6)   # bytes/s
        ... http://127.0.0.1:{port} ...

Standalone: ``python -m benchmarks.throttle --rate 25MB TARGET_PORT [TARGET_PORT ...]``
prints one ``listen_port -> target_port`` line per proxy and runs until Ctrl-C.
Only ever binds and connects to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any

HOST = "127.0.0.1"
CHUNK = 256 * 1024
BURST_SECONDS = 0.05  # how far a link may run ahead of its rate after being idle


class Bucket:
    """Paces bytes to ``rate`` per second (one direction of one link)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next_free = 0.0

    async def take(self, nbytes: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(self.next_free, now - BURST_SECONDS)
        self.next_free = start + nbytes / self.rate
        delay = self.next_free - now
        if delay > 0:
            await asyncio.sleep(delay)


class Link:
    """One proxy: listens on a free loopback port, forwards to ``target_port``."""

    def __init__(self, target_port: int, rate: float | None) -> None:
        self.target_port = target_port
        self.up = Bucket(rate) if rate else None  # client -> instance
        self.down = Bucket(rate) if rate else None  # instance -> client
        self.server: asyncio.Server | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, HOST, 0)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pump(client_r, target_w, self.up, "up"),
            self._pump(target_r, client_w, self.down, "down"),
            return_exceptions=True,
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        bucket: Bucket | None,
        direction: str,
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if bucket is not None:
                    await bucket.take(len(data))
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
                else:
                    writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)


async def _cancel_connections() -> None:
    """End the connections still open (their server may have been stopped under them), so
    closing the loop does not leave tasks pending ("Task was destroyed but it is pending")."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Throttle:
    """Many proxies on one event loop running in a daemon thread. A context manager."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.links: list[Link] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=10)

    def add(self, target_port: int, rate: float | None) -> int:
        """A new proxy to ``127.0.0.1:target_port`` at ``rate`` bytes/s (None: unlimited);
        returns the port it listens on."""
        link = Link(target_port, rate)
        self._call(link.start())
        self.links.append(link)
        return link.port

    def close(self) -> None:
        for link in self.links:
            with contextlib.suppress(Exception):
                self._call(link.stop())
        with contextlib.suppress(Exception):
            self._call(_cancel_connections())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> Throttle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_rate(text: str) -> float:
    """``25MB`` -> 25e6, ``10MiB`` -> 10*2**20, ``1e6`` -> 1e6 (bytes per second)."""
    units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1e3, "mb": 1e6, "gb": 1e9}
    low = text.strip().lower().removesuffix("/s")
    for unit, factor in units.items():
        if low.endswith(unit):
            return float(low[: -len(unit)]) * factor
    return float(low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throttle")
    parser.add_argument("--rate", default="25MB", help="per proxy, e.g. 25MB, 10MiB")
    parser.add_argument("ports", nargs="+", type=int, help="target ports on 127.0.0.1")
    args = parser.parse_args(argv)
    rate = parse_rate(args.rate)
    with Throttle() as throttle:
        for port in args.ports:
            print(f"{throttle.add(port, rate)} -> {port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
