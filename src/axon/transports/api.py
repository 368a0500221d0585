"""The ``api`` access method: upload to an MLOS Core over HTTP (docs/upload-protocol.md).

Protocol, as this transport drives it::

    POST /v1/uploads {model_id, manifest}      -> upload_id, needed [{sha256, size, offset}]
    PUT  /v1/uploads/{id}/blobs/{sha256}       body streamed from Upload-Offset to the end
    POST /v1/uploads/{id}/prepare              staged + verified, not visible (for --atomic)
    POST /v1/uploads/{id}/commit               one atomic rename + register on the server
    DELETE /v1/uploads/{id}                    abort

The server deduplicates by sha256 (``needed`` is per unique blob) and keeps partial blobs,
so re-opening after a cut connection resumes at ``offset``.

:class:`~axon.mlos_client.MlosClient` owns the endpoints, the token, the timeouts and the
mapping of HTTP answers to :mod:`axon.errors`; this module only moves a blob's bytes. On
plain http without a proxy they go from the page cache straight to the socket
(``sendfile``: no copy through Python, as fast as curl); otherwise httpx streams them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from axon.errors import RemoteError, TransportError, retryable
from axon.mlos_client import MlosClient, body_of, is_loopback
from axon.transports.base import CommitInfo, FileKey, Session, Transport
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from typing import Self

    from axon.targets import InstanceTarget

CHUNK = 4 * 1024 * 1024  # big chunks: few syscalls and Python round trips per GiB
SENDFILE_SLICE = 8 * 1024 * 1024  # progress is reported after each slice
SETTLE_SECONDS = 2.0  # longest wait for a cut blob's offset to stop moving


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
) -> tuple[int, dict[str, Any]]:
    """PUT ``length`` bytes of ``source`` from ``offset`` to ``path``; (status, JSON body).

    Raises the client's error for an answer outside ``ok`` or a lost connection.
    """
    if not _direct(client.endpoint):
        resp = client.request(
            "PUT",
            path,
            what=what,
            ok=ok,
            content=_stream(source, offset, length, on_bytes),
            headers={**headers, "Content-Length": str(length)},
        )
        return resp.status_code, body_of(resp)
    status, raw, reason = _sendfile_put(
        client, path, source, offset, length, on_bytes, headers, what
    )
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if status not in ok:
        raise client.status_error(status, body, client.endpoint + path, reason, what=what)
    return status, body


def _sendfile_put(
    client: MlosClient,
    path: str,
    source: Path,
    offset: int,
    length: int,
    on_bytes: OnBytes,
    headers: dict[str, str],
    what: str,
) -> tuple[int, bytes, str]:
    """The PUT over a raw connection (the client's headers and timeout): (status, body,
    reason). A connection failure becomes the client's error for it."""
    url = client.endpoint + path
    parts = urlsplit(client.endpoint)
    with open(source, "rb") as fh:  # local errors stay local: opened before connecting
        conn = http.client.HTTPConnection(
            parts.hostname or "localhost", parts.port or 80, timeout=client.timeout
        )
        sent_error: OSError | None = None  # a send failure: the server may have answered
        try:
            conn.putrequest("PUT", parts.path + path, skip_accept_encoding=True)
            for key, value in {**client.headers, **headers}.items():
                conn.putheader(key, value)
            conn.putheader("Content-Length", str(length))
            conn.endheaders()
            try:
                _sendfile(conn, fh, offset, length, on_bytes, source)
            except OSError as exc:
                if isinstance(exc, TransportError):
                    raise
                sent_error = exc  # read the answer anyway: a 507/413 says more than EPIPE
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.reason
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TransportError):
                raise
            cause = sent_error if sent_error is not None else exc
            raise client.network_error(cause, what=what, url=url) from exc
        finally:
            conn.close()


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
    conn: http.client.HTTPConnection,
    fh: IO[bytes],
    offset: int,
    length: int,
    on_bytes: OnBytes,
    source: Path,
) -> None:
    """Send ``length`` bytes of ``fh`` from ``offset`` over the connection's socket."""
    sock = conn.sock
    pos, left = offset, length
    while left > 0:
        sent = sock.sendfile(fh, pos, min(SENDFILE_SLICE, left))
        if not sent:
            raise TransportError(
                f"{source} became shorter while it was being sent",
                path=str(source),
                hint="do not change cached models during a publish",
            )
        pos += sent
        left -= sent
        on_bytes(sent)


def _stream(path: Path, offset: int, length: int, on_bytes: OnBytes) -> Iterator[bytes]:
    """The bytes of ``path`` from ``offset``, ``length`` of them, in big chunks."""
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


# ---- one upload -----------------------------------------------------------------------------
class ApiSession(Session):
    """One open upload (``upload_id``) on the server."""

    def __init__(
        self, client: MlosClient, ref: ModelRef, manifest: Manifest, answer: dict[str, Any]
    ) -> None:
        self.client = client
        self.ref = ref
        self.upload_id = str(answer.get("upload_id", ""))
        self.unchanged = bool(answer.get("unchanged", False))
        by_sha = {f.sha256: f for f in manifest.files}
        self._offsets: dict[str, int] = {}
        self.needed: list[FileEntry] = []
        for item in answer.get("needed") or []:
            sha = str(item.get("sha256", ""))
            entry = by_sha.get(sha)
            if entry is None:
                raise RemoteError(
                    f"upload of {ref}: server asked for unknown blob {sha[:12]}",
                    target=client.name,
                    hint="the server's answer does not match the manifest; check its version",
                )
            self._offsets[sha] = int(item.get("offset") or 0)
            self.needed.append(entry)
        self._prepared = False
        self._done = False
        #: blobs whose PUT was cut in this transport: shared by its sessions
        self.interrupted: set[str] = set()

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
                    self.upload_id, entry.sha256, what=f"offset of {entry.path}"
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
        """PUT the blob from the server's offset; a 409 re-syncs the offset once."""
        for _ in range(2):
            offset = self.offset(entry)
            if offset >= entry.size and entry.size > 0:
                return
            try:
                status, body = put_file(
                    self.client,
                    self.client.blob_path(self.upload_id, entry.sha256),
                    source,
                    offset,
                    entry.size - offset,
                    on_bytes,
                    headers={"Upload-Offset": str(offset)},
                    what=f"upload of {entry.path}",
                    ok=(200, 201, 409),
                )
            except BaseException:
                self.interrupted.add(entry.sha256)  # the next open() waits for the offset
                raise
            self._offsets[entry.sha256] = int(body.get("offset") or 0)
            if status == 201 or body.get("complete") is True:
                self._offsets[entry.sha256] = entry.size
                return
            if status == 200:
                break  # body ended early: let the orchestrator re-open and resume
        raise retryable(
            RemoteError(
                f"upload of {entry.path} stopped at byte {self.offset(entry)} of {entry.size}",
                target=self.client.name,
                hint="re-running resumes from there",
            ),
            True,
        )

    def prepare(self) -> None:
        if not self._prepared:
            self.client.prepare_upload(self.upload_id, self.ref)
            self._prepared = True

    def commit(self) -> CommitInfo:
        body = self.client.commit_upload(self.upload_id, self.ref)
        self._done = True
        path = body.get("path")
        return CommitInfo(
            location=self.client.model_url(self.ref),
            path=str(path) if path else None,
            registered=True,
            details=body,
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
        source = f"{self.endpoint}:{ref.id}"
        served, text = self.client.manifest(ref)
        self._serves_manifests = served
        if served:
            return Manifest.from_text(text, source=source) if text is not None else None
        info = self.model_info(ref)  # an older server: its registration may carry one
        data = info.get("manifest") if info else None
        if isinstance(data, dict):
            return Manifest(data, source=source)
        if isinstance(data, str):
            return Manifest.from_text(data, source=source)
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
