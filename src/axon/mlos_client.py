"""The one client of an MLOS Core instance's HTTP API (docs/upload-protocol.md).

Everything axon says to an instance goes through :class:`MlosClient`: it alone knows the
endpoints, quotes model ids into paths, sends the bearer token, applies the timeouts and
turns httpx exceptions and HTTP answers into :mod:`axon.errors`::

    GET    /health                            health()          never raises: a Health
    POST   /models/register                   register()
    GET    /models/{id}                       model_info(), is_registered()
    DELETE /models/{id}                       delete_model()
    POST   /models/scan                       scan()            (S3 readers pull)
    GET    /v1/models/{id}/manifest           manifest()
    POST   /v1/models/{id}/rollback           rollback()
    POST   /v1/uploads                        open_upload()
    HEAD   /v1/uploads/{u}/blobs/{sha256}     blob_offset()
    PUT    /v1/uploads/{u}/blobs/{sha256}     blob_path(): the bytes themselves are moved by
                                              axon.transports.api (sendfile on plain http)
    POST   /v1/uploads/{u}/prepare            prepare_upload()
    POST   /v1/uploads/{u}/commit             commit_upload()
    DELETE /v1/uploads/{u}                    abort_upload()

Answers outside a call's expected statuses become errors (:meth:`MlosClient.status_error`)::

    401                              AuthenticationError
    403                              TargetPermissionError
    507 / code insufficient_storage  NoSpaceError
    413                              NoSpaceError (over the upload size limit)
    anything else                    RemoteError; retryable for 5xx, 408, 409, 429,
                                     checksum_mismatch and an expired upload (404 on it)
    no answer at all                 TargetUnreachableError (retryable)

Every error names the target, the URL and the status, with a hint of what to do next.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from axon.errors import (
    AuthenticationError,
    AxonError,
    NoSpaceError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
    retryable,
)
from modelpkg.layout import MANIFEST_NAME

if TYPE_CHECKING:
    import httpx

    from axon.targets import InstanceTarget
    from modelpkg.manifest import Manifest
    from modelpkg.refs import ModelRef

DEFAULT_TIMEOUT = 30.0
HEALTH_TIMEOUT = 5.0  # a probe: an instance that takes longer is not one to publish to
CONNECT_TIMEOUT = 10.0  # the most a connect may take, whatever the call's timeout


# httpx is imported inside the methods that use it: a filesystem or SSH publish never needs
# it, and it is a large part of start-up. Its package import also loads its own command-line
# client (rich, pygments, click) when those are installed; we never use it, so tell the
# import system it is absent (httpx then installs a stub ``httpx.main``).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def quote_id(model_id: str) -> str:
    """Percent-encode a whole model id for a URL path (``hf%2Fbert%40latest``), as the
    upstream Go axon does (docs/compatibility.md)."""
    return quote(model_id, safe="")


def is_loopback(url: str) -> bool:
    """Does ``url`` name this host (``localhost`` or a loopback address)?"""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register_payload(
    ref: ModelRef, instance_path: str | None, manifest: Manifest | None = None
) -> dict[str, Any]:
    """The ``POST /models/register`` body; ``path`` is the model directory as the instance
    sees it (docs/compatibility.md)."""
    payload: dict[str, Any] = {"model_id": ref.id, "name": ref.name}
    if manifest is not None:
        for key, value in (
            ("framework", manifest.framework),
            ("execution_format", manifest.execution_format),
            ("description", manifest.metadata.get("description")),
        ):
            if value:
                payload[key] = str(value)
    if instance_path:
        path = instance_path.rstrip("/")
        payload["path"] = path
        payload["manifest_path"] = f"{path}/{MANIFEST_NAME}"
    return payload


def already_registered(message: str) -> bool:
    """Upstream MLOS Core answers a second register of the same model with an error status
    whose message says so; its own tests treat that as success, and so do we."""
    return "already registered" in message.lower()


@dataclass(frozen=True)
class NoAnswer:
    """Why a request got no HTTP answer: ``kind`` is ``timeout``, ``connect`` or ``other``;
    ``name`` and ``message`` are those of the underlying exception."""

    kind: str
    name: str
    message: str


@dataclass(frozen=True)
class Health:
    """What ``GET /health`` answered, or why nothing did. Healthy means a 200 whose JSON
    object says ``"status": "healthy"``; :attr:`problem` says why not in one line."""

    url: str
    code: int | None = None  # the HTTP status; None when no answer came (see no_answer)
    body: Any = None  # the decoded JSON answer, whatever its type
    is_json: bool = False
    text: str = ""  # the start of the answer, for messages
    no_answer: NoAnswer | None = None

    @property
    def status(self) -> str | None:
        """The ``status`` word of a JSON-object answer."""
        return self.body.get("status") if isinstance(self.body, dict) else None

    @property
    def version(self) -> str | None:
        value = self.body.get("version") if isinstance(self.body, dict) else None
        return str(value) if value is not None else None

    @property
    def problem(self) -> str | None:
        """None when healthy, else why not (one line naming the URL)."""
        if self.no_answer is not None:
            return f"GET {self.url} failed: {self.no_answer.name}: {self.no_answer.message}"
        if self.code != 200:
            return f"GET {self.url} answered HTTP {self.code}"
        if not isinstance(self.body, dict):
            return f"GET {self.url} did not answer a JSON object"
        status = self.body.get("status")
        return None if status == "healthy" else f"GET {self.url} says status {status!r}"


def _no_answer(exc: BaseException) -> NoAnswer:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        kind = "connect"
    elif isinstance(exc, httpx.TimeoutException):
        kind = "timeout"
    else:
        kind = "other"
    return NoAnswer(kind, type(exc).__name__, str(exc))


def body_of(resp: httpx.Response) -> dict[str, Any]:
    """The JSON object of an answer; {} when it is not one."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class MlosClient:
    """A client of one MLOS Core instance; every failure becomes an axon error.

    ``name`` is the target name used in messages (defaults to the endpoint); ``token`` is
    sent as ``Authorization: Bearer``; ``timeout`` bounds each network operation (connects
    at most :data:`CONNECT_TIMEOUT`). Close it (or use it as a context manager).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
    ) -> None:
        import httpx

        self.endpoint = endpoint.rstrip("/")
        self.name = name or self.endpoint
        self.timeout = timeout
        headers = {"User-Agent": "axon-publish"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        #: what every request carries (the raw-socket blob PUT of the API transport too)
        self.headers = headers
        self._client: httpx.Client = httpx.Client(
            base_url=self.endpoint,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            # plain http needs no TLS context (building one loads the CA bundle: slow)
            verify=self.endpoint.startswith("https:"),
            # never route loopback traffic through an environment proxy
            trust_env=not is_loopback(self.endpoint),
        )

    @classmethod
    def for_target(cls, target: InstanceTarget, timeout: float | None = None) -> MlosClient:
        """The client of instance ``target``: its endpoint, token (the config resolved
        ``token_env`` into it) and timeout, unless ``timeout`` is given."""
        limit = timeout or float(target.timeout or DEFAULT_TIMEOUT)
        return cls(target.endpoint, token=target.token, timeout=limit, name=target.name)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MlosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the HTTP exchange -----------------------------------------------------------
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
        import httpx

        url = self.endpoint + path
        try:
            resp = self._client.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise self.network_error(exc, what=what, url=url) from exc
        if resp.status_code not in ok:
            raise self.error_for(resp, what=what)
        return resp

    def json(self, method: str, path: str, *, what: str, **kw: Any) -> dict[str, Any]:
        """:meth:`request`, answering the JSON object of the answer ({} if none)."""
        return body_of(self.request(method, path, what=what, **kw))

    def error_for(self, resp: httpx.Response, *, what: str) -> AxonError:
        """The axon error for an unexpected HTTP answer (status, server code and message)."""
        return self.status_error(
            resp.status_code, body_of(resp), str(resp.request.url), resp.reason_phrase, what=what
        )

    def status_error(
        self, status: int, body: dict[str, Any], url: str, reason: str, *, what: str
    ) -> AxonError:
        """The axon error for HTTP ``status`` with JSON ``body`` (the table in the module
        docstring). Public for senders that read the answer themselves (raw sockets)."""
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
        """A connection-level failure (httpx's or a raw socket's) as a retryable
        TargetUnreachableError."""
        import httpx

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

    # ---- instance and models ---------------------------------------------------------
    def health(self) -> Health:
        """``GET /health``. Never raises for the instance's sake: a down instance is a
        Health with ``no_answer`` set."""
        import httpx

        url = self.endpoint + "/health"
        try:
            resp = self._client.get("/health")
        except httpx.HTTPError as exc:
            return Health(url, no_answer=_no_answer(exc))
        try:
            body, is_json = resp.json(), True
        except ValueError:
            body, is_json = None, False
        return Health(url, resp.status_code, body, is_json, resp.text[:200])

    def model_url(self, ref: ModelRef) -> str:
        """Where the instance serves ``ref``'s registration (``.../models/{id}``)."""
        return f"{self.endpoint}/models/{quote_id(ref.id)}"

    def register(
        self, ref: ModelRef, instance_path: str | None, manifest: Manifest | None = None
    ) -> dict[str, Any]:
        """``POST /models/register`` for files already on the instance; the answer's JSON.

        A refusal raises RemoteError (``<endpoint> answered <status>: <message>``), unless
        it says the model is already registered (see :func:`already_registered`).
        """
        resp = self.request(
            "POST",
            "/models/register",
            what=f"register {ref}",
            ok=(200, 201, 400, 409, 500),
            json=register_payload(ref, instance_path, manifest),
        )
        body = body_of(resp)
        if resp.status_code in (200, 201):
            return body
        message = str(body.get("message") or resp.reason_phrase)
        if already_registered(message):
            return body
        raise RemoteError(
            f"{self.endpoint} answered {resp.status_code}: {message}",
            target=self.name,
            url=self.endpoint + "/models/register",
            status=resp.status_code,
        )

    def model_info(self, ref: ModelRef) -> dict[str, Any] | None:
        """``GET /models/{id}``: the registration record, or None when not registered."""
        resp = self.request(
            "GET", f"/models/{quote_id(ref.id)}", what=f"status of {ref}", ok=(200, 404)
        )
        if resp.status_code == 404:
            return None
        body = body_of(resp)
        model = body.get("model")
        return model if isinstance(model, dict) else body

    def is_registered(self, ref: ModelRef) -> bool:
        """``GET /models/{id}`` answers 200: the instance has ``ref`` registered."""
        return self.model_info(ref) is not None

    def scan(self) -> None:
        """``POST /models/scan``: look for new models (an S3 reader pulls them)."""
        self.request("POST", "/models/scan", what="scan for new models", ok=(200, 201, 202))

    def manifest(self, ref: ModelRef) -> tuple[bool, bytes | None]:
        """``GET /v1/models/{id}/manifest`` as ``(served, text)``: ``served`` is False for an
        older server without the endpoint (ask :meth:`model_info` then); ``text`` is None
        when the server has no such model."""
        resp = self.request(
            "GET",
            f"/v1/models/{quote_id(ref.id)}/manifest",
            what=f"manifest of {ref}",
            ok=(200, 404, 405),
        )
        if resp.status_code == 200:
            return True, resp.content
        if body_of(resp).get("code") == "unknown_model":
            return True, None  # the server has the endpoint: it has no such model
        return False, None

    def rollback(self, ref: ModelRef) -> None:
        """``POST /v1/models/{id}/rollback``: swap the previous generation (kept by the
        server at each commit) back in."""
        path = f"/v1/models/{quote_id(ref.id)}/rollback"
        self.request("POST", path, what=f"undo (POST {path})", ok=(200,))

    def delete_model(self, ref: ModelRef) -> None:
        """``DELETE /models/{id}``: remove the model (undo of a first publish)."""
        path = f"/models/{quote_id(ref.id)}"
        self.request("DELETE", path, what=f"undo (DELETE {path})", ok=(200,))

    # ---- resumable uploads -----------------------------------------------------------
    def open_upload(self, ref: ModelRef, manifest: Manifest) -> dict[str, Any]:
        """``POST /v1/uploads``: the answer names the upload and the blobs it still needs."""
        return self.json(
            "POST",
            "/v1/uploads",
            what=f"open upload of {ref}",
            json={"model_id": ref.id, "manifest": manifest.data},
        )

    def upload_path(self, upload_id: str, suffix: str = "") -> str:
        return f"/v1/uploads/{quote(upload_id, safe='')}{suffix}"

    def blob_path(self, upload_id: str, sha256: str) -> str:
        """The path a blob's bytes are PUT to (``Upload-Offset`` says from where)."""
        return self.upload_path(upload_id, f"/blobs/{sha256}")

    def blob_offset(self, upload_id: str, sha256: str, *, what: str) -> int:
        """``HEAD`` of a blob: how many of its bytes the server holds."""
        resp = self.request("HEAD", self.blob_path(upload_id, sha256), what=what)
        value = resp.headers.get("Upload-Offset", "0")
        return int(value) if value.isdigit() else 0

    def prepare_upload(self, upload_id: str, ref: ModelRef) -> None:
        """Stage the upload verified and invisible (``--atomic``: commit later)."""
        self.request("POST", self.upload_path(upload_id, "/prepare"), what=f"prepare {ref}")

    def commit_upload(self, upload_id: str, ref: ModelRef) -> dict[str, Any]:
        """Make the upload the visible version and register it; the server's answer."""
        return self.json("POST", self.upload_path(upload_id, "/commit"), what=f"commit {ref}")

    def abort_upload(self, upload_id: str) -> None:
        """Drop the upload (its partial blobs stay while another upload needs them)."""
        self.request("DELETE", self.upload_path(upload_id), what="abort", ok=(200, 202, 204, 404))


__all__ = [
    "DEFAULT_TIMEOUT",
    "HEALTH_TIMEOUT",
    "Health",
    "MlosClient",
    "NoAnswer",
    "already_registered",
    "body_of",
    "is_loopback",
    "quote_id",
    "register_payload",
]
