"""The ``api`` access method: upload to an MLOS Core over HTTP (docs/upload-protocol.md).

Protocol, as this client drives it::

    POST /v1/uploads {model_id, manifest}      -> upload_id, needed [{sha256, size, offset}]
    PUT  /v1/uploads/{id}/blobs/{sha256}       body streamed from Upload-Offset to the end
    POST /v1/uploads/{id}/prepare              staged + verified, not visible (for --atomic)
    POST /v1/uploads/{id}/commit               one atomic rename + register on the server
    DELETE /v1/uploads/{id}                    abort

The server deduplicates by sha256 (``needed`` is per unique blob) and keeps partial blobs,
so re-opening after a cut connection resumes at ``offset``. :class:`ApiClient` is the one
place where httpx exceptions and HTTP statuses become :mod:`axon.errors`; the notify and
status code reuse it for ``/models/register`` and ``/models/{id}``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from axon.errors import (
    AuthenticationError,
    AxonError,
    NoSpaceError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
    TransportError,
    retryable,
)
from axon.transports.base import CommitInfo, FileKey, Session, Transport
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.targets import InstanceTarget

# httpx's package import also loads its own command-line client (rich, pygments, click) when
# those are installed: a third of `axon publish`'s start-up. We never use it, so tell the
# import system it is absent (httpx then installs a stub `httpx.main`).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

CHUNK = 4 * 1024 * 1024  # big chunks: few syscalls and Python round trips per GiB
DEFAULT_TIMEOUT = 30.0
SENDFILE_SLICE = 8 * 1024 * 1024  # progress is reported after each slice
SETTLE_SECONDS = 2.0  # longest wait for a cut blob's offset to stop moving


def quote_id(model_id: str) -> str:
    """Percent-encode a whole model id for a URL path (COMPAT: ``hf%2Fbert%40latest``)."""
    return quote(model_id, safe="")


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiClient:
    """A small JSON client of one MLOS Core; every failure becomes an axon error.

    ``name`` is the target name used in messages (defaults to the endpoint).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.name = name or self.endpoint
        self.timeout = timeout
        headers = {"User-Agent": "axon-publish"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.headers = headers
        self._client = httpx.Client(
            base_url=self.endpoint,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            # plain http needs no TLS context (building one loads the CA bundle: slow)
            verify=self.endpoint.startswith("https:"),
            # never route loopback traffic through an environment proxy
            trust_env=not _is_loopback(self.endpoint),
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200, 201),
        **kw: Any,
    ) -> httpx.Response:
        """Send one request; raise the matching axon error unless the status is in ``ok``.

        ``what`` names the step for messages ("upload of weights.bin", "register").
        """
        url = self.endpoint + path
        try:
            resp = self._client.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise self.network_error(exc, what=what, url=url) from exc
        if resp.status_code not in ok:
            raise self.error_for(resp, what=what)
        return resp

    def put_file(
        self,
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
        """PUT ``length`` bytes of ``source`` from ``offset``; returns (status, JSON body).

        Plain http without a proxy goes straight from the page cache to the socket
        (``sendfile``: no copy through Python, as fast as curl); otherwise httpx streams it.
        """
        if not _direct(self.endpoint):
            resp = self.request(
                "PUT",
                path,
                what=what,
                ok=ok,
                content=_stream(source, offset, length, on_bytes),
                headers={**headers, "Content-Length": str(length)},
            )
            return resp.status_code, _body(resp)
        return self._sendfile_put(path, source, offset, length, on_bytes, headers, what, ok)

    def _sendfile_put(
        self,
        path: str,
        source: Path,
        offset: int,
        length: int,
        on_bytes: OnBytes,
        headers: dict[str, str],
        what: str,
        ok: tuple[int, ...],
    ) -> tuple[int, dict[str, Any]]:
        import http.client

        url = self.endpoint + path
        parts = urlsplit(self.endpoint)
        with open(source, "rb") as fh:  # local errors stay local: opened before connecting
            conn = http.client.HTTPConnection(
                parts.hostname or "localhost", parts.port or 80, timeout=self.timeout
            )
            sent_error: OSError | None = None  # a send failure: the server may have answered
            try:
                conn.putrequest("PUT", parts.path + path, skip_accept_encoding=True)
                for key, value in {**self.headers, **headers}.items():
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
                status, raw, reason = resp.status, resp.read(), resp.reason
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, TransportError):
                    raise
                cause = sent_error if sent_error is not None else exc
                raise self.network_error(cause, what=what, url=url) from exc
            finally:
                conn.close()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        if status not in ok:
            raise self.status_error(status, body, url, reason, what=what)
        return status, body

    def json(self, method: str, path: str, *, what: str, **kw: Any) -> dict[str, Any]:
        resp = self.request(method, path, what=what, **kw)
        return _body(resp)

    def error_for(self, resp: httpx.Response, *, what: str) -> AxonError:
        """The axon error for an unexpected HTTP answer (status, server code and message)."""
        return self.status_error(
            resp.status_code, _body(resp), str(resp.request.url), resp.reason_phrase, what=what
        )

    def status_error(
        self, status: int, body: dict[str, Any], url: str, reason: str, *, what: str
    ) -> AxonError:
        detail = str(body.get("message") or reason or "").strip()
        code = str(body.get("code") or "")
        text = f"{what}: {self.endpoint} answered {status}" + (f": {detail}" if detail else "")

        def make(cls: type[AxonError], hint: str, retry: bool = False) -> AxonError:
            err = cls(text, hint=hint, target=self.name, url=url, status=status)
            return retryable(err, retry)

        if status == 401:
            return make(AuthenticationError, "the instance refused the token: set token/token_env")
        if status == 403:
            return make(TargetPermissionError, "the token may not write this namespace")
        if status == 507 or code == "insufficient_storage":
            return make(NoSpaceError, "free space on the instance's models disk")
        if status == 413:
            return make(NoSpaceError, "the file is over the server's upload size limit")
        expired = status == 404 and "/v1/uploads/" in url  # re-open helps
        retry = expired or status >= 500 or status in (408, 409, 429) or code == "checksum_mismatch"
        return make(RemoteError, "re-run to retry" if retry else "see the server's log", retry)

    def network_error(self, exc: BaseException, *, what: str, url: str) -> AxonError:
        """A connection-level failure as a retryable TargetUnreachableError."""
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            text = f"{what}: {self.endpoint} did not answer in time ({type(exc).__name__})"
            hint = "check the instance is up and reachable; re-running resumes"
        elif isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
            text = f"{what}: cannot connect to {self.endpoint} ({exc})"
            hint = "check the instance is running and the endpoint/port is right"
        else:
            text = f"{what}: connection to {self.endpoint} lost ({type(exc).__name__}: {exc})"
            hint = "check the network; re-running resumes where it stopped"
        return retryable(TargetUnreachableError(text, target=self.name, url=url, hint=hint), True)


def _direct(endpoint: str) -> bool:
    """May a PUT skip httpx (plain http, and no environment proxy applies to it)?"""
    if not endpoint.startswith("http://"):
        return False
    if _is_loopback(endpoint):
        return True
    import urllib.request

    host = urlsplit(endpoint).hostname or ""
    proxies = urllib.request.getproxies()
    if "http" not in proxies and "all" not in proxies:  # httpx honours ALL_PROXY too
        return True
    return bool(urllib.request.proxy_bypass(host))


def _sendfile(
    conn: Any, fh: Any, offset: int, length: int, on_bytes: OnBytes, source: Path
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


def _body(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


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


class ApiSession(Session):
    """One open upload (``upload_id``) on the server."""

    def __init__(
        self, client: ApiClient, ref: ModelRef, manifest: Manifest, answer: dict[str, Any]
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
                now = self._head_offset(entry)
                still = still + 1 if now == last else 0
                if now == last and now > 0:
                    break
                last = now
            self._offsets[entry.sha256] = last

    def _head_offset(self, entry: FileEntry) -> int:
        resp = self.client.request(
            "HEAD", self._path(f"/blobs/{entry.sha256}"), what=f"offset of {entry.path}"
        )
        value = resp.headers.get("Upload-Offset", "0")
        return int(value) if value.isdigit() else 0

    def _path(self, suffix: str = "") -> str:
        return f"/v1/uploads/{quote(self.upload_id, safe='')}{suffix}"

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
                status, body = self.client.put_file(
                    self._path(f"/blobs/{entry.sha256}"),
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
            self.client.request("POST", self._path("/prepare"), what=f"prepare {self.ref}")
            self._prepared = True

    def commit(self) -> CommitInfo:
        body = self.client.json("POST", self._path("/commit"), what=f"commit {self.ref}")
        self._done = True
        path = body.get("path")
        return CommitInfo(
            location=f"{self.client.endpoint}/models/{quote_id(self.ref.id)}",
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
            self.client.request("DELETE", self._path(), what="abort", ok=(200, 202, 204, 404))


class ApiTransport(Transport):
    """Publish through the MLOS Core upload API (``access_method: api``)."""

    method = "api"

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.client = ApiClient(self.endpoint, token=token, timeout=timeout, name=name)
        self._serves_manifests: bool | None = None  # GET /v1/models/{id}/manifest; None: unknown
        self._interrupted: set[str] = set()

    @classmethod
    def from_target(cls, target: InstanceTarget) -> ApiTransport:
        token = target.token or _env_token(target)
        timeout = float(getattr(target, "timeout", None) or DEFAULT_TIMEOUT)
        return cls(target.endpoint, token=token, timeout=timeout, name=target.name)

    def describe(self) -> str:
        return self.endpoint

    def open(self, ref: ModelRef, manifest: Manifest) -> ApiSession:
        answer = self.client.json(
            "POST",
            "/v1/uploads",
            what=f"open upload of {ref}",
            json={"model_id": ref.id, "manifest": manifest.data},
        )
        session = ApiSession(self.client, ref, manifest, answer)
        session.settle(self._interrupted)
        return session

    def fetch_manifest(self, ref: ModelRef) -> Manifest | None:
        """The manifest the server holds for ``ref`` (None when it has none)."""
        what = f"manifest of {ref}"
        resp = self.client.request(
            "GET", f"/v1/models/{quote_id(ref.id)}/manifest", what=what, ok=(200, 404, 405)
        )
        if resp.status_code == 200:
            self._serves_manifests = True
            return Manifest.from_text(resp.content, source=f"{self.endpoint}:{ref.id}")
        if _body(resp).get("code") == "unknown_model":
            self._serves_manifests = True
            return None  # the server has the endpoint: it has no such model
        self._serves_manifests = False
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
        resp = self.client.request(
            "GET", f"/models/{quote_id(ref.id)}", what=f"status of {ref}", ok=(200, 404)
        )
        if resp.status_code == 404:
            return None
        body = _body(resp)
        model = body.get("model")
        return model if isinstance(model, dict) else body

    def close(self) -> None:
        self.client.close()


def _env_token(target: InstanceTarget) -> str | None:
    name = getattr(target, "token_env", None)
    return os.environ.get(name) if name else None
