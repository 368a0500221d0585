"""Streaming a request body into a blob: the hot path of every upload.

The event loop only gathers body chunks into ~4 MiB batches; hashing and writing a batch
run in a worker thread while the next batch arrives (hashlib and ``pwrite`` release the
GIL), so receive, hash and write overlap. At most two batches per upload are in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

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


async def _with_idle_timeout(chunks: AsyncIterator[bytes], idle: float) -> AsyncIterator[bytes]:
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


Jobs = Callable[[bytearray], Sequence[Callable[[], None]]]


async def pump(
    chunks: AsyncIterator[bytes],
    jobs: Jobs,
    on_bytes: Callable[[int], None] | None = None,
    *,
    idle: float = IDLE_TIMEOUT,
) -> None:
    """Gather ``chunks`` into batches; run each batch's ``jobs(batch)`` in worker threads,
    side by side (hashing and writing a batch in parallel), while the next batch arrives.
    A batch's jobs all finish before the next batch's start, so order is kept."""
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[None]] = []

    async def settle() -> None:
        futures = pending[:]
        pending.clear()
        for result in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    def dispatch(batch: bytearray) -> None:
        pending.extend(loop.run_in_executor(None, job) for job in jobs(batch))
        if on_bytes is not None:
            on_bytes(len(batch))

    buf = bytearray()
    try:
        try:
            async for chunk in _with_idle_timeout(chunks, idle):
                buf += chunk
                if len(buf) >= BATCH:
                    await settle()
                    dispatch(buf)
                    buf = bytearray()
        except BodyInterrupted:
            # keep every byte that arrived: the client resumes from the offset we report
            await settle()
            if buf:
                dispatch(buf)
                await settle()
            raise
        await settle()
        if buf:
            dispatch(buf)
            await settle()
    finally:
        if pending:  # an error while a batch is in flight: let it land first
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)


async def receive_blob(
    chunks: AsyncIterator[bytes],
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
