"""The ``api`` access method: upload to an MLOS Core over HTTP (docs/upload-protocol.md).

Protocol, as this transport drives it::

    POST /v1/uploads {model_id, manifest}      -> upload_id, needed [{sha256, size, offset}]
    PUT  /v1/uploads/{id}/blobs/{sha256}       body streamed from Upload-Offset to the end
    POST /v1/uploads/{id}/prepare              staged + verified, not visible (for --atomic)
    POST /v1/uploads/{id}/commit               one atomic rename + register on the server
    DELETE /v1/uploads/{id}                    abort

The server deduplicates by sha256 (``needed`` is per unique blob) and keeps partial blobs,
so re-opening after a cut connection resumes at ``offset``.

:class:`~axon.mlos_client.MlosClient` owns the endpoints, the token, the timeouts, the
checked answers (:class:`~axon.mlos_client.OpenAnswer`, ...) and the mapping of HTTP answers
to :mod:`axon.errors`; this module only moves a blob's bytes. On plain http without a proxy
they go from the page cache straight to the socket (``sendfile``: no copy through Python, as
fast as curl) and the answer is read off the same socket, both within the exchange's
:class:`~axon.mlos_client.Budget`; otherwise httpx streams them.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import os
import select
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from axon.errors import AxonError, RemoteError, TransportError, retryable
from axon.mlos_client import (
    ANSWER_LIMIT,
    CONNECT_TIMEOUT,
    ERROR_LIMIT,
    Answer,
    BatchResult,
    Budget,
    MlosClient,
    OpenAnswer,
    OverBudget,
    SendTimeout,
    declared_length,
    is_loopback,
    read_capped,
)
from axon.progress import skipped
from axon.transports.base import CommitInfo, FileKey, Outgoing, Session, Transport
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from typing import Self

    from axon.targets import InstanceTarget

CHUNK = 4 * 1024 * 1024  # big chunks: few syscalls and Python round trips per GiB
SENDFILE_SLICE = 8 * 1024 * 1024  # the most one sendfile call moves
SETTLE_SECONDS = 2.0  # longest wait for a cut blob's offset to stop moving
BATCH_TYPE = "application/vnd.mlos.blob-batch"  # a batch body (docs/upload-protocol.md)
BATCH_BYTES = 8 * 1024 * 1024  # blobs gathered into one batch request, at most ...
BATCH_FILES = 1024  # ... and this many (a batch's answer grows with them)
BATCH_ANSWER_PER_FILE = 1024  # bytes of answer allowed per blob of a batch

#: what a PUT body is made of: literal bytes, or ``(file, offset, length)`` of a local file
Piece = bytes | tuple[Path, int, int]


# ---- moving a blob's bytes ------------------------------------------------------------------
def put_file(
    client: MlosClient,
    path: str,
    source: Path,
    offset: int,
    length: int,
    on_bytes: OnBytes,
    *,
    headers: dict[str, str],
    what: str,
    ok: tuple[int, ...],
) -> Answer:
    """PUT ``length`` bytes of ``source`` from ``offset`` to ``path``; the answer, whole and
    within :data:`~axon.mlos_client.ANSWER_LIMIT`.

    Raises the client's error for an answer outside ``ok``, a lost connection or a blown
    budget (:class:`~axon.mlos_client.Budget`: the bytes are sent, and the answer read, at
    no less than MIN_RATE after ``timeout`` seconds).
    """
    pieces: list[Piece] = [(source, offset, length)]
    return put_pieces(client, path, pieces, on_bytes, headers=headers, what=what, ok=ok)


def put_pieces(
    client: MlosClient,
    path: str,
    pieces: Sequence[Piece],
    on_bytes: OnBytes,
    *,
    headers: dict[str, str],
    what: str,
    ok: tuple[int, ...],
    limit: int = ANSWER_LIMIT,
) -> Answer:
    """PUT a body made of ``pieces`` (see :data:`Piece`; ``on_bytes`` counts the files'
    bytes) to ``path``; the answer, whole and within ``limit``. Errors as :func:`put_file`;
    a local file that cannot be read is the OSError of reading it."""
    length = sum(len(p) if isinstance(p, bytes) else p[2] for p in pieces)
    if not _direct(client.endpoint):
        return client.exchange(
            "PUT",
            path,
            what=what,
            ok=ok,
            limit=limit,
            content=_stream(pieces, on_bytes),
            headers={**headers, "Content-Length": str(length)},
        )
    answer = _sendfile_put(client, path, pieces, length, on_bytes, headers, what, ok, limit)
    return client.accept(answer, what=what, ok=ok, limit=limit)


class _LocalError(Exception):
    """Reading a local file failed while sending: its OSError, raised as it is."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _open_local(source: Path) -> IO[bytes]:
    try:
        return open(source, "rb")
    except OSError as exc:
        raise _LocalError(exc) from exc


def _sendfile_put(
    client: MlosClient,
    path: str,
    pieces: Sequence[Piece],
    length: int,
    on_bytes: OnBytes,
    headers: dict[str, str],
    what: str,
    ok: tuple[int, ...],
    limit: int,
) -> Answer:
    """The PUT over a raw connection (the client's headers, timeout and budget). A
    connection failure becomes the client's error for it."""
    url = client.endpoint + path
    parts = urlsplit(client.endpoint)
    budget = client.budget(limit)
    timeout = client.timeout
    first = pieces[0] if pieces else b""
    # local errors stay local: the first file is opened before connecting
    opened = None if isinstance(first, bytes) else open(first[0], "rb")  # noqa: SIM115
    try:
        conn = http.client.HTTPConnection(
            parts.hostname or "localhost",
            parts.port or 80,
            timeout=budget.wait(Budget.SEND, min(timeout, CONNECT_TIMEOUT)),
        )
        sent_error: OSError | None = None  # a send failure: the server may have answered
        try:
            conn.connect()
            sock = conn.sock
            sock.settimeout(timeout)
            conn.putrequest("PUT", parts.path + path, skip_accept_encoding=True)
            for key, value in {**client.headers, **headers}.items():
                conn.putheader(key, value)
            conn.putheader("Content-Length", str(length))
            conn.endheaders()
            try:
                for piece in pieces:
                    if isinstance(piece, bytes):
                        _send_bytes(sock, piece, budget, timeout)
                        continue
                    source, offset, count = piece
                    fh = opened if opened is not None else _open_local(source)
                    opened = None
                    with fh:
                        _sendfile(sock, fh, offset, count, on_bytes, source, budget, timeout)
            except OSError as exc:
                if isinstance(exc, TransportError):
                    raise
                sent_error = exc  # read the answer anyway: a 507/413 says more than EPIPE
            return _read_answer(sock, budget, timeout, url, ok, limit)
        except _LocalError as exc:
            raise exc.error from None
        except OverBudget as exc:
            raise client.over_budget(exc, what=what, url=url) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if isinstance(exc, TransportError):
                raise
            cause = sent_error if sent_error is not None else exc
            raise client.network_error(cause, what=what, url=url) from exc
        finally:
            conn.close()
    finally:
        if opened is not None:
            opened.close()


def _send_bytes(sock: socket.socket, data: bytes, budget: Budget, timeout: float) -> None:
    """Send ``data`` (a batch record's head: small), saying more follows (``MSG_MORE``: one
    packet with the file's first bytes)."""
    sock.settimeout(budget.wait(Budget.SEND, timeout))
    try:
        sock.sendall(data, _MSG_MORE)
    except TimeoutError:
        budget.timed_out(Budget.SEND)
        raise SendTimeout(f"no room to send for {timeout:g} s") from None
    budget.count(len(data))


_MSG_MORE = getattr(socket, "MSG_MORE", 0)


def _read_answer(
    sock: socket.socket,
    budget: Budget,
    timeout: float,
    url: str,
    ok: tuple[int, ...],
    limit: int = ANSWER_LIMIT,
) -> Answer:
    """Read one HTTP answer from ``sock`` within ``budget``: head, then at most ``limit``
    bytes of its body (ERROR_LIMIT for a status outside ``ok``)."""
    resp = http.client.HTTPResponse(_AnswerSocket(sock, budget, timeout), method="PUT")  # type: ignore[arg-type]
    resp.begin()
    cap = limit if resp.status in ok else ERROR_LIMIT
    headers = {k.lower(): v for k, v in resp.getheaders()}
    chunks = iter(functools.partial(resp.read, 64 * 1024), b"")
    content, truncated = read_capped(chunks, declared_length(headers.get("content-length")), cap)
    return Answer(resp.status, resp.reason, headers, content, url, truncated)


class _BudgetReader(io.RawIOBase):
    """A socket's bytes, each read within the exchange's budget."""

    def __init__(self, sock: socket.socket, budget: Budget, timeout: float) -> None:
        self._sock = sock
        self._budget = budget
        self._timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._sock.settimeout(self._budget.wait(Budget.RECEIVE, self._timeout))
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            self._budget.timed_out(Budget.RECEIVE)
            raise
        self._budget.count(n)
        return n


class _AnswerSocket:
    """What :class:`http.client.HTTPResponse` reads an answer from (``makefile``)."""

    def __init__(self, sock: socket.socket, budget: Budget, timeout: float) -> None:
        self._reader = _BudgetReader(sock, budget, timeout)

    def makefile(self, mode: str, *args: object, **kw: object) -> io.BufferedReader:
        return io.BufferedReader(self._reader)


def _direct(endpoint: str) -> bool:
    """May a PUT skip httpx (plain http, and no environment proxy applies to it)?"""
    if not endpoint.startswith("http://"):
        return False
    if is_loopback(endpoint):
        return True
    host = urlsplit(endpoint).hostname or ""
    proxies = urllib.request.getproxies()
    if "http" not in proxies and "all" not in proxies:  # httpx honours ALL_PROXY too
        return True
    return bool(urllib.request.proxy_bypass(host))


def _sendfile(
    sock: socket.socket,
    fh: IO[bytes],
    offset: int,
    length: int,
    on_bytes: OnBytes,
    source: Path,
    budget: Budget,
    timeout: float,
) -> None:
    """Send ``length`` bytes of ``fh`` from ``offset`` over ``sock``, straight from the page
    cache; each wait for room at most ``timeout``, the whole within ``budget``."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    sock.settimeout(timeout)  # non-blocking underneath: sendfile returns what fits
    pos, left = offset, length
    while left > 0:
        if not poller.poll(budget.wait(Budget.SEND, timeout) * 1000):
            budget.timed_out(Budget.SEND)
            raise SendTimeout(f"no room to send for {timeout:g} s")
        try:
            sent = os.sendfile(sock.fileno(), fh.fileno(), pos, min(SENDFILE_SLICE, left))
        except BlockingIOError:
            continue
        if not sent:
            raise TransportError(
                f"{source} became shorter while it was being sent",
                path=str(source),
                hint="do not change cached models during a publish",
            )
        pos += sent
        left -= sent
        budget.count(sent)
        on_bytes(sent)


def _stream(pieces: Sequence[Piece], on_bytes: OnBytes) -> Iterator[bytes]:
    """The bytes of ``pieces``, the files' in big chunks."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
            continue
        path, offset, length = piece
        with open(path, "rb", buffering=0) as fh:
            fh.seek(offset)
            left = length
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    raise TransportError(
                        f"{path} became shorter while it was being sent",
                        path=str(path),
                        hint="do not change cached models during a publish",
                    )
                left -= len(chunk)
                yield chunk
                on_bytes(len(chunk))


class _CountedOnce:
    """``on_bytes`` of one file sent from ``offset`` (which the caller reported already):
    each byte of the file is reported once. A 409 re-sync (:meth:`resume_at`) may move the
    next request below what the refused one had sent (its body went out before the answer
    came: a buffering link, another connection still writing the blob): those bytes are
    not reported again. Moved above it (another connection's bytes landed meanwhile), the
    gap is reported as done without work (:func:`axon.progress.skipped`)."""

    def __init__(self, on_bytes: OnBytes, offset: int) -> None:
        self.on_bytes = on_bytes
        self.position = offset  # where the bytes being sent now are in the file
        self.counted = offset  # the highest offset reported so far

    def resume_at(self, offset: int) -> None:
        if offset > self.counted:
            skipped(self.on_bytes, offset - self.counted)
            self.counted = offset
        self.position = offset

    def __call__(self, nbytes: int) -> None:
        self.position += nbytes
        if self.position > self.counted:
            self.on_bytes(self.position - self.counted)
            self.counted = self.position


# ---- one upload -----------------------------------------------------------------------------
class ApiSession(Session):
    """One open upload (``upload_id``) on the server, from its checked open answer."""

    def __init__(
        self, client: MlosClient, ref: ModelRef, manifest: Manifest, answer: OpenAnswer
    ) -> None:
        self.client = client
        self.ref = ref
        self.upload_id = answer.upload_id
        self.unchanged = answer.unchanged
        #: the digest of the manifest the upload was opened with: the commit must name it
        self.manifest_sha256 = answer.manifest_sha256
        by_sha = {f.sha256: f for f in manifest.files}  # the answer names only these
        self._offsets = {n.sha256: n.offset for n in answer.needed}
        self.needed: list[FileEntry] = [by_sha[n.sha256] for n in answer.needed]
        self._prepared = False
        self._done = False
        #: blobs whose PUT was cut in this transport: shared by its sessions
        self.interrupted: set[str] = set()
        #: the server takes many blobs in one request (older servers do not)
        self.batches = answer.batches
        #: the server answered "unchanged" without opening an upload: nothing to commit
        self.settled = answer.settled

    def settle(self, interrupted: set[str]) -> None:
        """After a cut PUT the server may still be storing what arrived: wait (briefly) until
        the blob's offset stops moving, so the resume starts from every byte it kept."""
        self.interrupted = interrupted
        for entry in self.needed:
            if entry.sha256 not in interrupted:
                continue
            interrupted.discard(entry.sha256)
            last, still = self.offset(entry), 0
            deadline = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < deadline and still < 3:
                time.sleep(0.05)
                now = self.client.blob_offset(
                    self.upload_id, entry.sha256, size=entry.size, what=f"offset of {entry.path}"
                )
                still = still + 1 if now == last else 0
                if now == last and now > 0:
                    break
                last = now
            self._offsets[entry.sha256] = last

    def offset(self, entry: FileEntry) -> int:
        return self._offsets.get(entry.sha256, 0)

    def send(
        self,
        entry: FileEntry,
        source: Path,
        on_bytes: OnBytes = ignore_bytes,
        *,
        verified: FileKey | None = None,
    ) -> None:
        """PUT the blob from the server's offset; a 409 re-syncs the offset once. Each byte
        of the file is reported to ``on_bytes`` once (:class:`_CountedOnce`)."""
        what = f"upload of {entry.path}"
        counted = _CountedOnce(on_bytes, self.offset(entry))
        for _ in range(2):
            offset = self.offset(entry)
            counted.resume_at(offset)
            if offset >= entry.size and entry.size > 0:
                return
            try:
                answer = put_file(
                    self.client,
                    self.client.blob_path(self.upload_id, entry.sha256),
                    source,
                    offset,
                    entry.size - offset,
                    counted,
                    headers={"Upload-Offset": str(offset)},
                    what=what,
                    ok=(200, 201, 409),
                )
            except BaseException:
                self.interrupted.add(entry.sha256)  # the next open() waits for the offset
                raise
            blob = self.client.blob_answer(answer, sha256=entry.sha256, size=entry.size, what=what)
            self._offsets[entry.sha256] = blob.offset
            if blob.complete:
                return
            if answer.status == 200:
                break  # body ended early: let the orchestrator re-open and resume
        raise retryable(
            RemoteError(
                f"upload of {entry.path} stopped at byte {self.offset(entry)} of {entry.size}",
                target=self.client.name,
                hint="re-running resumes from there",
            ),
            True,
        )

    def send_many(
        self,
        items: Sequence[Outgoing],
        on_bytes: OnBytes = ignore_bytes,
        on_file: Callable[[FileEntry], None] = lambda entry: None,
    ) -> None:
        """Blobs the server needs whole, in batches of up to :data:`BATCH_BYTES` and
        :data:`BATCH_FILES` (one request each) when it takes batches; a blob it holds part
        of, one larger than a batch, or any blob for an older server, with its own PUT."""
        if not self.batches:
            super().send_many(items, on_bytes, on_file)
            return
        single: list[Outgoing] = []
        batch: list[Outgoing] = []
        size = 0
        for item in items:
            entry = item.entry
            if self.offset(entry) or entry.size > BATCH_BYTES:
                single.append(item)
                continue
            if batch and (size + entry.size > BATCH_BYTES or len(batch) >= BATCH_FILES):
                self._send_batch(batch, on_bytes, on_file)
                batch, size = [], 0
            batch.append(item)
            size += entry.size
        if batch:
            self._send_batch(batch, on_bytes, on_file)
        super().send_many(single, on_bytes, on_file)

    def _send_batch(
        self,
        items: Sequence[Outgoing],
        on_bytes: OnBytes,
        on_file: Callable[[FileEntry], None],
    ) -> None:
        """One batch request (``<sha256> <size>\\n`` and the bytes, per blob); each blob's
        answer taken on its own. A refused or cut-short blob raises (retryable: a new
        session sends what is still missing) once every other blob was accounted for."""
        entries = [item.entry for item in items]
        what = f"upload of {len(entries)} files ({entries[0].path}, ...)"
        pieces: list[Piece] = []
        for item in items:
            pieces.append(f"{item.entry.sha256} {item.entry.size}\n".encode("ascii"))
            pieces.append((item.source, 0, item.entry.size))
        answer = put_pieces(
            self.client,
            self.client.batch_path(self.upload_id),
            pieces,
            on_bytes,
            headers={"Content-Type": BATCH_TYPE},
            what=what,
            ok=(200,),
            limit=ANSWER_LIMIT + BATCH_ANSWER_PER_FILE * len(entries),
        )
        # a cut batch needs no settling here: the server answers the next open once it has
        # stored what arrived (docs/upload-protocol.md, 2b)
        checked = self.client.batch_answer(
            answer,
            upload_id=self.upload_id,
            sent=[(e.sha256, e.size) for e in entries],
            what=what,
        )
        failed: list[tuple[FileEntry, BatchResult]] = []
        for entry, result in zip(entries, checked.results, strict=True):
            self._offsets[entry.sha256] = result.offset
            if result.complete:
                on_file(entry)
            else:
                failed.append((entry, result))
        if failed:
            raise self._batch_failure(failed, answer.url)

    def _batch_failure(self, failed: list[tuple[FileEntry, BatchResult]], url: str) -> AxonError:
        entry, result = failed[0]
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        if result.code is not None:
            text = (
                f"upload of {entry.path}: {self.client.endpoint} refused it{others}: "
                f"{result.message}"
            )
        else:
            text = f"upload of {entry.path}{others} stopped at byte {result.offset} of {entry.size}"
        err = RemoteError(
            text,
            target=self.client.name,
            url=url,
            hint="re-run to retry; the files the server took are not sent again",
        )
        return retryable(err, True)

    def prepare(self) -> None:
        if not self._prepared and self.settled is None:
            self.client.prepare_upload(self.upload_id, self.ref)
            self._prepared = True

    def commit(self) -> CommitInfo:
        if self.settled is not None:  # visible and registered as it is: no upload to commit
            answer = self.settled
        else:
            answer = self.client.commit_upload(self.upload_id, self.ref, self.manifest_sha256)
        self._done = True
        return CommitInfo(
            location=self.client.model_url(self.ref),
            path=answer.path,
            registered=True,
            details=answer.details,
        )

    def abort(self) -> None:
        if self._done or not self.upload_id:
            return
        self._done = True
        # best effort: the server expires idle uploads by itself
        with contextlib.suppress(TransportError):
            self.client.abort_upload(self.upload_id)


# ---- the transport --------------------------------------------------------------------------
class ApiTransport(Transport):
    """Publish through the MLOS Core upload API (``access_method: api``)."""

    method = "api"

    def __init__(self, client: MlosClient | str) -> None:
        """``client``: the instance's client, or its endpoint (then a client without a
        token, with the default timeout)."""
        self.client = client if isinstance(client, MlosClient) else MlosClient(client)
        self.endpoint = self.client.endpoint
        self._serves_manifests: bool | None = None  # GET /v1/models/{id}/manifest; None: unknown
        self._interrupted: set[str] = set()

    @classmethod
    def from_target(cls, target: InstanceTarget) -> Self:
        return cls(MlosClient.for_target(target))

    def describe(self) -> str:
        return self.endpoint

    def location(self, ref: ModelRef) -> str:
        """Where the instance serves ``ref`` (as its commit answer says)."""
        return self.client.model_url(ref)

    def open(self, ref: ModelRef, manifest: Manifest) -> ApiSession:
        session = ApiSession(self.client, ref, manifest, self.client.open_upload(ref, manifest))
        session.settle(self._interrupted)
        return session

    def fetch_manifest(self, ref: ModelRef) -> Manifest | None:
        """The manifest the server holds for ``ref`` (None when it has none)."""
        served, held = self.client.manifest(ref)
        self._serves_manifests = served
        if served:
            return held
        info = self.model_info(ref)  # an older server: its registration may carry one
        data = info.get("manifest") if info else None
        if isinstance(data, dict):
            return Manifest(data, source=f"{self.endpoint}:{ref.id}")
        if isinstance(data, str):
            return Manifest.from_text(data, source=f"{self.endpoint}:{ref.id}")
        return None

    def matches(self, ref: ModelRef, manifest: Manifest) -> bool:
        """Does the server hold exactly ``manifest`` for ``ref``?

        Asked through the manifest download where the server has it (never writing); an
        older server without it is asked by opening an upload, whose ``unchanged`` answer is
        the check, and dropping it at once.
        """
        if self._serves_manifests is not False:
            held = self.fetch_manifest(ref)  # learns whether the server serves manifests
            if self._serves_manifests:
                return held is not None and held.data == manifest.data
        session = self.open(ref, manifest)
        session.abort()
        return session.unchanged

    def model_info(self, ref: ModelRef) -> dict[str, Any] | None:
        """``GET /models/{id}``: the registration record, or None when not registered."""
        return self.client.model_info(ref)

    def close(self) -> None:
        self.client.close()
