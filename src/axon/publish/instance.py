"""Publishing one model to one MLOS Core instance: stage (with retries) -> commit -> notify.

Retries: a transient failure (connection lost, timeout, 5xx, upload expired) is followed by
a new :meth:`Transport.open`, which resumes: whole files already sent are no longer needed
and a partly sent file continues at the target's offset. Waits double from
``options.backoff`` up to ``options.max_backoff``; after ``options.retries`` retries the last
error is raised, naming the target and the number of attempts. Failures that a retry cannot
fix (refused credentials, no space, permission denied) fail at once.

:func:`stage_on_instance` stops before the commit so a cluster publish can stage everywhere
and commit only when every instance staged (``--atomic``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from axon.errors import (
    AuthenticationError,
    AxonError,
    InterruptedPublish,
    NoSpaceError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
    TransportError,
)
from axon.progress import NULL_PROGRESS, BytesTo, Progress, expect, skip
from axon.publish.notify import notify_instance
from axon.publish.options import PublishOptions
from axon.publish.prepared import PreparedModel
from axon.publish.results import InstanceResult
from axon.signing import preflight
from axon.transports import transport_for
from axon.transports.base import CommitInfo, Outgoing, Session, Transport

if TYPE_CHECKING:
    from axon.targets import InstanceTarget
    from modelpkg.manifest import FileEntry

T = TypeVar("T")

#: files at least this big are sent one by one, each with its own progress bar; the smaller
#: ones go together through one Session.send_many
OWN_BAR = 8 * 1024 * 1024


def is_transient(exc: BaseException) -> bool:
    """May a new attempt (re-open + resume) succeed where this one failed?"""
    explicit = exc.retryable if isinstance(exc, AxonError) else None
    if explicit is not None:
        return bool(explicit)
    if isinstance(exc, AuthenticationError | TargetPermissionError | NoSpaceError):
        return False
    if isinstance(exc, TargetUnreachableError):
        return True
    if isinstance(exc, RemoteError):
        return exc.status is None or (exc.status >= 500 and exc.status != 507)
    return False


@dataclass
class _Counters:
    """Bytes and blobs sent across every attempt (thread-safe: clusters share progress)."""

    bytes_sent: int = 0
    sent_sha: set[str] = field(default_factory=set)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes_sent += n


class _TaskBytes(BytesTo):
    """A file task's ``on_bytes``: the bytes count as sent, toward the result too; its
    ``skip`` (done by another connection, :func:`axon.progress.skipped`) only toward the task."""

    def __init__(self, progress: Progress, key: str, counters: _Counters) -> None:
        super().__init__(progress, key)
        self.counters = counters

    def __call__(self, nbytes: int) -> None:
        self.counters.add(nbytes)
        super().__call__(nbytes)


class StagedPublish:
    """A model fully sent and staged on one instance, not yet visible.

    :meth:`commit` makes it visible (and notifies); :meth:`abort` drops it. Either returns
    or raises once; a StagedPublish is not reusable.
    """

    def __init__(
        self,
        model: PreparedModel,
        target: InstanceTarget,
        options: PublishOptions,
        progress: Progress,
        transport: Transport,
    ) -> None:
        self.model = model
        self.target = target
        self.options = options
        self.progress = progress
        self.transport = transport
        self.session: Session | None = None
        self.counters = _Counters()
        self.started = time.monotonic()
        self._prepare = True
        self._expected: int | None = None  # bytes this publish sends in all (first attempt)

    # ---- staging -------------------------------------------------------------------
    def stage(self, *, prepare: bool = True) -> None:
        """Open, send what is missing and (with ``prepare``) stage it verified; retried with
        backoff on transient errors. Without ``prepare`` the commit prepares (one round trip
        less on the API)."""
        self._prepare = prepare
        preflight(self.model, self.target, self.options.timeout)  # a model it would refuse
        self._retrying(self._attempt_stage)

    def _attempt_stage(self) -> None:
        self.counters.attempts += 1
        session = self.transport.open(self.model.ref, self.model.manifest)
        self.session = session
        self._expect(session)
        small = [e for e in session.needed if e.size < OWN_BAR]
        if small:
            self._send_many(session, small)
        for entry in session.needed:
            if entry.size >= OWN_BAR:
                self._send(session, entry)
        if self._prepare:
            session.prepare()

    def _expect(self, session: Session) -> None:
        """Tell the progress sink the target's whole total before its files begin, so its
        percentage is of everything this publish sends (not of the files begun so far). A
        retry keeps the first attempt's total; what it no longer needs is done. Resumed
        offsets are reported by each file's task (done, not sent)."""
        left = sum(e.size for e in session.needed)
        if self._expected is None and not left:
            return  # nothing to send: no progress to show
        if self._expected is None or left > self._expected:
            self._expected = left
        expect(self.progress, self.target.name, self._expected, self._expected - left)

    def _send_many(self, session: Session, entries: list[FileEntry]) -> None:
        """Send the small files through one :meth:`Session.send_many`, under one progress
        task: thousands of them must not cost a round trip, or a progress bar, each."""
        what = entries[0].path if len(entries) == 1 else f"{len(entries)} files"
        key = f"{self.target.name}:{what}"
        self.progress.begin(key, what, sum(e.size for e in entries))
        if resumed := sum(session.offset(e) for e in entries):
            skip(self.progress, key, resumed)  # already there: no transfer rate
        on_bytes = _TaskBytes(self.progress, key, self.counters)

        def on_file(entry: FileEntry) -> None:
            self.counters.sent_sha.add(entry.sha256)

        items = [
            Outgoing(e, self.model.source(e), self.model.verified.get(e.path)) for e in entries
        ]
        try:
            session.send_many(items, on_bytes, on_file)
        except AxonError as exc:
            self.progress.end(key, ok=False, note=exc.message)
            raise
        self.progress.end(key)

    def _send(self, session: Session, entry: FileEntry) -> None:
        key = f"{self.target.name}:{entry.path}"
        offset = session.offset(entry)
        self.progress.begin(key, entry.path, entry.size)
        if offset:
            skip(self.progress, key, offset)
        on_bytes = _TaskBytes(self.progress, key, self.counters)

        try:
            session.send(
                entry,
                self.model.source(entry),
                on_bytes,
                verified=self.model.verified.get(entry.path),
            )
        except AxonError as exc:
            self.progress.end(key, ok=False, note=exc.message)
            raise
        self.counters.sent_sha.add(entry.sha256)
        self.progress.end(key, note="resumed" if offset else "")

    def _retrying(self, step: Callable[[], T]) -> T:
        delay = self.options.backoff
        for attempt in range(self.options.retries + 1):
            try:
                return step()
            except AxonError as exc:
                if not is_transient(exc) or attempt == self.options.retries:
                    if attempt:
                        exc.message = f"gave up after {attempt + 1} attempts: {exc.message}"
                    exc.target = exc.target or self.target.name
                    raise
                self.progress.message(
                    f"{self.target.name}: {exc.message}; retrying in {delay:.1f} s "
                    f"({attempt + 1}/{self.options.retries})"
                )
                time.sleep(delay)
                delay = min(delay * 2, self.options.max_backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- commit / abort ------------------------------------------------------------
    def commit(self) -> InstanceResult:
        """Make the model visible, then notify unless the target registered it itself."""
        info = self._retrying(self._attempt_commit)
        result = self._result(info)
        if info.registered:
            result.registered = result.notified = True
        elif self.options.notify:
            try:
                notify_instance(
                    self.target,
                    self.model.ref,
                    info.path or self.transport.instance_path(self.model.ref),
                    manifest=self.model.manifest,
                    timeout=min(self.options.timeout, 30.0),
                )
            except AxonError as exc:
                result.error, result.exit_code, result.ok = exc.to_dict(), exc.exit_code, False
                return result
            result.registered = result.notified = True
        return result

    def _attempt_commit(self) -> CommitInfo:
        if self.session is None:
            self._attempt_stage()
        assert self.session is not None
        try:
            return self.session.commit()
        except AxonError as exc:
            if is_transient(exc):
                self.session = None  # the next attempt re-opens and resumes
            raise

    def abort(self) -> None:
        """Drop what was staged; the previous version stays. Never raises."""
        if self.session is not None:
            # best effort: the target cleans stale staging by itself
            with contextlib.suppress(AxonError):
                self.session.abort()
            self.session = None

    def _result(self, info: CommitInfo) -> InstanceResult:
        files = self.model.manifest.files
        sent = sum(1 for f in files if f.sha256 in self.counters.sent_sha)
        return InstanceResult(
            target=self.target.name,
            method=self.transport.method,
            location=info.location,
            path=info.path,
            files_sent=sent,
            files_skipped=len(files) - sent,
            bytes_sent=self.counters.bytes_sent,
            seconds=round(time.monotonic() - self.started, 3),
            attempts=self.counters.attempts,
            ok=True,
        )


def _effective(target: InstanceTarget, options: PublishOptions) -> InstanceTarget:
    """The target with ``--timeout`` applied when the user gave one."""
    if options.override_timeout and target.timeout != options.timeout:
        return dataclasses.replace(target, timeout=options.timeout)
    return target


def stage_on_instance(
    model: PreparedModel,
    target: InstanceTarget,
    options: PublishOptions,
    progress: Progress = NULL_PROGRESS,
    *,
    transport: Transport | None = None,
) -> StagedPublish:
    """Send and stage ``model`` on ``target`` without making it visible (raises on failure)."""
    target = _effective(target, options)
    staged = StagedPublish(model, target, options, progress, transport or transport_for(target))
    try:
        staged.stage()
    except BaseException:
        staged.transport.close()
        raise
    return staged


def early_transport(target: InstanceTarget, options: PublishOptions) -> Transport | None:
    """The transport for ``target``, already connecting (see :meth:`Transport.connect_early`)
    while the caller validates the model; hand it to :func:`publish_to_instance`. None when
    it cannot be built yet (publish_to_instance then reports why)."""
    try:
        transport = transport_for(_effective(target, options))
    except AxonError:
        return None
    transport.connect_early()
    return transport


def publish_to_instance(
    model: PreparedModel,
    target: InstanceTarget,
    options: PublishOptions,
    progress: Progress = NULL_PROGRESS,
    *,
    transport: Transport | None = None,
) -> InstanceResult:
    """Publish ``model`` to one instance; every failure is in the result, never raised.

    ``transport`` (from :func:`early_transport`) is used and closed; default: a new one.
    """
    started = time.monotonic()
    target = _effective(target, options)
    staged: StagedPublish | None = None
    try:
        transport = transport or transport_for(target)
        staged = StagedPublish(model, target, options, progress, transport)
        staged.stage(prepare=False)
        return staged.commit()
    except AxonError as exc:
        if staged is not None and not is_transient(exc) and not isinstance(exc, InterruptedPublish):
            staged.abort()  # keep partial data of transient failures: a re-run resumes
        return _failed(target, transport, staged, exc, started)
    except OSError as exc:  # reading the cache (a file vanished mid-publish): ours, not theirs
        if staged is not None:
            staged.abort()
        err = TransportError(
            f"publish to {target.name} stopped: {exc.strerror or exc} ({exc.filename or '?'})",
            target=target.name,
            path=str(exc.filename) if exc.filename else None,
            hint=f"check the cached model with `axon verify {model.ref}`, then re-run",
        )
        return _failed(target, transport, staged, err, started)
    finally:
        if transport is not None:
            transport.close()


def _failed(
    target: InstanceTarget,
    transport: Transport | None,
    staged: StagedPublish | None,
    exc: AxonError,
    started: float,
) -> InstanceResult:
    method = transport.method if transport is not None else target.access_method
    where = transport.describe() if transport is not None else target.endpoint
    counters = staged.counters if staged is not None else _Counters()
    return InstanceResult(
        target=target.name,
        method=method,
        location=where,
        path=None,
        bytes_sent=counters.bytes_sent,
        seconds=round(time.monotonic() - started, 3),
        attempts=counters.attempts,
        error=exc.to_dict(),
        ok=False,
        exit_code=exc.exit_code,
    )
