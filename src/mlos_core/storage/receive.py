"""Streaming a request body into a blob: the hot path of every upload.

The event loop only gathers body chunks into ~4 MiB batches, as a list of the chunks (no
copy); hashing and writing run in worker threads while the next batch arrives (hashlib and
``pwrite`` release the GIL), each in its own lane at its own pace (:func:`pump`), so
receive, hash and write overlap. At most :data:`DEPTH` batches per upload are in the lanes
and one is being gathered. A body source may hand over whole batches already (the
connection layer's fast body path, :mod:`mlos_core.http.server`): a list of chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from mlos_core.errors import CoreError
from mlos_core.storage.blobs import BlobWriter

BATCH = 4 * 1024 * 1024
IDLE_TIMEOUT = 120.0  # seconds without a body byte before a stalled upload is dropped


class BodyInterrupted(Exception):
    """The body stopped before its end because the client went away (the HTTP layer raises it
    for a dropped connection). The bytes that arrived are kept: the client resumes from the
    offset we report."""


class StalledBody(BodyInterrupted):
    """No body bytes for ``IDLE_TIMEOUT`` s: handled like a dropped connection (bytes kept,
    locks released), so a stalled client cannot block other uploads of the same blob."""


T = TypeVar("T")
Chunk = bytes | list[bytes]  # one body chunk, or several in order (a batch)


async def _with_idle_timeout(chunks: AsyncIterator[T], idle: float) -> AsyncIterator[T]:
    it = chunks.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await anext(it)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StalledBody() from None
        yield chunk


Jobs = Callable[[list[bytes]], Sequence[Callable[[], None]]]
DEPTH = 2  # batches of one upload handed to worker threads and not yet done


class _Lane:
    """Jobs run one after another in worker threads, in the order submitted: the hashing
    of successive batches is one lane, their writes another, so the two go at their own
    pace instead of in step. After a job fails the later ones are skipped with its error
    (a write after a failed one would leave a hole in the file)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[tuple[Callable[[], None], asyncio.Future[None]]] = deque()
        self._running: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.append((job, done))
        if self._running is None:
            self._next()
        return done

    def _next(self) -> None:
        while self._queue:
            job, done = self._queue.popleft()
            if self._error is not None:
                if not done.done():
                    done.set_exception(self._error)
                continue
            self._running = self._loop.run_in_executor(None, job)
            self._running.add_done_callback(functools.partial(self._ran, done))
            return
        self._running = None

    def _ran(self, done: asyncio.Future[None], running: asyncio.Future[None]) -> None:
        exc = asyncio.CancelledError() if running.cancelled() else running.exception()
        if exc is not None:
            self._error = exc
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)
        self._next()

    async def drain(self) -> None:
        """Skip what is queued; wait for the job running in its thread (it may use a file
        its caller is about to close)."""
        self._error = self._error or asyncio.CancelledError()
        while self._running is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._running)


async def pump(
    chunks: AsyncIterator[Chunk],
    jobs: Jobs,
    on_bytes: Callable[[int], None] | None = None,
    *,
    idle: float = IDLE_TIMEOUT,
) -> None:
    """Gather ``chunks`` into batches (lists of chunks, about :data:`BATCH` bytes) and run
    each batch's ``jobs(batch)`` in worker threads while the next batch arrives: the i-th
    job of every batch in lane i (:class:`_Lane`: in order, one at a time), the lanes side
    by side (hashing and writing in parallel). At most :data:`DEPTH` batches are in the
    lanes at once; all of them have run when this returns or raises."""
    loop = asyncio.get_running_loop()
    lanes: list[_Lane] = []
    in_flight: deque[asyncio.Future[list[BaseException | None]]] = deque()

    async def settle(keep: int = 0) -> None:
        while len(in_flight) > keep:
            for result in await in_flight.popleft():
                if isinstance(result, BaseException):
                    raise result

    def dispatch(batch: list[bytes], n: int) -> None:
        work = jobs(batch)
        lanes.extend(_Lane(loop) for _ in range(len(work) - len(lanes)))
        done = [lane.submit(job) for lane, job in zip(lanes, work, strict=False)]
        in_flight.append(asyncio.gather(*done, return_exceptions=True))
        if on_bytes is not None:
            on_bytes(n)

    buf: list[bytes] = []
    size = 0
    try:
        try:
            async for chunk in _with_idle_timeout(chunks, idle):
                if isinstance(chunk, list):
                    buf += chunk
                    size += sum(len(c) for c in chunk)
                else:
                    buf.append(chunk)
                    size += len(chunk)
                if size >= BATCH:
                    await settle(DEPTH - 1)
                    dispatch(buf, size)
                    buf, size = [], 0
        except BodyInterrupted:
            # keep every byte that arrived: the client resumes from the offset we report
            await settle()
            if buf:
                dispatch(buf, size)
                await settle()
            raise
        await settle()
        if buf:
            dispatch(buf, size)
            await settle()
    finally:
        for lane in lanes:  # an error while batches are in the lanes: let them land first
            await lane.drain()
        for batch_done in in_flight:
            batch_done.cancel()


async def receive_blob(
    chunks: AsyncIterator[Chunk],
    writer: BlobWriter,
    on_bytes: Callable[[int], None] | None = None,
    *,
    idle: float = IDLE_TIMEOUT,
) -> bool:
    """Receive into ``writer``. True: blob complete and verified; False: body ended early.

    A dropped connection keeps what arrived (the client resumes from the offset); a refused
    body (too long, disk full) is cut back so it stores nothing.
    """
    await asyncio.to_thread(writer.open)
    try:
        await pump(chunks, writer.jobs, on_bytes, idle=idle)
    except BodyInterrupted:
        writer.close()
        raise
    except CoreError:
        await asyncio.to_thread(writer.rollback)
        raise
    except BaseException:
        writer.close()
        raise
    if not writer.complete:
        writer.close()
        return False
    await asyncio.to_thread(writer.finish)
    return True
