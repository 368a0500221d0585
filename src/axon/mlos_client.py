"""The one client of an MLOS Core instance's HTTP API (docs/upload-protocol.md).

Everything axon says to an instance goes through :class:`MlosClient`: it alone knows the
endpoints, quotes model ids into paths, sends the bearer token, applies the time and size
limits, checks every answer and turns httpx exceptions and HTTP answers into
:mod:`axon.errors`::

    GET    /health                            health()          never raises: a Health
    POST   /models/register                   register()
    GET    /models/{id}                       model_info(), is_registered()
    DELETE /models/{id}                       delete_model()
    POST   /models/scan                       scan()            (S3 readers pull)
    GET    /v1/models/{id}/manifest           manifest()
    POST   /v1/models/{id}/rollback           rollback()
    POST   /v1/uploads                        open_upload()     -> OpenAnswer
    HEAD   /v1/uploads/{u}/blobs/{sha256}     blob_offset()
    PUT    /v1/uploads/{u}/blobs/{sha256}     blob_path(), blob_answer() -> BlobAnswer: the
                                              bytes themselves are moved by
                                              axon.transports.api (sendfile on plain http)
    PUT    /v1/uploads/{u}/blobs              batch_path(), batch_answer() -> BatchAnswer:
                                              many small blobs in one body (when the open
                                              answer says ``blob_batches``)
    POST   /v1/uploads/{u}/prepare            prepare_upload()
    POST   /v1/uploads/{u}/commit             commit_upload()   -> CommitAnswer
    DELETE /v1/uploads/{u}                    abort_upload()
    GET    /models                            list_models()     (ids; axon sync)
    GET    /v1/relay                          relay_info()      -> RelayInfo (None: no relay)
    POST   /v1/pulls                          start_pull()      -> PullStatus (docs/relay.md)
    GET    /v1/pulls/{p}?wait=S               pull_status()     -> PullStatus
    DELETE /v1/pulls/{p}                      cancel_pull()

Nothing an instance answers is trusted (docs/upload-protocol.md#what-the-client-checks):

* **Time.** Each connect and each read or write waits at most ``timeout`` seconds, and a
  whole exchange has a :class:`Budget`: sending the request may take ``timeout`` seconds plus
  one second per :data:`MIN_RATE` bytes sent, and so may receiving the answer; a server that
  drips its answer a byte at a time is cut off there.
* **Size.** An answer is read up to a cap (:data:`ANSWER_LIMIT`; an open answer grows with the
  manifest, a manifest download may be :data:`MANIFEST_LIMIT`), never decompressed
  (``Accept-Encoding: identity``), never held whole beyond the cap.
* **Shape.** Every answer that claims success is parsed by the typed parser of its call
  (:class:`OpenAnswer`, :class:`BlobAnswer`, :class:`CommitAnswer`, ...): a JSON object with
  ``"status": "success"``, each field of its type and range, about the model and upload that
  were asked, a commit naming the digest of the manifest that was sent. Anything else is a
  :class:`ProtocolError` (exit 7, never retried) naming the instance, the URL and what was
  wrong. Redirects are not followed.

Answers outside a call's expected statuses become errors (:meth:`MlosClient.error_for`)::

    401                              AuthenticationError
    403                              TargetPermissionError
    507 / code insufficient_storage  NoSpaceError
    413                              NoSpaceError (over the upload size limit)
    3xx                              ProtocolError (redirects are not followed)
    anything else                    RemoteError; retryable for 5xx, 408, 409, 429,
                                     checksum_mismatch and an expired upload (404 on it)
    no answer at all, or too slow    TargetUnreachableError (retryable)

Every error names the target, the URL and the status, with a hint of what to do next; text
the server wrote is shortened and stripped of control characters before it is shown.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

from axon.errors import (
    AuthenticationError,
    AxonError,
    ConfigError,
    ManifestError,
    NoSpaceError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
    retryable,
)
from modelpkg.layout import MANIFEST_NAME
from modelpkg.manifest import MAX_MANIFEST_BYTES, Manifest
from modelpkg.signing import CODES as SIGNATURE_CODES
from modelpkg.signing import SignatureError

if TYPE_CHECKING:
    import httpx

    from axon.targets import InstanceTarget
    from modelpkg.refs import ModelRef

DEFAULT_TIMEOUT = 30.0
HEALTH_TIMEOUT = 5.0  # a probe: an instance that takes longer is not one to publish to
CONNECT_TIMEOUT = 10.0  # the most a connect may take, whatever the call's timeout

#: bytes per second: each direction of an exchange may take ``timeout`` seconds plus one
#: second per MIN_RATE bytes it moved (a 1 GiB blob: timeout + 4.5 h at the very least)
MIN_RATE = 64 * 1024
KiB, MiB = 1024, 1024 * 1024
ANSWER_LIMIT = 1 * MiB  # a control answer: commit, register, prepare, a blob's PUT, ...
ERROR_LIMIT = 64 * KiB  # what is read of an error answer (its message)
HEALTH_LIMIT = 64 * KiB
MANIFEST_LIMIT = MAX_MANIFEST_BYTES  # a manifest download, a registration record
HEAD_ROOM = 256 * KiB  # an answer's head (and interim 1xx heads) on top of its body
SHOWN = 300  # characters of server-written text in a message
#: characters of an error answer's own message: longer, as it often ends with what to do
#: (cut at a sentence or clause end when over)
ERROR_SHOWN = 600

#: an upload id: what the client puts in paths; mlos-core's are ``u-`` + 24 hex digits
UPLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
STATES = ("open", "prepared")
BATCHES = "blob_batches"  # the open answer's field: PUT /v1/uploads/{id}/blobs takes a batch


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


def shown(value: object, limit: int = SHOWN) -> str:
    """Server-written text made safe to print: control characters (terminal escapes, line
    breaks) replaced, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(value)[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_message(value: str, limit: int = ERROR_SHOWN) -> str:
    """:func:`shown` for an error answer's message: over ``limit``, cut after the last
    sentence or clause that fits (so its advice is not cut mid-word), else at ``limit``."""
    text = shown(value, limit)
    if not text.endswith("...") or len(value) <= limit:
        return text
    head = text[: limit - 3]
    end = max(head.rfind(". "), head.rfind("; "), head.rfind(": "))
    return head[: end + 1] + " ..." if end >= limit // 2 else text


class ProtocolError(RemoteError):
    """The instance answered, but not as the MLOS Core protocol says: not JSON, a field
    missing or of the wrong type, an offset outside the blob, an upload id that cannot be
    one, a commit of another manifest, an answer too large. Never retried: the same server
    answers the same way. Exit 7, like every transport failure."""

    retryable = False


# ---- the budget of one exchange -------------------------------------------------------------
class SendTimeout(TimeoutError):
    """The server took no bytes of a request for the operation's timeout."""


class OverBudget(Exception):
    """An exchange ran past its :class:`Budget`: too slow (``slow``), or an answer with more
    bytes on the wire than its call allows. The message says how far it got."""

    def __init__(self, message: str, *, slow: bool) -> None:
        super().__init__(message)
        self.slow = slow


class Budget:
    """How long one request/answer exchange may still take.

    Each direction (``send``: connecting and sending the request, ``receive``: the answer)
    may take ``timeout`` seconds plus one second per ``rate`` bytes moved in it; the clock of
    ``receive`` starts when the first answer byte is awaited. Every socket wait is the
    shorter of the operation's own timeout and what is left (:meth:`wait`); once nothing is
    left, :class:`OverBudget`. So is an answer of more than ``receive_limit`` bytes on the
    wire, head and all (an endless stream of ``100 Continue`` heads, say).
    """

    SEND, RECEIVE = "send", "receive"

    def __init__(
        self, timeout: float, *, rate: float = MIN_RATE, receive_limit: int | None = None
    ) -> None:
        self.timeout = timeout
        self.rate = rate
        self.receive_limit = receive_limit
        self.direction = self.SEND
        self.started = time.monotonic()
        self.moved = 0

    def _enter(self, direction: str) -> None:
        if direction != self.direction:
            self.direction, self.started, self.moved = direction, time.monotonic(), 0

    def left(self, direction: str) -> float:
        """Seconds left for ``direction``; raises OverBudget when none are."""
        self._enter(direction)
        elapsed = time.monotonic() - self.started
        left = self.timeout + self.moved / self.rate - elapsed
        if left <= 0:
            what = "sent" if direction == self.SEND else "received"
            raise OverBudget(
                f"{self.moved} bytes {what} in {elapsed:.1f} s, slower than the "
                f"{self.timeout:g} s plus 1 s per {MIN_RATE // KiB} KiB allowed",
                slow=True,
            )
        return left

    def wait(self, direction: str, timeout: float | None) -> float:
        """How long the next socket operation in ``direction`` may block."""
        left = self.left(direction)
        return left if timeout is None else min(timeout, left)

    def timed_out(self, direction: str) -> None:
        """A socket operation timed out: OverBudget when bytes were moving, but too slowly;
        plain silence stays the operation's own timeout."""
        if self.moved:
            self.left(direction)

    def count(self, n: int) -> None:
        self.moved += n
        limit = self.receive_limit
        if self.direction == self.RECEIVE and limit is not None and self.moved > limit:
            raise OverBudget(f"more than {_size(limit)} in its answer", slow=False)

    @contextlib.contextmanager
    def applied(self) -> Iterator[Budget]:
        """Make this the budget of the exchanges this thread runs meanwhile."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "axon_exchange_budget", default=None
)
WRITE_SLICE = 64 * KiB  # writes are cut so the budget is checked between the slices


class _BudgetStream:
    """An httpcore network stream whose reads and writes keep to the current Budget."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        budget = _CURRENT.get()
        if budget is None:
            data: bytes = self._inner.read(max_bytes, timeout)
            return data
        try:
            data = self._inner.read(max_bytes, budget.wait(Budget.RECEIVE, timeout))
        except httpcore.ReadTimeout:
            budget.timed_out(Budget.RECEIVE)
            raise
        budget.count(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        budget = _CURRENT.get()
        if budget is None:
            self._inner.write(buffer, timeout)
            return
        view = memoryview(buffer)
        for start in range(0, len(view), WRITE_SLICE):
            piece = view[start : start + WRITE_SLICE]
            try:
                self._inner.write(piece, budget.wait(Budget.SEND, timeout))
            except httpcore.WriteTimeout:
                budget.timed_out(Budget.SEND)
                raise
            budget.count(len(piece))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _BudgetStream:
        budget = _CURRENT.get()
        wait = budget.wait(Budget.SEND, timeout) if budget else timeout
        return _BudgetStream(self._inner.start_tls(ssl_context, server_hostname, wait))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _BudgetBackend:
    """An httpcore network backend whose connections keep to the current Budget."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def _wait(self, timeout: float | None) -> float | None:
        budget = _CURRENT.get()
        return budget.wait(Budget.SEND, timeout) if budget else timeout

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> _BudgetStream:
        inner = self._inner.connect_tcp(
            host, port, self._wait(timeout), local_address, socket_options
        )
        return _BudgetStream(inner)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> _BudgetStream:
        inner = self._inner.connect_unix_socket(path, self._wait(timeout), socket_options)
        return _BudgetStream(inner)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _keep_to_budgets(client: httpx.Client) -> None:
    """Put every connection pool of ``client`` (its transport and the proxies' from the
    environment) on a :class:`_BudgetBackend`.

    httpx has no total timeout (encode/httpx#1450) and no public way to pass a network
    backend; httpcore's pools take one, and httpx keeps its pool as ``_pool``. Should that
    change, this raises at once rather than leaving answers without a deadline.
    """
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        if transport is None:
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            raise RuntimeError(
                f"cannot bound answer times: httpx {type(transport).__name__} has no "
                "httpcore pool with a network backend (httpx changed?)"
            )
        if not isinstance(backend, _BudgetBackend):
            pool._network_backend = _BudgetBackend(backend)  # type: ignore[union-attr]


# ---- answers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One HTTP answer as read within its limits. ``content`` is at most the limit the call
    allowed; ``truncated`` says there was more (or the declared length was larger)."""

    status: int
    reason: str
    headers: Mapping[str, str]  # names in lower case
    content: bytes
    url: str
    truncated: bool = False

    @property
    def encoding(self) -> str:
        return self.headers.get("content-encoding", "identity").strip().lower() or "identity"

    def start(self) -> str:
        """The start of the body, printable, for messages."""
        return shown(self.content[:80].decode("utf-8", "replace"), 80)

    def error_fields(self) -> tuple[str, str]:
        """``(code, message)`` of an error answer's JSON (empty when it has none)."""
        try:
            data = json.loads(self.content)
        except (ValueError, RecursionError):
            return "", ""
        if not isinstance(data, dict):
            return "", ""
        code, message = data.get("code"), data.get("message")
        return (
            code if isinstance(code, str) else "",
            shown_message(message) if isinstance(message, str) else "",
        )


def read_capped(chunks: Iterable[bytes], declared: int | None, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a body, and whether there was more. A declared length over
    the limit reads nothing."""
    if declared is not None and declared > limit:
        return b"", True
    body = bytearray()
    for chunk in chunks:
        room = limit - len(body)
        if len(chunk) > room:
            body += chunk[:room]
            return bytes(body), True
        body += chunk
    return bytes(body), False


class Invalid(Exception):
    """An answer's content is not what its call expects; the message says what is wrong."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


class Fields:
    """The JSON object of an answer, read field by field, each of the type (and in the range)
    its call expects; the first deviation is :class:`Invalid`, naming the field."""

    def __init__(self, data: object, where: str = "the answer") -> None:
        if not isinstance(data, dict):
            raise Invalid(f"{where} is {_kind(data)}, not a JSON object")
        self.data: dict[str, Any] = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}'s {key!r}" if self.where != "the answer" else repr(key)

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.data or (optional and self.data[key] is None):
            if optional:
                return None
            raise Invalid(f"{self._name(key)} is missing")
        return self.data[key]

    def text(
        self, key: str, *, optional: bool = False, pattern: re.Pattern[str] | None = None
    ) -> str | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise Invalid(f"{self._name(key)} is {_kind(value)}, not text")
        if pattern is not None and not pattern.fullmatch(value):
            raise Invalid(f"{self._name(key)} {shown(value, 80)!r} is not a valid {key}")
        return value

    def required_text(self, key: str, *, pattern: re.Pattern[str] | None = None) -> str:
        value = self.text(key, pattern=pattern)
        assert value is not None
        return value

    def byte_count(self, key: str, *, high: int) -> int:
        """A whole number from 0 to ``high`` (booleans and fractions are not numbers here)."""
        value = self._get(key, False)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{self._name(key)} is {_kind(value)}, not a byte count")
        if not 0 <= value <= high:
            raise Invalid(f"{self._name(key)} is {value}, outside 0..{high}")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key, False)
        if not isinstance(value, bool):
            raise Invalid(f"{self._name(key)} is {_kind(value)}, not true or false")
        return value

    def objects(self, key: str) -> list[Fields]:
        value = self._get(key, False)
        if not isinstance(value, list):
            raise Invalid(f"{self._name(key)} is {_kind(value)}, not a list")
        return [Fields(item, f"{self._name(key)}[{i}]") for i, item in enumerate(value)]

    def texts(self, key: str) -> list[str]:
        value = self._get(key, False)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Invalid(f"{self._name(key)} is not a list of text")
        return list(value)

    def success(self) -> None:
        """``"status": "success"``, as every successful answer of the API says."""
        status = self._get("status", False)
        if status != "success":
            message = self.data.get("message")
            said = f": {shown(message)}" if isinstance(message, str) and message else ""
            raise Invalid(f"'status' is {shown(status, 40)!r}, not 'success'{said}")

    def same(self, key: str, expected: str) -> str:
        """A text field that must say ``expected`` (the model or upload that was asked)."""
        value = self.required_text(key)
        if value != expected:
            raise Invalid(f"{self._name(key)} is {shown(value, 120)!r}, not {expected!r}")
        return value


@dataclass(frozen=True)
class Needed:
    """One blob the server still needs: its bytes from ``offset`` on."""

    sha256: str
    size: int
    offset: int
    paths: tuple[str, ...]


@dataclass(frozen=True)
class OpenAnswer:
    """``POST /v1/uploads`` answered: the upload, what it needs and what the server has."""

    upload_id: str
    unchanged: bool
    needed: tuple[Needed, ...]
    have: tuple[str, ...]
    manifest_sha256: str
    #: the server takes many blobs in one ``PUT /v1/uploads/{id}/blobs`` (older ones do not)
    batches: bool = False
    #: a conditional open answered "unchanged" without opening an upload: the model is
    #: visible and registered as it is (the registration's answer); nothing to commit
    settled: CommitAnswer | None = None

    @classmethod
    def parse(
        cls, data: object, *, ref: ModelRef, manifest: Manifest, digest: str | None = None
    ) -> OpenAnswer:
        """Check an open answer against the model id and the manifest that were sent:
        every needed blob one of the manifest's with its size, its offset within it, each
        path once in ``needed`` or ``have``, and the digest of the manifest that was sent
        (``digest``, when the request named it: then the answer may also be the settled one,
        no upload and ``unchanged`` true, for exactly that digest)."""
        f = Fields(data)
        f.success()
        f.same("model_id", ref.id)
        digest = digest or manifest.digest()
        if "upload_id" in f.data and f.data["upload_id"] is None:
            return cls._settled(f, data, ref=ref, digest=digest)
        upload_id = f.required_text("upload_id", pattern=UPLOAD_ID)
        unchanged = f.flag("unchanged")
        digest = f.same("manifest_sha256", digest)
        f.text("expires_at", optional=True)
        state = f.text("state", optional=True)
        if state is not None and state not in STATES:
            raise Invalid(f"'state' is {shown(state, 40)!r}, not one of {', '.join(STATES)}")
        sizes = {e.sha256: e.size for e in manifest.files}
        paths_of: dict[str, set[str]] = {}
        for e in manifest.files:
            paths_of.setdefault(e.sha256, set()).add(e.path)
        needed: list[Needed] = []
        asked: set[str] = set()
        covered: list[str] = []
        for item in f.objects("needed"):
            sha = item.required_text("sha256", pattern=SHA256)
            if sha not in sizes:
                raise Invalid(f"{item.where} asks for blob {sha}, which the manifest lacks")
            if sha in asked:
                raise Invalid(f"{item.where} asks for blob {sha} a second time")
            asked.add(sha)
            size = item.byte_count("size", high=sizes[sha])
            if size != sizes[sha]:
                raise Invalid(f"{item.where} says blob {sha} has {size} bytes, not {sizes[sha]}")
            offset = item.byte_count("offset", high=size)
            paths = item.texts("paths")
            if set(paths) != paths_of[sha]:
                raise Invalid(f"{item.where}'s 'paths' are not the files of blob {sha}")
            covered += paths
            needed.append(Needed(sha, size, offset, tuple(paths)))
        have = f.texts("have")
        covered += have
        listed = sorted(e.path for e in manifest.files)
        if sorted(covered) != listed:
            raise Invalid(
                "'needed' and 'have' together do not list each of the manifest's "
                f"{len(listed)} files once"
            )
        if unchanged and needed:
            raise Invalid("'unchanged' is true but 'needed' is not empty")
        batches = f.flag(BATCHES) if BATCHES in f.data else False
        return cls(upload_id, unchanged, tuple(needed), tuple(have), digest, batches)

    @classmethod
    def _settled(cls, f: Fields, data: object, *, ref: ModelRef, digest: str) -> OpenAnswer:
        """No upload: the server says the visible version is the manifest of ``digest``,
        registered (a commit answer's fields) with nothing to send."""
        if not f.flag("unchanged"):
            raise Invalid("'upload_id' is null but 'unchanged' is not true")
        if f.data.get("needed"):
            raise Invalid("'upload_id' is null but 'needed' is not empty")
        settled = CommitAnswer.parse(data, ref=ref, manifest_sha256=digest)
        return cls("", True, (), (), digest, settled=settled)


@dataclass(frozen=True)
class BlobAnswer:
    """A blob's ``PUT`` answered: whole (``complete``), or where the server stands."""

    complete: bool
    offset: int

    @classmethod
    def parse(cls, status: int, data: object, *, sha256: str, size: int) -> BlobAnswer:
        """``201`` whole (sha256 and offset = size), ``200`` cut short (offset < size), or
        ``409`` elsewhere (offset within the blob)."""
        f = Fields(data)
        if status == 409:  # an error answer: {"status": "error", ..., "offset": N}
            return cls(False, f.byte_count("offset", high=size))
        f.success()
        f.same("sha256", sha256)
        offset = f.byte_count("offset", high=size)
        complete = f.flag("complete")
        if complete != (status == 201) or complete != (offset == size):
            raise Invalid(
                f"HTTP {status} with 'complete' {str(complete).lower()} at offset {offset} "
                f"of {size} bytes does not add up"
            )
        return cls(complete, offset)


@dataclass(frozen=True)
class BatchResult:
    """One blob of a batch answered: stored (``complete``), cut short at ``offset``, or
    refused (``code`` and ``message``, nothing kept)."""

    sha256: str
    complete: bool
    offset: int
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class BatchAnswer:
    """``PUT /v1/uploads/{id}/blobs`` answered: one result per blob sent, in order."""

    results: tuple[BatchResult, ...]

    @classmethod
    def parse(cls, data: object, *, upload_id: str, sent: Sequence[tuple[str, int]]) -> BatchAnswer:
        """Success for the upload, and ``blobs`` answering each ``(sha256, size)`` of ``sent``
        once, in order: ``complete`` exactly when the offset is the size and no ``code``
        says it was refused; a refused blob kept nothing (offset 0)."""
        f = Fields(data)
        f.success()
        f.same("upload_id", upload_id)
        items = f.objects("blobs")
        if len(items) != len(sent):
            raise Invalid(f"'blobs' answers {len(items)} blobs, not the {len(sent)} sent")
        results = []
        for item, (sha, size) in zip(items, sent, strict=True):
            item.same("sha256", sha)
            offset = item.byte_count("offset", high=size)
            complete = item.flag("complete")
            code = item.text("code", optional=True)
            message = item.text("message", optional=True)
            if code is not None:
                if complete or offset:
                    raise Invalid(
                        f"{item.where} refuses blob {sha[:12]} ({shown(code, 40)}) but says "
                        f"'complete' {str(complete).lower()} at offset {offset}"
                    )
                message = shown(message or code)
            elif complete != (offset == size):
                raise Invalid(
                    f"{item.where}: 'complete' {str(complete).lower()} at offset {offset} of "
                    f"{size} bytes does not add up"
                )
            results.append(BatchResult(sha, complete, offset, code, message))
        return cls(tuple(results))


@dataclass(frozen=True)
class CommitAnswer:
    """``POST /v1/uploads/{id}/commit`` answered: the model is visible and registered."""

    path: str | None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: object, *, ref: ModelRef, manifest_sha256: str) -> CommitAnswer:
        """Success, for ``ref``, naming the digest of the manifest that was sent."""
        f = Fields(data)
        f.success()
        f.same("model_id", ref.id)
        f.same("manifest_sha256", manifest_sha256)
        path = f.text("path", optional=True)
        f.text("inference_endpoint", optional=True)
        return cls(shown(path, 4096) if path else None, dict(f.data))


@dataclass(frozen=True)
class RelayInfo:
    """``GET /v1/relay`` answered: the address peers reach this instance at, whether it can
    pull, and which sources it accepts (their base URLs, as it compares them)."""

    advertise: str
    instance_id: str | None = None
    cluster: str | None = None
    pull: bool = False
    blobs: bool = False
    peers: tuple[str, ...] = ()
    accept_from: tuple[str, ...] = ()
    catching_up: bool = False
    #: serves a blob it is still receiving (``GET /v1/blobs/{sha}?follow=1``)
    cut_through: bool = False

    @property
    def can_pull(self) -> bool:
        """It pulls, and from somewhere: an instance given no peers cannot."""
        return self.pull and bool(self.peers)

    @property
    def why_not(self) -> str:
        """Why it cannot pull ("" when it can)."""
        if not self.pull:
            return "this mlos-core does not pull (GET /v1/relay says pull: false)"
        if not self.peers:
            return "it has no peers (start it with --cluster/--discovery or --peer URL)"
        return ""

    @classmethod
    def parse(cls, data: object) -> RelayInfo:
        f = Fields(data)
        f.success()
        advertise = f.required_text("advertise")
        if not advertise.startswith(("http://", "https://")):
            raise Invalid(f"'advertise' {shown(advertise, 80)!r} is not an http(s) URL")
        names = ("pull", "blobs", "catching_up", "cut_through")
        flags = {k: f.flag(k) if k in f.data else False for k in names}
        lists = {k: tuple(f.texts(k)) if k in f.data else () for k in ("peers", "accept_from")}
        return cls(
            advertise.rstrip("/"),
            f.text("instance_id", optional=True),
            f.text("cluster", optional=True),
            flags["pull"],
            flags["blobs"],
            tuple(p.rstrip("/") for p in lists["peers"]),
            lists["accept_from"],
            flags["catching_up"],
            flags["cut_through"],
        )


PULL_STATES = ("queued", "running", "committed", "prepared", "failed", "cancelled")
PULL_FINAL = ("committed", "prepared", "failed", "cancelled")
PULL_ID = UPLOAD_ID
BIG = 2**63 - 1


@dataclass(frozen=True)
class PullTry:
    """A source a pull gave up on, and why."""

    source: str
    code: str
    message: str


@dataclass(frozen=True)
class PullStatus:
    """A pull's status document (``POST /v1/pulls``, ``GET /v1/pulls/{id}``), checked: about
    the model and build that were asked, byte counts in range, a known state. ``pull_id``
    is None when the instance already showed that build (``unchanged``)."""

    pull_id: str | None
    state: str
    upload_id: str | None = None
    source: str | None = None
    tried: tuple[PullTry, ...] = ()
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_fetched: int = 0
    code: str | None = None
    message: str | None = None
    unchanged: bool = False
    joined: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in PULL_FINAL

    @classmethod
    def parse(
        cls, data: object, *, ref: ModelRef, digest: str, pull_id: str | None = None
    ) -> PullStatus:
        f = Fields(data)
        f.success()
        f.same("model_id", ref.id)
        f.same("manifest_sha256", digest)
        if f.data.get("pull_id") is None:  # the build is visible already: nothing pulled
            if not f.flag("unchanged") or f.data.get("state") != "committed":
                raise Invalid("'pull_id' is null but the answer is not 'unchanged' and committed")
            return cls(None, "committed", unchanged=True, result=dict(f.data))
        found = f.required_text("pull_id", pattern=PULL_ID)
        if pull_id is not None and found != pull_id:
            raise Invalid(f"'pull_id' is {shown(found, 80)!r}, not {pull_id!r}")
        state = f.required_text("state")
        if state not in PULL_STATES:
            raise Invalid(f"'state' is {shown(state, 40)!r}, not one of {', '.join(PULL_STATES)}")
        tried = tuple(
            PullTry(
                shown(t.required_text("source"), 200),
                shown(t.text("code", optional=True) or "", 60),
                shown(t.text("message", optional=True) or ""),
            )
            for t in (f.objects("tried") if f.data.get("tried") is not None else [])
        )
        counts = {k: f.byte_count(k, high=BIG) if k in f.data else 0 for k in _COUNTS}
        if counts["bytes_done"] > counts["bytes_total"]:
            raise Invalid("'bytes_done' is more than 'bytes_total'")
        result = f.data.get("result")
        if state == "committed" and isinstance(result, dict):
            CommitAnswer.parse(result, ref=ref, manifest_sha256=digest)
        source = f.text("source", optional=True)
        code, message = f.text("code", optional=True), f.text("message", optional=True)
        return cls(
            found,
            state,
            f.text("upload_id", optional=True, pattern=UPLOAD_ID),
            shown(source, 200) if source else None,
            tried,
            counts["bytes_total"],
            counts["bytes_done"],
            counts["bytes_fetched"],
            shown(code, 60) if code else None,
            shown(message) if message else None,
            joined=bool(f.data.get("joined") is True),
            result=dict(result) if isinstance(result, dict) else {},
        )


_COUNTS = ("bytes_total", "bytes_done", "bytes_fetched")


class _Refused(Exception):
    """A ``POST /models/register`` answered 2xx with ``"status": "error"``: a refusal."""


def parse_register(data: object, *, ref: ModelRef) -> dict[str, Any]:
    """``POST /models/register`` answered 200/201: success for ``ref`` (or "already
    registered"). A plain ``"status": "error"`` is the server's refusal: RemoteError."""
    f = Fields(data)
    message = f.text("message", optional=True) or ""
    if f.data.get("status") == "error":
        if already_registered(message):
            return f.data
        raise _Refused(shown(message) or "status error, no message")
    f.success()
    f.same("model_id", ref.id)
    f.text("inference_endpoint", optional=True)
    return f.data


def parse_record(data: object, *, ref: ModelRef) -> dict[str, Any]:
    """``GET /models/{id}`` answered 200: the registration record (``model`` when the answer
    nests it, as mlos-core's does)."""
    f = Fields(data)
    if "status" in f.data:
        f.success()
    record = Fields(f.data["model"], "'model'") if "model" in f.data else f
    if "id" in record.data:
        record.same("id", ref.id)
    return record.data


def blob_offset_header(headers: Mapping[str, str], *, size: int) -> int:
    """A ``HEAD`` answer's ``Upload-Offset``: a byte count within the blob's ``size``, its
    ``Upload-Length`` (when given) the blob's size."""
    raw = headers.get("upload-offset")
    if raw is None:
        raise Invalid("it has no Upload-Offset header")
    if not (raw.isascii() and raw.isdigit()) or int(raw) > size:
        raise Invalid(f"Upload-Offset {shown(raw, 40)!r} is not a byte count within 0..{size}")
    length = headers.get("upload-length")
    if length is not None and length != str(size):
        raise Invalid(f"Upload-Length {shown(length, 40)!r} is not the blob's size {size}")
    return int(raw)


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
    text: str = ""  # the start of the answer, printable, for messages
    no_answer: NoAnswer | None = None
    invalid: str | None = None  # an answer no MLOS Core gives (too large, compressed)

    @property
    def status(self) -> str | None:
        """The ``status`` word of a JSON-object answer."""
        value = self.body.get("status") if isinstance(self.body, dict) else None
        return shown(value, 40) if isinstance(value, str) else None

    @property
    def version(self) -> str | None:
        value = self.body.get("version") if isinstance(self.body, dict) else None
        return shown(value, 40) if isinstance(value, str | int | float) else None

    @property
    def problem(self) -> str | None:
        """None when healthy, else why not (one line naming the URL)."""
        if self.no_answer is not None:
            return f"GET {self.url} failed: {self.no_answer.name}: {self.no_answer.message}"
        if self.invalid is not None:
            return f"GET {self.url}: {self.invalid}"
        if self.code != 200:
            return f"GET {self.url} answered HTTP {self.code}"
        if not isinstance(self.body, dict):
            return f"GET {self.url} did not answer a JSON object"
        status = self.status
        return None if status == "healthy" else f"GET {self.url} says status {status!r}"


def _unknown_host(exc: BaseException) -> bool:
    """The connection failed because the host name does not exist in DNS (not a DNS server
    that could not be reached: that may pass)."""
    import socket

    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> socket.gaierror
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror):
            return seen.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
        seen = seen.__cause__ or seen.__context__
    return False


def _no_answer(exc: BaseException) -> NoAnswer:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        kind = "connect"
    elif isinstance(exc, httpx.TimeoutException | OverBudget):
        kind = "timeout"
    else:
        kind = "other"
    return NoAnswer(kind, type(exc).__name__, shown(exc))


T = TypeVar("T")


class MlosClient:
    """A client of one MLOS Core instance; every failure becomes an axon error.

    ``name`` is the target name used in messages (defaults to the endpoint); ``token`` is
    sent as ``Authorization: Bearer``; ``timeout`` bounds each connect (at most
    :data:`CONNECT_TIMEOUT`), read and write, and with :data:`MIN_RATE` the whole of each
    exchange (:class:`Budget`). Close it (or use it as a context manager).
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
        # identity: an answer is capped as it comes, not after a decompression bomb
        headers = {"User-Agent": "axon-publish", "Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        #: what every request carries (the raw-socket blob PUT of the API transport too)
        self.headers = headers
        self._client: httpx.Client = httpx.Client(
            base_url=self.endpoint,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            follow_redirects=False,
            # plain http needs no TLS context (building one loads the CA bundle: slow)
            verify=self.endpoint.startswith("https:"),
            # never route loopback traffic through an environment proxy
            trust_env=not is_loopback(self.endpoint),
        )
        _keep_to_budgets(self._client)

    @classmethod
    def for_target(cls, target: InstanceTarget, timeout: float | None = None) -> MlosClient:
        """The client of instance ``target``: its endpoint, token (the config resolved
        ``token_env`` into it) and timeout, unless ``timeout`` is given. A ``token_env``
        whose variable is unset is a ConfigError here, before any request."""
        if target.token_env and not target.token:
            raise ConfigError(
                f"target {target.name!r} takes its token from the environment variable "
                f"{target.token_env}, which is not set (or is empty): nothing was sent",
                target=target.name,
                hint=f"export {target.token_env}=<the instance's token> and run again",
            )
        limit = timeout or float(target.timeout or DEFAULT_TIMEOUT)
        return cls(target.endpoint, token=target.token, timeout=limit, name=target.name)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MlosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the HTTP exchange -----------------------------------------------------------
    def budget(self, limit: int = ANSWER_LIMIT) -> Budget:
        """The budget of one exchange with this client's timeout, whose answer may have
        ``limit`` bytes of body (twice that on the wire, chunked, plus its head)."""
        return Budget(self.timeout, receive_limit=2 * max(limit, ERROR_LIMIT) + HEAD_ROOM)

    def fetch(
        self, method: str, path: str, *, limit: int, ok: tuple[int, ...] = (), **kw: Any
    ) -> Answer:
        """Send one request and read its answer within the budget: at most ``limit`` bytes
        of an answer whose status is in ``ok`` (else :data:`ERROR_LIMIT`; with no ``ok``,
        ``limit`` for any status). Raises only httpx's transport errors and
        :class:`OverBudget`."""
        with self.budget(limit).applied(), self._client.stream(method, path, **kw) as resp:
            cap = limit if resp.status_code in ok or not ok else ERROR_LIMIT
            content, truncated = read_capped(
                resp.iter_raw(), declared_length(resp.headers.get("content-length")), cap
            )
            return Answer(
                resp.status_code,
                resp.reason_phrase,
                {k.lower(): v for k, v in resp.headers.items()},
                content,
                str(resp.request.url),
                truncated,
            )

    def exchange(
        self,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200, 201),
        limit: int = ANSWER_LIMIT,
        **kw: Any,
    ) -> Answer:
        """Send one request; raise the matching axon error unless the status is in ``ok``
        and the answer is whole, within ``limit`` bytes, uncompressed.

        ``what`` names the step for messages ("upload of weights.bin", "register").
        """
        import httpx

        url = self.endpoint + path
        try:
            answer = self.fetch(method, path, limit=limit, ok=ok, **kw)
        except OverBudget as exc:
            raise self.over_budget(exc, what=what, url=url) from None
        except httpx.TransportError as exc:
            raise self.network_error(exc, what=what, url=url) from exc
        return self.accept(answer, what=what, ok=ok, limit=limit)

    def accept(self, answer: Answer, *, what: str, ok: tuple[int, ...], limit: int) -> Answer:
        """``answer`` when its status is in ``ok`` and its body whole and plain; the error
        for it otherwise. Public for senders that read the answer themselves (raw sockets)."""
        if answer.status not in ok:
            raise self.error_for(answer, what=what)
        if answer.encoding != "identity":
            raise self.invalid(
                answer, f"it is encoded ({shown(answer.encoding, 40)}), not plain", what=what
            )
        if answer.truncated:
            raise self.invalid(answer, f"it is larger than {_size(limit)}", what=what)
        return answer

    def parsed(self, answer: Answer, parse: Callable[[object], T], *, what: str) -> T:
        """``parse`` of the answer's JSON; a ProtocolError naming what is wrong with it."""
        try:
            data = json.loads(answer.content)
        except (ValueError, RecursionError):
            kind = answer.headers.get("content-type", "no Content-Type")
            start = answer.start()
            raise self.invalid(
                answer,
                f"it is not JSON ({shown(kind, 60)}" + (f", starts {start!r})" if start else ")"),
                what=what,
            ) from None
        try:
            return parse(data)
        except Invalid as exc:
            raise self.invalid(answer, str(exc), what=what) from None

    def invalid(self, answer: Answer, why: str, *, what: str) -> ProtocolError:
        """The error for an answer no MLOS Core gives."""
        err = ProtocolError(
            f"{what}: {self.endpoint} answered {answer.status}, not as MLOS Core does: {why}",
            target=self.name,
            url=answer.url,
            status=answer.status,
            hint="check that the endpoint is an MLOS Core instance (mlos-core) and its version",
        )
        return err

    def error_for(self, answer: Answer, *, what: str) -> AxonError:
        """The axon error for an answer outside the expected statuses (the table in the
        module docstring): the status, the server's code and message."""
        status, url = answer.status, answer.url
        code, message = answer.error_fields()
        detail = message or shown(answer.reason, 80)
        text = f"{what}: {self.endpoint} answered {status}" + (f": {detail}" if detail else "")

        def make(cls: type[AxonError], hint: str, retry: bool = False) -> AxonError:
            err = cls(text, hint=hint, target=self.name, url=url, status=status)
            return retryable(err, retry)

        if 300 <= status < 400:
            where = shown(answer.headers.get("location", "nowhere"), 200)
            return self.invalid(
                answer,
                f"a redirect to {where} (axon does not follow redirects: "
                "use the instance's own address)",
                what=what,
            )
        if code in SIGNATURE_CODES and 400 <= status < 500:  # refused for its signature: exit 5
            hint = None if "axon sign" in text else "sign it with a key the instance trusts"
            return SignatureError(
                text, code=code, hint=hint, target=self.name, url=url, status=status
            )
        if status == 401:
            if "Authorization" not in self.headers:  # make() words it with this text
                text = f"{what}: {self.endpoint} answered 401: it needs a token and none was sent"
                return make(
                    AuthenticationError,
                    "configure token_env for this target, or for an address given on the "
                    "command line pass --token-env NAME or set AXON_TOKEN",
                )
            return make(AuthenticationError, "the instance refused the token: check its value")
        if code == "not_a_peer":  # a pull naming a source the instance was not given
            return make(RemoteError, "give it that peer: mlos-core --peer URL or --accept-from C")
        if status == 403:
            return make(TargetPermissionError, "the token may not write this namespace")
        if status == 507 or code == "insufficient_storage":
            return make(NoSpaceError, "free space on the instance's models disk")
        if code in ("too_many_files", "too_many_duplicates"):
            return make(RemoteError, "ask its operator to raise --max-files / --max-duplicates")
        if status == 413:
            return make(NoSpaceError, "the file is over the server's upload size limit")
        if code == "model_overlap":  # the same answer however often it is asked
            return make(RemoteError, "publish it under another name or version")
        expired = status == 404 and "/v1/uploads/" in url  # re-open helps
        retry = expired or status >= 500 or status in (408, 409, 429) or code == "checksum_mismatch"
        return make(RemoteError, "re-run to retry" if retry else "see the server's log", retry)

    def network_error(self, exc: BaseException, *, what: str, url: str) -> AxonError:
        """A connection-level failure (httpx's or a raw socket's) as a retryable
        TargetUnreachableError."""
        import httpx

        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            if isinstance(exc, httpx.ConnectTimeout):
                did = "did not accept the connection in time"
            elif isinstance(exc, httpx.WriteTimeout | SendTimeout):
                did = f"took no bytes of the request for {self.timeout:g} s"
            else:
                did = "did not answer in time"
            text = f"{what}: {self.endpoint} {did} ({type(exc).__name__})"
            hint = "check the instance is up and reachable; re-running resumes"
        elif _unknown_host(exc):  # no retry makes a name resolve: say so at once
            host = urlsplit(self.endpoint).hostname
            text = f"{what}: the host name {host!r} of {self.endpoint} does not resolve"
            hint = f"check the endpoint of {self.name!r} (`axon targets show {self.name}`)"
            return retryable(
                TargetUnreachableError(text, target=self.name, url=url, hint=hint), False
            )
        elif isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
            text = f"{what}: cannot connect to {self.endpoint} ({shown(exc)})"
            hint = "check the instance is running and the endpoint/port is right"
        elif isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
            text = f"{what}: {self.endpoint} broke HTTP ({shown(exc)})"
            hint = "check that the endpoint is an MLOS Core instance (mlos-core)"
        else:
            text = f"{what}: connection to {self.endpoint} lost ({type(exc).__name__}: {exc})"
            hint = "check the network; re-running resumes where it stopped"
        return retryable(TargetUnreachableError(text, target=self.name, url=url, hint=hint), True)

    def over_budget(self, exc: OverBudget, *, what: str, url: str) -> AxonError:
        """An exchange that ran past its budget: too slow is a retryable
        TargetUnreachableError, too large a ProtocolError."""
        if not exc.slow:
            return ProtocolError(
                f"{what}: {self.endpoint} sent {exc}, more than MLOS Core does",
                target=self.name,
                url=url,
                hint="check that the endpoint is an MLOS Core instance (mlos-core) and its version",
            )
        err = TargetUnreachableError(
            f"{what}: {self.endpoint} is too slow: {exc}",
            target=self.name,
            url=url,
            hint="check the instance and the network; --timeout S allows more",
        )
        return retryable(err, True)

    # ---- instance and models ---------------------------------------------------------
    def health(self) -> Health:
        """``GET /health``. Never raises for the instance's sake: a down instance is a
        Health with ``no_answer`` set."""
        import httpx

        url = self.endpoint + "/health"
        try:
            answer = self.fetch("GET", "/health", limit=HEALTH_LIMIT)
        except OverBudget as exc:
            if not exc.slow:
                return Health(url, invalid=f"sent {exc}")
            return Health(url, no_answer=_no_answer(exc))
        except httpx.HTTPError as exc:
            return Health(url, no_answer=_no_answer(exc))
        text = answer.start()
        if answer.truncated or answer.encoding != "identity":
            why = "answer larger than 64 KiB" if answer.truncated else "answer is encoded"
            return Health(url, answer.status, text=text, invalid=why)
        try:
            body, is_json = json.loads(answer.content), True
        except (ValueError, RecursionError):
            body, is_json = None, False
        return Health(url, answer.status, body, is_json, text)

    def model_url(self, ref: ModelRef) -> str:
        """Where the instance serves ``ref``'s registration (``.../models/{id}``)."""
        return f"{self.endpoint}/models/{quote_id(ref.id)}"

    def register(
        self, ref: ModelRef, instance_path: str | None, manifest: Manifest | None = None
    ) -> dict[str, Any]:
        """``POST /models/register`` for files already on the instance; the answer's JSON.

        A refusal raises RemoteError (``<endpoint> answered <status>: <message>``), unless
        it says the model is already registered (see :func:`already_registered`); an answer
        that is no MLOS Core's raises ProtocolError.
        """
        what = f"register {ref}"
        answer = self.exchange(
            "POST",
            "/models/register",
            what=what,
            ok=(200, 201, 400, 409, 500),
            **_json(register_payload(ref, instance_path, manifest)),
        )
        message = answer.error_fields()[1]
        if answer.status in (200, 201):
            try:
                return self.parsed(answer, lambda d: parse_register(d, ref=ref), what=what)
            except _Refused as exc:
                message = str(exc)
        elif already_registered(message):
            return {"status": "success", "model_id": ref.id, "message": message}
        raise RemoteError(
            f"{what}: {self.endpoint} answered {answer.status}: {message or answer.reason}",
            target=self.name,
            url=self.endpoint + "/models/register",
            status=answer.status,
        )

    def model_info(self, ref: ModelRef) -> dict[str, Any] | None:
        """``GET /models/{id}``: the registration record, or None when not registered."""
        what = f"status of {ref}"
        answer = self.exchange(
            "GET", f"/models/{quote_id(ref.id)}", what=what, ok=(200, 404), limit=MANIFEST_LIMIT
        )
        if answer.status == 404:
            return None
        return self.parsed(answer, lambda d: parse_record(d, ref=ref), what=what)

    def is_registered(self, ref: ModelRef) -> bool:
        """``GET /models/{id}`` answers 200: the instance has ``ref`` registered."""
        return self.model_info(ref) is not None

    def scan(self) -> None:
        """``POST /models/scan``: look for new models (an S3 reader pulls them)."""
        what = "scan for new models"
        answer = self.exchange("POST", "/models/scan", what=what, ok=(200, 201, 202))
        self.parsed(answer, lambda d: Fields(d).success(), what=what)

    def manifest(self, ref: ModelRef) -> tuple[bool, Manifest | None]:
        """``GET /v1/models/{id}/manifest`` as ``(served, manifest)``: ``served`` is False
        for an older server without the endpoint (ask :meth:`model_info` then); the manifest
        is None when the server has no such model. A manifest that does not parse is the
        server's fault: ProtocolError."""
        what = f"manifest of {ref}"
        answer = self.exchange(
            "GET",
            f"/v1/models/{quote_id(ref.id)}/manifest",
            what=what,
            ok=(200, 404, 405),
            limit=MANIFEST_LIMIT,
        )
        if answer.status == 200:
            return True, self.manifest_in(answer, answer.content, what=what)
        if answer.error_fields()[0] == "unknown_model":
            return True, None  # the server has the endpoint: it has no such model
        return False, None

    def manifest_in(self, answer: Answer, text: str | bytes, *, what: str) -> Manifest:
        """The manifest an answer carries; ProtocolError when it is none."""
        try:
            return Manifest.from_text(text, source=f"{self.endpoint}: {what}")
        except ManifestError as exc:
            raise self.invalid(
                answer, f"its manifest is invalid: {exc.message}", what=what
            ) from None

    def rollback(self, ref: ModelRef) -> None:
        """``POST /v1/models/{id}/rollback``: swap the previous generation (kept by the
        server at each commit) back in."""
        path = f"/v1/models/{quote_id(ref.id)}/rollback"
        what = f"undo (POST {path})"
        answer = self.exchange("POST", path, what=what, ok=(200,))
        self.parsed(answer, lambda d: _success_for(d, ref), what=what)

    def delete_model(self, ref: ModelRef) -> None:
        """``DELETE /models/{id}``: remove the model (undo of a first publish)."""
        path = f"/models/{quote_id(ref.id)}"
        what = f"undo (DELETE {path})"
        answer = self.exchange("DELETE", path, what=what, ok=(200,))
        self.parsed(answer, lambda d: _success_for(d, ref), what=what)

    # ---- resumable uploads -----------------------------------------------------------
    def open_upload(self, ref: ModelRef, manifest: Manifest) -> OpenAnswer:
        """``POST /v1/uploads``: the upload, the blobs it still needs, checked against what
        was sent (the manifest as the server stores it: :meth:`Manifest.as_uploaded`)."""
        what = f"open upload of {ref}"
        sent = manifest.as_uploaded(ref.namespace, ref.name, ref.version)
        digest = sent.digest()
        # conditional: a server already showing that manifest answers "unchanged" without
        # opening an upload (older servers ignore the field and open one)
        body = _json({"model_id": ref.id, "manifest": sent.data, "manifest_sha256": digest})
        # the answer lists the manifest's files again: its cap grows with the manifest
        limit = ANSWER_LIMIT + 2 * len(body["content"])
        answer = self.exchange("POST", "/v1/uploads", what=what, limit=limit, **body)
        return self.parsed(
            answer,
            lambda d: OpenAnswer.parse(d, ref=ref, manifest=sent, digest=digest),
            what=what,
        )

    def upload_path(self, upload_id: str, suffix: str = "") -> str:
        return f"/v1/uploads/{quote(upload_id, safe='')}{suffix}"

    def blob_path(self, upload_id: str, sha256: str) -> str:
        """The path a blob's bytes are PUT to (``Upload-Offset`` says from where)."""
        return self.upload_path(upload_id, f"/blobs/{sha256}")

    def blob_answer(self, answer: Answer, *, sha256: str, size: int, what: str) -> BlobAnswer:
        """The checked answer to a blob's ``PUT`` (status 200, 201 or 409)."""
        return self.parsed(
            answer,
            lambda d: BlobAnswer.parse(answer.status, d, sha256=sha256, size=size),
            what=what,
        )

    def batch_path(self, upload_id: str) -> str:
        """The path many blobs are PUT to in one body (``<sha256> <size>\\n`` + bytes each)."""
        return self.upload_path(upload_id, "/blobs")

    def batch_answer(
        self, answer: Answer, *, upload_id: str, sent: Sequence[tuple[str, int]], what: str
    ) -> BatchAnswer:
        """The checked answer to a batch ``PUT`` (status 200)."""
        return self.parsed(
            answer,
            lambda d: BatchAnswer.parse(d, upload_id=upload_id, sent=sent),
            what=what,
        )

    def blob_offset(self, upload_id: str, sha256: str, *, size: int, what: str) -> int:
        """``HEAD`` of a blob: how many of its ``size`` bytes the server holds."""
        answer = self.exchange("HEAD", self.blob_path(upload_id, sha256), what=what, ok=(200,))
        try:
            return blob_offset_header(answer.headers, size=size)
        except Invalid as exc:
            raise self.invalid(answer, str(exc), what=what) from None

    def prepare_upload(self, upload_id: str, ref: ModelRef) -> None:
        """Stage the upload verified and invisible (``--atomic``: commit later)."""
        what = f"prepare {ref}"
        answer = self.exchange(
            "POST", self.upload_path(upload_id, "/prepare"), what=what, ok=(200,)
        )

        def check(data: object) -> None:
            f = Fields(data)
            f.success()
            if f.text("state") != "prepared":
                raise Invalid(f"'state' is {shown(f.data['state'], 40)!r}, not 'prepared'")

        self.parsed(answer, check, what=what)

    def commit_upload(self, upload_id: str, ref: ModelRef, manifest_sha256: str) -> CommitAnswer:
        """Make the upload the visible version and register it; the checked answer (it must
        name ``manifest_sha256``, the digest of the manifest the upload was opened with)."""
        what = f"commit {ref}"
        answer = self.exchange("POST", self.upload_path(upload_id, "/commit"), what=what, ok=(200,))
        return self.parsed(
            answer,
            lambda d: CommitAnswer.parse(d, ref=ref, manifest_sha256=manifest_sha256),
            what=what,
        )

    def abort_upload(self, upload_id: str) -> None:
        """Drop the upload (its partial blobs stay while another upload needs them)."""
        self.exchange(
            "DELETE",
            self.upload_path(upload_id),
            what="abort",
            ok=(200, 202, 204, 404),
            limit=ERROR_LIMIT,
        )

    # ---- relay: instances pull from each other (docs/relay.md) ------------------------
    def relay_info(self) -> RelayInfo | None:
        """``GET /v1/relay``: this instance's peer address and whether it can pull; None for
        a server without relay (404/405)."""
        what = "relay info"
        answer = self.exchange("GET", "/v1/relay", what=what, ok=(200, 404, 405))
        if answer.status != 200:
            return None
        return self.parsed(answer, RelayInfo.parse, what=what)

    def start_pull(
        self,
        ref: ModelRef,
        manifest: Manifest,
        sources: Sequence[str],
        *,
        commit: bool = True,
        fallback: bool = True,
    ) -> PullStatus:
        """``POST /v1/pulls``: the instance fetches ``ref`` (exactly ``manifest``, sent as an
        upload sends it) from ``sources`` (peer URLs, preferred first); ``commit`` false stops
        at a prepared upload (commit it with :meth:`commit_upload`)."""
        what = f"pull of {ref}"
        sent = manifest.as_uploaded(ref.namespace, ref.name, ref.version)
        digest = sent.digest()
        body = {
            "model_id": ref.id,
            "manifest_sha256": digest,
            "manifest": sent.data,
            "sources": list(sources),
            "commit": commit,
            "fallback": fallback,
        }
        answer = self.exchange("POST", "/v1/pulls", what=what, ok=(200, 202), **_json(body))
        return self.parsed(answer, lambda d: PullStatus.parse(d, ref=ref, digest=digest), what=what)

    def pull_status(
        self, pull_id: str, *, ref: ModelRef, digest: str, wait: float = 0.0
    ) -> PullStatus:
        """``GET /v1/pulls/{id}``, answered when the pull is final or after ``wait`` s."""
        what = f"pull of {ref}"
        path = f"/v1/pulls/{quote(pull_id, safe='')}"
        if wait > 0:
            path += f"?wait={min(wait, 30.0):g}"
        answer = self.exchange("GET", path, what=what, ok=(200,))
        return self.parsed(
            answer,
            lambda d: PullStatus.parse(d, ref=ref, digest=digest, pull_id=pull_id),
            what=what,
        )

    def list_models(self) -> list[str]:
        """``GET /models``: the ids of the models the instance has registered."""
        what = "list of models"
        answer = self.exchange("GET", "/models", what=what, ok=(200,), limit=MANIFEST_LIMIT)

        def ids(data: object) -> list[str]:
            f = Fields(data)
            f.success()
            return [m.required_text("id") for m in f.objects("models")]

        return self.parsed(answer, ids, what=what)

    def cancel_pull(self, pull_id: str) -> None:
        """``DELETE /v1/pulls/{id}``: stop a pull (what it fetched is kept for the next)."""
        path = f"/v1/pulls/{quote(pull_id, safe='')}"
        self.exchange("DELETE", path, what="cancel pull", ok=(200, 404), limit=ERROR_LIMIT)


def _json(payload: dict[str, Any]) -> dict[str, Any]:
    """Request keywords sending ``payload`` as JSON (values YAML gave as dates as text)."""
    content = json.dumps(payload, default=str).encode()
    return {"content": content, "headers": {"Content-Type": "application/json"}}


def _success_for(data: object, ref: ModelRef) -> None:
    f = Fields(data)
    f.success()
    if "model_id" in f.data:
        f.same("model_id", ref.id)


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n // KiB} KiB"


def declared_length(value: str | None) -> int | None:
    """A Content-Length header as a number (None when absent or not one; a number too long
    to convert is taken as too large)."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) <= 18 else 2**63


__all__ = [
    "ANSWER_LIMIT",
    "DEFAULT_TIMEOUT",
    "HEALTH_TIMEOUT",
    "MIN_RATE",
    "Answer",
    "BatchAnswer",
    "BatchResult",
    "BlobAnswer",
    "Budget",
    "CommitAnswer",
    "Health",
    "MlosClient",
    "NoAnswer",
    "OpenAnswer",
    "OverBudget",
    "ProtocolError",
    "PullStatus",
    "PullTry",
    "RelayInfo",
    "SendTimeout",
    "already_registered",
    "declared_length",
    "is_loopback",
    "quote_id",
    "read_capped",
    "register_payload",
    "shown",
]
