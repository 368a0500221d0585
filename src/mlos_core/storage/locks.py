"""Per-key locks (one per model id, one per blob) that are forgotten when unused, so a
long-running server does not keep a lock for every model or blob it ever saw.

A key is held by a coroutine (:meth:`KeyedLocks.hold`) or by a worker thread
(:meth:`KeyedLocks.hold_blocking`: the S3 sync publishes from one) alike, first come first
served: a release hands the key straight to the next waiter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():  # a waiter cancelled meanwhile gives the key back itself
        future.set_result(None)


class KeyedLocks:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        # a key is held while it is in here; its queue wakes the waiters, oldest first
        self._held: dict[str, collections.deque[Callable[[], None]]] = {}

    def _take(self, key: str, wake: Callable[[], None]) -> bool:
        """True: ``key`` is ours now; False: queued, ``wake`` hands it over later."""
        with self._mutex:
            queue = self._held.get(key)
            if queue is None:
                self._held[key] = collections.deque()
                return True
            queue.append(wake)
            return False

    def _release(self, key: str) -> None:
        with self._mutex:
            queue = self._held[key]
            if queue:
                queue.popleft()()  # the next waiter holds it from now on
            else:
                del self._held[key]

    def _withdraw(self, key: str, wake: Callable[[], None]) -> bool:
        """A waiter gives up; False when the key was already handed to it."""
        with self._mutex:
            queue = self._held.get(key)
            if queue is not None and wake in queue:
                queue.remove(wake)
                return True
            return False

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_grant, granted)

        if not self._take(key, wake):
            try:
                await granted
            except BaseException:  # cancelled while waiting
                if not self._withdraw(key, wake):
                    self._release(key)  # handed over meanwhile: pass it on
                raise
        try:
            yield
        finally:
            self._release(key)

    @contextlib.contextmanager
    def hold_blocking(self, key: str, *, timeout: float | None = None) -> Iterator[None]:
        """Hold ``key`` from a worker thread; TimeoutError after ``timeout`` seconds."""
        event = threading.Event()
        if not self._take(key, event.set) and not event.wait(timeout):
            if not self._withdraw(key, event.set):
                self._release(key)  # handed over just now
            raise TimeoutError(f"{key} stayed locked for {timeout} s")
        try:
            yield
        finally:
            self._release(key)

    def __len__(self) -> int:
        return len(self._held)
