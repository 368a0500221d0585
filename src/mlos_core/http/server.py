"""The connection layer of ``mlos-core serve``: uvicorn's httptools protocol with limits.

Plain uvicorn reads a request head with no size limit and no deadline and keeps a connection
for as long as the client likes, so one client sending an endless header, or a thousand
sending a byte a second, takes the server down. Here, as nginx and Apache do it:

- **head size**: the request line and headers together are at most ``max_header_size``
  bytes (nginx ``large_client_header_buffers``); over it the answer is 414 (the request
  line alone) or 431, and the connection closes. The head is counted as it arrives, so an
  endless header costs at most that many bytes.
- **header deadline**: a request head must be complete ``header_timeout`` s after the
  connection opened (the first request) or after its first byte (later ones); else 408 and
  close (nginx ``client_header_timeout``). A connection that sent nothing is just closed.
- **body progress**: a body must keep up ``min_body_rate`` bytes/s on average with
  ``body_timeout`` s in hand, and never go ``body_timeout`` s without a byte; else 408
  ``body_timeout`` and close (Apache mod_reqtimeout ``body=...,MinRate=...``). The clock
  stands still while the server itself is not reading (backpressure, a pending
  ``100-continue``). What a resumable upload received is kept, as for a dropped connection.
- **keep-alive**: an idle connection between requests closes after ``keep_alive_timeout`` s.
- **connection cap**: at most ``max_connections`` live connections (by default derived from
  the open-files limit). A new connection at the cap takes the place of one that is doing
  nothing useful: idle in keep-alive, still sending its head (oldest first), or sending its
  body slower than the minimum rate. When no connection can give way, up to
  :data:`HEALTH_RESERVE` more are let in for ``GET /health`` only; past those, 503 and close.

A connection dropped for a limit logs one warning, and at most one line per kind of drop per
:data:`LOG_EVERY` seconds (with the count), so an attack cannot flood the log.

**Fast body path**: a route that stores a big body (a blob ``PUT``, a one-shot upload) reads
it from the :class:`BodyStream` in ``scope["extensions"]["mlos.body"]`` instead of ASGI
``receive``: the connection hands over the parser's chunks in batches of about
:data:`~mlos_core.storage.receive.BATCH` bytes, pausing reading while a full batch waits.
The ASGI path costs, per 64 KiB, a pause and a resume of reading, an event, a message and
three copies of the bytes: for a 1 GiB upload that, not the disk or sha256, was the limit.
Everything else stays as it is: the same request reaches the same route (URL, headers,
tenancy, answers), the limits and deadlines above apply unchanged, and a client gone
mid-body is seen as with ``receive`` (after the bytes that arrived are handed over).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
import uvicorn
from starlette.requests import ClientDisconnect
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from mlos_core.http.errors import error_body
from mlos_core.storage.receive import BATCH

if TYPE_CHECKING:
    from starlette.types import ASGIApp
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from mlos_core.settings import Settings

log = logging.getLogger("mlos_core.http.server")

HEALTH_PATH = "/health"
BODY_EXTENSION = "mlos.body"  # scope["extensions"] key of a request's BodyStream
FLUSH_AFTER = 0.05  # seconds a fast-path body's bytes may wait for their batch to fill
HEALTH_RESERVE = 8  # connections past the cap, each allowed one GET /health
RESERVED_FDS = 64  # open files kept for the server itself (listener, logs, event loop, S3)
DEFAULT_MAX_CONNECTIONS = 4096  # the derived default never goes above this
LOG_EVERY = 10.0  # seconds between two log lines about one kind of drop
_CHECK_AT_LEAST = 0.05  # seconds between two checks of one body's progress


# ---- the limits -------------------------------------------------------------------------
def raise_open_files_limit() -> int | None:
    """Raise the soft open-files limit to the hard one (nginx's ``worker_rlimit_nofile``);
    return the soft limit now in force (None where there is no such limit)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    return None if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(open_files: int | None) -> int:
    """What the open-files limit allows: half of what is left after :data:`RESERVED_FDS`
    (a connection receiving an upload also holds the file it writes), at most
    :data:`DEFAULT_MAX_CONNECTIONS`."""
    if open_files is None:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, (open_files - RESERVED_FDS) // 2))


@dataclass(frozen=True)
class Limits:
    """The connection limits and deadlines of one server (see the module docstring)."""

    max_connections: int
    max_header_size: int
    header_timeout: float
    keep_alive_timeout: float
    body_timeout: float
    min_body_rate: float  # bytes/s; 0: only the body_timeout gap

    @classmethod
    def of(cls, settings: Settings, open_files: int | None) -> Limits:
        return cls(
            max_connections=settings.max_connections or default_max_connections(open_files),
            max_header_size=settings.max_header_size,
            header_timeout=settings.header_timeout,
            keep_alive_timeout=settings.keep_alive_timeout,
            body_timeout=settings.body_timeout,
            min_body_rate=float(settings.min_body_rate),
        )

    def describe(self, open_files: int | None) -> str:
        files = f"open-files limit {open_files}" if open_files else "no open-files limit"
        rate = f"at >= {self.min_body_rate:g} B/s, " if self.min_body_rate else ""
        return (
            f"connections: at most {self.max_connections} ({files}); request head "
            f"<= {self.max_header_size} bytes within {self.header_timeout:g} s; body "
            f"{rate}no gap over {self.body_timeout:g} s; keep-alive {self.keep_alive_timeout:g} s"
        )


# ---- logging drops, rate-limited ---------------------------------------------------------
class DropLog:
    """One warning per dropped connection, but at most one line per kind of drop every
    ``every`` seconds: the drops in between are counted and summed up in one line."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every: float = LOG_EVERY) -> None:
        self._loop = loop
        self._every = every
        self._held: dict[str, int] = {}  # kinds inside their quiet window -> drops held back

    def dropped(self, kind: str, message: str) -> None:
        if kind in self._held:
            self._held[kind] += 1
            return
        log.warning("%s", message)
        self._held[kind] = 0
        self._loop.call_later(self._every, self._flush, kind)

    def _flush(self, kind: str) -> None:
        held = self._held.pop(kind, 0)
        if held:
            log.warning(
                "%d more connections dropped (%s) in the last %g s", held, kind, self._every
            )
            self._held[kind] = 0
            self._loop.call_later(self._every, self._flush, kind)


# ---- the connections of one server -------------------------------------------------------
class Pool:
    """The live connections of one server, and which of them may give way to a new one."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.live: set[LimitedProtocol] = set()
        # dicts as ordered sets, oldest first
        self.waiting: dict[LimitedProtocol, None] = {}  # no request yet, or reading a head
        self.idle: dict[LimitedProtocol, None] = {}  # keep-alive between two requests
        self._drops: DropLog | None = None

    def drops(self, loop: asyncio.AbstractEventLoop) -> DropLog:
        if self._drops is None:
            self._drops = DropLog(loop)
        return self._drops

    def admit(self, conn: LimitedProtocol) -> bool | None:
        """Count ``conn`` in: True for an ordinary connection, False for one let in past the
        cap for ``GET /health`` only, None when it must be refused."""
        ordinary: bool | None = True
        if len(self.live) >= self.limits.max_connections:
            victim = self._victim()
            if victim is not None:
                victim.evict()
            elif len(self.live) >= self.limits.max_connections + HEALTH_RESERVE:
                return None
            else:
                ordinary = False
        self.live.add(conn)
        self.waiting[conn] = None
        return ordinary

    def _victim(self) -> LimitedProtocol | None:
        for queue in (self.idle, self.waiting):
            if queue:
                return next(iter(queue))
        lagging = [(c.body_deficit(), id(c), c) for c in self.live]
        deficit, _, slowest = max(lagging, default=(0.0, 0, None))
        return slowest if deficit >= 1.0 else None

    def forget(self, conn: LimitedProtocol) -> None:
        self.live.discard(conn)
        self.waiting.pop(conn, None)
        self.idle.pop(conn, None)


class _Flow(FlowControl):
    """uvicorn's flow control, with a clock that stands still while reading is paused."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport)
        self._loop = loop
        self._paused_at: float | None = None
        self._paused_for = 0.0

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._paused_at = self._loop.time()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self._paused_at is not None:
            self._paused_for += self._loop.time() - self._paused_at
            self._paused_at = None
        super().resume_reading()

    def reading_time(self) -> float:
        now = self._loop.time()
        paused = self._paused_for
        if self._paused_at is not None:
            paused += now - self._paused_at
        return now - paused


class BodyStream:
    """The body of one request in batches (lists of the parser's chunks) of about ``batch``
    bytes, read by the connection instead of through ASGI ``receive`` (the module
    docstring's fast body path). At most one batch waits: reading pauses once it is full,
    until :meth:`batches` takes it. Bytes never wait more than :data:`FLUSH_AFTER` s for
    their batch to fill: a slow client's bytes reach the disk about as they would through
    ``receive``, and an idle deadline of the app still counts from the last byte. Uses the
    request cycle's state and event, as ``receive`` does, so a dropped connection or a
    limit's drop wakes it the same way."""

    def __init__(
        self,
        flow: FlowControl,
        cycle: RequestResponseCycle,
        loop: asyncio.AbstractEventLoop,
        batch: int = BATCH,
    ) -> None:
        self._flow = flow
        self._cycle = cycle
        self._loop = loop
        self._batch = batch
        self.active = False  # the app reads the body here (else through ``receive``)
        self._chunks: list[bytes] = []
        self._size = 0
        self._since = 0.0  # loop time of the oldest chunk held

    def feed(self, chunk: bytes) -> None:
        """A chunk from the parser (the connection's ``on_body``, once active)."""
        first = not self._chunks
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= self._batch:
            self._flow.pause_reading()
            self._cycle.message_event.set()
        elif first:  # the reader starts the clock of FLUSH_AFTER
            self._since = self._loop.time()
            self._cycle.message_event.set()

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The body's batches, the last one possibly shorter; ClientDisconnect (as Starlette
        raises it) when the client goes away or the connection is dropped for a limit, after
        the chunks that arrived before."""
        cycle = self._cycle
        if not self.active:  # what arrived before the app asked went the ASGI way
            self.active = True
            if cycle.body:
                self._chunks.insert(0, bytes(cycle.body))
                self._size += len(cycle.body)
                self._since = self._loop.time()
                cycle.body = bytearray()
        while True:
            if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
                cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                cycle.waiting_for_100_continue = False
            gone = cycle.disconnected or cycle.response_complete
            ended = not cycle.more_body
            due = self._loop.time() - self._since >= FLUSH_AFTER
            if self._chunks and (self._size >= self._batch or ended or gone or due):
                batch = self._chunks
                self._chunks, self._size = [], 0
                if not gone:
                    self._flow.resume_reading()
                yield batch
                continue
            if gone:
                raise ClientDisconnect()
            if ended:
                return
            cycle.message_event.clear()
            self._flow.resume_reading()
            if not self._chunks:
                await cycle.message_event.wait()
                continue
            with contextlib.suppress(TimeoutError):  # then hand over what is held
                async with asyncio.timeout(self._since + FLUSH_AFTER - self._loop.time()):
                    await cycle.message_event.wait()


def body_stream(scope: dict[str, Any] | Any) -> BodyStream | None:
    """The fast body path of a request, when its server offers one (``mlos-core serve``)."""
    stream = scope.get("extensions", {}).get(BODY_EXTENSION)
    return stream if isinstance(stream, BodyStream) else None


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request we refuse."""


# where the parser is in the current request
_NONE, _HEAD, _BODY, _DONE = "none", "head", "body", "done"


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :attr:`pool` (module docstring).

    :func:`protocol_class` makes a subclass bound to one server's :class:`Pool`."""

    pool: ClassVar[Pool]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = self.pool.limits
        self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]
        self._ordinary = True
        self._dropped = False
        self._requests = 0  # requests whose head was complete
        self._state = _NONE
        self._begun = 0  # messages begun
        self._head_bytes = 0  # bytes of the current head counted by the chunks they came in
        self._head_size = 0  # bytes of the current head counted by the parser's callbacks
        self._refusal: tuple[int, str, str] | None = None
        self._stream: BodyStream | None = None  # the current request's fast body path
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # the body rule's state: seconds in hand, when last checked, bytes since, last byte
        self._allowance = 0.0
        self._checked = 0.0
        self._body_bytes = 0
        self._last_byte = 0.0

    # ---- connections in and out
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = self._flow = _Flow(transport, self.loop)
        admitted = self.pool.admit(self)
        if admitted is None:
            self._drop(
                "too_many_connections",
                f"refused: {self.limits.max_connections} connections (--max-connections) "
                "are open and none of them can give way",
                status=503,
            )
            return
        self._ordinary = admitted
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        self._cancel_timers()
        super().connection_lost(exc)

    def evict(self) -> None:
        """Give way to a new connection: this one is doing nothing useful."""
        full = f"{self.limits.max_connections} connections are open (--max-connections)"
        if self._state == _BODY:
            rate = f"{self.limits.min_body_rate:g} bytes/s (--min-body-rate)"
            why, takeover = f"{full} and this body was arriving under {rate}", True
        elif self._state == _HEAD:
            why, takeover = f"{full} and this request head was still arriving", False
        else:
            self._drop("evicted", f"idle connection closed: {full}", status=None)
            return
        self._drop(
            "evicted",
            f"dropped to make room: {why}; retry",
            status=503,
            code="too_many_connections",
            takeover=takeover,
        )

    # ---- reading
    def data_received(self, data: bytes) -> None:
        if self._dropped:
            return
        self._unset_keepalive_if_required()
        carried = self._state == _HEAD
        idle = self._state in (_NONE, _DONE)
        begun = self._begun
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSockets here: the request was served as a plain one
        except httptools.HttpParserError as exc:
            if self._refusal is not None:
                status, kind, message = self._refusal
                self._drop(kind, message, status=status)
            else:
                self._drop("invalid_request", f"not valid HTTP: {exc}", status=400)
            return
        if self._state == _HEAD:
            # A head that began at the start of this chunk, or before it, owns all of it. One
            # that began after another request in this chunk is counted from the next chunk
            # (its callbacks still count what it holds): at most one read more is accepted.
            if (carried and self._begun == begun) or (idle and self._begun == begun + 1):
                self._head_bytes += len(data)
            if max(self._head_bytes, self._head_size) > self.limits.max_header_size:
                self._drop("header_too_large", self._too_large(), status=431)
                return
        if (
            self._state in (_NONE, _DONE)
            and self._nothing_in_flight()
            and self._head_timer is None
            and self.timeout_keep_alive_task is None
        ):
            # bytes that start no request (blank lines): the next head is due from now
            self._arm_head_timer()

    def _too_large(self) -> str:
        return (
            f"request line and headers over {self.limits.max_header_size} bytes "
            "(--max-header-size): send fewer or smaller headers"
        )

    def _refuse(self, status: int, kind: str, message: str) -> None:
        self._refusal = (status, kind, message)
        raise _Refused(message)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun += 1
        self._state = _HEAD
        self._stream = None
        self._head_bytes = self._head_size = 0
        if self._requests:  # the first head is due from the connection's start
            self._arm_head_timer()
        if self._nothing_in_flight():
            self.pool.idle.pop(self, None)
            self.pool.waiting.setdefault(self, None)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_size:
            self._refuse(
                414,
                "uri_too_long",
                f"request line over {self.limits.max_header_size} bytes (--max-header-size): "
                "use a shorter URL",
            )
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_header_size:
            self._refuse(431, "header_too_large", self._too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self.pool.waiting.pop(self, None)
        self._requests += 1
        if not self._ordinary and not self._is_health_check():
            self._refuse(
                503,
                "too_many_connections",
                f"{self.limits.max_connections} connections (--max-connections) are open and "
                f"busy: only GET {HEALTH_PATH} is answered past them",
            )
        self._state = _BODY
        super().on_headers_complete()
        if not self._ordinary:
            self.cycle.keep_alive = False
        self._stream = BodyStream(self.flow, self.cycle, self.loop)
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[BODY_EXTENSION] = self._stream
        self._start_body()

    def _is_health_check(self) -> bool:
        method = self.parser.get_method()
        path = httptools.parse_url(self.url).path
        return method in (b"GET", b"HEAD") and path == HEALTH_PATH.encode()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._last_byte = self._flow.reading_time()
        stream = self._stream
        if stream is not None and stream.active:
            if not self.cycle.response_complete:  # else, as uvicorn does: dropped
                stream.feed(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._state = _DONE
        self._cancel_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._dropped:  # dropped for a limit while this answer was on its way
            self.transport.close()
        elif self.transport.is_closing():
            return
        elif self._state == _HEAD:
            self.pool.waiting.setdefault(self, None)
        elif self._state in (_NONE, _DONE) and self._nothing_in_flight():
            self.pool.idle[self] = None

    def _nothing_in_flight(self) -> bool:
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    # ---- the header deadline
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        message = (
            f"request head not complete in {self.limits.header_timeout:g} s (--header-timeout)"
        )
        if self._state == _HEAD:
            self._drop("header_timeout", message, status=408)
        elif self._state in (_NONE, _DONE) and self._nothing_in_flight():
            self._drop(
                "header_timeout", f"no request in {self.limits.header_timeout:g} s", status=None
            )

    # ---- the body rule
    def _start_body(self) -> None:
        now = self._flow.reading_time()
        self._allowance = self.limits.body_timeout
        self._checked = self._last_byte = now
        self._body_bytes = 0
        self._arm_body_timer(self.limits.body_timeout)

    def _arm_body_timer(self, delay: float) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(delay, self._check_body)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_progress(self, now: float) -> tuple[float, float]:
        """(seconds in hand, seconds since the last byte) at reading time ``now``."""
        slack, rate = self.limits.body_timeout, self.limits.min_body_rate
        credit = self._body_bytes / rate if rate else math.inf
        allowance = min(slack, self._allowance - (now - self._checked) + credit)
        return allowance, now - self._last_byte

    def body_deficit(self) -> float:
        """Seconds this body is behind the minimum rate (0 outside a body)."""
        if self._state != _BODY or self._dropped or self._waiting_for_us():
            return 0.0
        allowance, _idle = self._body_progress(self._flow.reading_time())
        return self.limits.body_timeout - allowance

    def _waiting_for_us(self) -> bool:
        """The client waits for our ``100 Continue`` before it sends the body."""
        return self.cycle is not None and self.cycle.waiting_for_100_continue

    def _check_body(self) -> None:
        self._body_timer = None
        if self._state != _BODY or self._dropped:
            return
        slack = self.limits.body_timeout
        now = self._flow.reading_time()
        if self._waiting_for_us():
            self._allowance, self._checked, self._last_byte, self._body_bytes = slack, now, now, 0
            self._arm_body_timer(slack)
            return
        allowance, idle = self._body_progress(now)
        self._allowance, self._checked, self._body_bytes = allowance, now, 0
        if idle >= slack:
            message = f"no body bytes for {slack:g} s (--body-timeout)"
        elif allowance <= 0:
            message = (
                f"body arriving under {self.limits.min_body_rate:g} bytes/s (--min-body-rate) "
                f"for longer than {slack:g} s (--body-timeout)"
            )
        else:
            self._arm_body_timer(max(_CHECK_AT_LEAST, min(allowance, slack - idle)))
            return
        self._drop(
            "body_timeout",
            message + "; what a resumable upload received is kept: resume from the "
            "Upload-Offset that HEAD on the blob reports",
            status=408,
            takeover=True,
        )

    # ---- dropping a connection
    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        self._unset_keepalive_if_required()

    def _drop(
        self,
        kind: str,
        message: str,
        *,
        status: int | None,
        code: str | None = None,
        takeover: bool = False,
    ) -> None:
        """Close this connection for a limit: answer ``status`` unless another answer is on
        its way (then the connection closes after that one). ``takeover``: the request in
        flight is the one at fault; its app task is told the client went away."""
        if self._dropped:
            return
        self._dropped = True
        self.pool.forget(self)
        self._cancel_timers()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        answer = f"with {status}" if status else "silently"
        self.pool.drops(self.loop).dropped(
            kind, f"connection from {client} closed {answer}: {message}"
        )
        code = code or kind
        cycle = self.cycle
        if takeover and cycle is not None:
            if not cycle.response_complete:
                started = cycle.response_started
                cycle.disconnected = True
                cycle.message_event.set()
                if not started and status is not None:
                    self._answer(status, code, message)
            self.transport.close()
        elif not self._nothing_in_flight():
            # answering another request: finish that one (on_response_complete closes)
            self.pipeline.clear()
            self.flow.pause_reading()
        else:
            if status is not None:
                self._answer(status, code, message)
            self.transport.close()

    def _answer(self, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        if status == 503:
            head.append(b"retry-after: 1\r\n")
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))


def protocol_class(limits: Limits) -> type[LimitedProtocol]:
    """A :class:`LimitedProtocol` bound to a new :class:`Pool` (one per server)."""

    class Protocol(LimitedProtocol):
        pool = Pool(limits)

    return Protocol


# ---- the server --------------------------------------------------------------------------
def build_server(app: ASGIApp, settings: Settings, *, log_level: str) -> uvicorn.Server:
    """The uvicorn server for ``app`` with the connection limits of ``settings``; raises the
    open-files limit as far as allowed first."""
    open_files = raise_open_files_limit()
    limits = Limits.of(settings, open_files)
    if settings.max_connections and open_files:
        fit = default_max_connections(open_files)
        if settings.max_connections > fit:
            log.warning(
                "--max-connections %d with an open-files limit of %d: past about %d "
                "connections, uploads may fail with 'too many open files' (raise ulimit -n)",
                settings.max_connections,
                open_files,
                fit,
            )
    log.info("%s", limits.describe(open_files))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits),
        ws="none",
        log_level=log_level.lower(),
        access_log=False,  # the app logs one line per request
        timeout_keep_alive=max(1, math.ceil(limits.keep_alive_timeout)),
    )
    return uvicorn.Server(config)


def serve(app: ASGIApp, settings: Settings, *, log_level: str) -> None:
    """Run ``app`` until SIGINT/SIGTERM (as ``uvicorn.run`` does)."""
    server = build_server(app, settings, log_level=log_level)
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)  # uvicorn has logged why
