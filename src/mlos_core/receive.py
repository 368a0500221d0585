"""Streaming a request body into a blob: the hot path of every upload.

The event loop only gathers body chunks into ~4 MiB batches; hashing and writing a batch
run in a worker thread while the next batch arrives (hashlib and ``pwrite`` release the
GIL), so receive, hash and write overlap. At most two batches per upload are in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.requests import ClientDisconnect

from mlos_core.blobs import BlobWriter
from mlos_core.errors import ApiError

BATCH = 4 * 1024 * 1024
IDLE_TIMEOUT = 120.0  # seconds without a body byte before a stalled upload is dropped


class StalledBody(ClientDisconnect):
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


async def pump(
    chunks: AsyncIterator[bytes],
    write: Callable[[bytearray], None],
    on_bytes: Callable[[int], None] | None = None,
    *,
    idle: float = IDLE_TIMEOUT,
) -> None:
    """Feed ``chunks`` to ``write`` (in a thread) in batches, overlapping I/O and receive."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    buf = bytearray()
    try:
        try:
            async for chunk in _with_idle_timeout(chunks, idle):
                buf += chunk
                if len(buf) >= BATCH:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, write, buf)
                    if on_bytes is not None:
                        on_bytes(len(buf))
                    buf = bytearray()
        except ClientDisconnect:
            # keep every byte that arrived: the client resumes from the offset we report
            if pending is not None:
                await pending
                pending = None
            if buf:
                await loop.run_in_executor(None, write, buf)
            raise
        if pending is not None:
            await pending
            pending = None
        if buf:
            await loop.run_in_executor(None, write, buf)
            if on_bytes is not None:
                on_bytes(len(buf))
    finally:
        if pending is not None:  # an error while a batch is in flight: let it land first
            with contextlib.suppress(Exception):
                await pending


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
        await pump(chunks, writer.write, on_bytes, idle=idle)
    except ClientDisconnect:
        writer.close()
        raise
    except ApiError:
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
