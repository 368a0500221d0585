"""One member pulls a model from its peers: start the pull, follow it, report it.

:func:`pull_onto` asks the member to fetch the model (``POST /v1/pulls``, docs/relay.md)
from the sources it is given, follows the pull (``GET /v1/pulls/{id}?wait=``, one long poll
per second) on the member's progress line, and returns what happened. The member's server
does the work: it reads the blobs it lacks from its sources, switches source when one fails,
verifies every byte and commits (or, with ``commit=False``, stops at a prepared upload:
:class:`StagedPull`, committed later by ``--atomic``). The publisher only watches:

* a pull that fails (every source failed, a refusal) raises :class:`PullFailed`, which says
  why; the caller decides what follows (a direct push when it has the bytes);
* following the pull is retried like any exchange (a transient error waits and asks again;
  a server that restarted and forgot the pull is asked again, and the pull resumes);
* a pull that makes no progress for :func:`stall_limit` seconds is cancelled and failed;
* Ctrl-C (``cancel``) cancels the pull on the member: what it fetched is kept, and the next
  pull of the same build resumes it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from axon.errors import AxonError, InterruptedPublish, RemoteError
from axon.mlos_client import MlosClient, PullStatus
from axon.publish.instance import is_transient
from axon.publish.results import InstanceResult
from axon.publish.rollout import InstanceLine

if TYPE_CHECKING:
    from axon.progress import Progress
    from axon.publish.options import PublishOptions
    from axon.publish.relay import Peer
    from modelpkg.manifest import Manifest
    from modelpkg.refs import ModelRef

POLL = 1.0  # seconds one status request may wait for the pull to end (a long poll)


class PullFailed(RemoteError):
    """A pull ended without the model: every source failed, or the member refused it.
    ``refused`` is True when the member refused to start (old server, not a peer, tenant)."""

    def __init__(self, message: str, *, refused: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.refused = refused


def stall_limit(options: PublishOptions) -> float:
    """Seconds a pull may show no progress at all before the publisher gives up on it (the
    server gives up on a silent source after 30 s and tries the next by itself)."""
    return max(120.0, 4 * options.timeout)


@dataclass
class Pulled:
    """A pull that ended well: its last status, and the member's name for each source."""

    status: PullStatus
    seconds: float
    attempts: int


class _Follow:
    """Start and follow one pull on one member."""

    def __init__(
        self,
        member: Peer,
        ref: ModelRef,
        manifest: Manifest,
        options: PublishOptions,
        line: InstanceLine,
    ) -> None:
        self.member, self.ref, self.manifest = member, ref, manifest
        self.options, self.line = options, line
        self.digest = manifest.as_uploaded(ref.namespace, ref.name, ref.version).digest()
        self.attempts = 0
        self.done = 0
        self.ready: Callable[[], None] = lambda: None  # called once bytes have landed
        self._told = False

    def client(self) -> MlosClient:
        return MlosClient.for_target(self.member.target, self.options.timeout + POLL)

    def run(self, sources: list[str], *, commit: bool) -> Pulled:
        started = time.monotonic()
        with self.client() as client:
            status = self._start(client, sources, commit)
            seen, quiet_since = _mark(status), time.monotonic()
            while not status.final:
                status = self._poll(client, status, sources, commit)
                if _mark(status) != seen:
                    seen, quiet_since = _mark(status), time.monotonic()
                elif time.monotonic() - quiet_since > stall_limit(self.options):
                    self._cancel(client, status)
                    raise PullFailed(
                        f"{self.member.name}: the pull made no progress for "
                        f"{stall_limit(self.options):.0f} s (state {status.state}); cancelled",
                        target=self.member.name,
                        hint="check the instance's log and its peers",
                    )
        if status.state not in ("committed", "prepared"):
            raise _failure(self.member.name, status)
        return Pulled(status, time.monotonic() - started, self.attempts)

    def _start(self, client: MlosClient, sources: list[str], commit: bool) -> PullStatus:
        self.attempts += 1
        try:
            status = client.start_pull(self.ref, self.manifest, sources, commit=commit)
        except AxonError as exc:
            if is_transient(exc) and self.attempts <= self.options.retries:
                time.sleep(self.options.backoff)
                return self._start(client, sources, commit)
            raise PullFailed(
                exc.message, refused=True, target=self.member.name, hint=exc.hint
            ) from exc
        self._advance(status)
        return status

    def _poll(
        self, client: MlosClient, status: PullStatus, sources: list[str], commit: bool
    ) -> PullStatus:
        """The next status: a long poll, Ctrl-C checked before each; a transient failure
        waits and asks again, a pull the server forgot (a restart) is started again."""
        assert status.pull_id is not None
        delay = self.options.backoff
        for attempt in range(self.options.retries + 1):
            if self.line.cancel is not None and self.line.cancel.is_set():
                self._cancel(client, status)
                raise InterruptedPublish(
                    f"{self.member.name}: interrupted while pulling (what it got is kept)",
                    target=self.member.name,
                    hint="run the publish again: the pull resumes where this one stopped",
                )
            try:
                new = client.pull_status(
                    status.pull_id, ref=self.ref, digest=self.digest, wait=POLL
                )
            except RemoteError as exc:
                if exc.status == 404:  # the server restarted: jobs live in its memory
                    return self._start(client, sources, commit)
                if not is_transient(exc) or attempt == self.options.retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, self.options.max_backoff)
                continue
            self._advance(new)
            return new
        raise AssertionError("unreachable")  # pragma: no cover

    def _advance(self, status: PullStatus) -> None:
        if status.bytes_done > self.done:
            # Ctrl-C is seen by the next poll, which cancels the pull on the member too
            with contextlib.suppress(InterruptedPublish):
                self.line.advance("pull", status.bytes_done - self.done)
            self.done = status.bytes_done
            if not self._told:
                self._told = True
                self.ready()

    def _cancel(self, client: MlosClient, status: PullStatus) -> None:
        if status.pull_id is not None:
            with contextlib.suppress(AxonError):
                client.cancel_pull(status.pull_id)


def _mark(status: PullStatus) -> tuple[str, int, str | None, int]:
    """What changes while a pull makes progress."""
    return status.state, status.bytes_done, status.source, len(status.tried)


def _failure(name: str, status: PullStatus) -> PullFailed:
    why = f"{status.code}: {status.message}" if status.code else (status.message or status.state)
    return PullFailed(f"{name}: pull {status.state}: {why}", target=name)


def pull_onto(
    member: Peer,
    sources: list[Peer],
    ref: ModelRef,
    manifest: Manifest,
    options: PublishOptions,
    progress: Progress,
    *,
    total: int,
    cancel: threading.Event | None = None,
    names: dict[str, str] | None = None,
    commit: bool = True,
    ready: Callable[[], None] = lambda: None,
) -> InstanceResult | StagedPull:
    """``member`` pulls ``ref`` (exactly ``manifest``) from ``sources`` (preferred first).

    Returns the member's result (``commit``) or its :class:`StagedPull`; raises
    :class:`PullFailed` (or another AxonError) when the member did not get the model.
    ``ready`` is called once bytes have landed on the member (it may serve them on).
    """
    line = InstanceLine(progress, member.name, total, cancel)
    first = sources[0].name if sources else "its peers"
    line.start(f"{member.name} (pull from {first})")
    follow = _Follow(member, ref, manifest, options, line)
    follow.ready = ready
    try:
        pulled = follow.run([s.address for s in sources if s.address], commit=commit)
    except Exception as exc:
        line.finish(ok=False, note=str(exc))
        raise
    status = pulled.status
    how = relay_record(status, names or {}, first=first)
    if not commit:
        line.finish(ok=True, note="staged")
        staged = StagedPull(member, ref, follow.digest, status, options, how)
        staged.seconds, staged.files = pulled.seconds, len(manifest.files)
        return staged
    line.finish(ok=True, note=how["text"])
    return _result(member, status, how, pulled.seconds, pulled.attempts, len(manifest.files))


def relay_record(status: PullStatus, names: dict[str, str], *, first: str) -> dict[str, Any]:
    """The ``relay`` of a pulled member's result: how, from whom (by member name when the
    publisher knows the address), the bytes fetched, the sources given up on."""

    def name(url: str | None) -> str:
        return names.get((url or "").rstrip("/"), url or "?")

    if status.unchanged:
        return {"how": "unchanged", "source": None, "bytes": 0, "tried": [], "text": "had it"}
    source = name(status.source) if status.source else first
    tried = [{"source": name(t.source), "code": t.code, "message": t.message} for t in status.tried]
    text = f"pulled from {source}"
    if tried:
        text += f" (after {', '.join(t['source'] for t in tried)} failed)"
    return {
        "how": "pulled",
        "source": source,
        "bytes": status.bytes_fetched,
        "tried": tried,
        "text": text,
    }


def _result(
    member: Peer,
    status: PullStatus,
    how: dict[str, Any],
    seconds: float,
    attempts: int,
    files: int,
) -> InstanceResult:
    path = status.result.get("path") if status.result else None
    return InstanceResult(
        target=member.name,
        method="api",
        location=member.target.endpoint,
        path=path if isinstance(path, str) else None,
        files_sent=0,
        files_skipped=files,
        bytes_sent=0,  # from the publisher: none
        seconds=round(seconds, 3),
        notified=True,
        registered=True,
        attempts=attempts,
        ok=True,
        relay=how,
    )


class StagedPull:
    """A model pulled and staged on one member (a prepared upload), not yet visible: the
    ``--atomic`` counterpart of :class:`~axon.publish.instance.StagedPublish`."""

    unchanged = False  # a staging pull always stages (the member may hold it already)

    def __init__(
        self,
        member: Peer,
        ref: ModelRef,
        digest: str,
        status: PullStatus,
        options: PublishOptions,
        how: dict[str, Any],
    ) -> None:
        self.member, self.ref, self.digest, self.status = member, ref, digest, status
        self.options, self.how = options, how
        self.seconds = 0.0  # the pull's
        self.files = 0  # of the model
        if status.upload_id is None:
            raise PullFailed(
                f"{member.name}: the pull is prepared but names no upload to commit",
                target=member.name,
            )
        self.upload_id: str = status.upload_id

    def commit(self) -> InstanceResult:
        started = time.monotonic()
        with MlosClient.for_target(self.member.target, self.options.timeout) as client:
            answer = client.commit_upload(self.upload_id, self.ref, self.digest)
        seconds = self.seconds + time.monotonic() - started
        result = _result(self.member, self.status, self.how, seconds, 1, self.files)
        result.path = answer.path
        return result

    def abort(self) -> None:
        with (
            contextlib.suppress(AxonError),
            MlosClient.for_target(self.member.target, self.options.timeout) as client,
        ):
            client.abort_upload(self.upload_id)

    def close(self) -> None:
        """Nothing is held open between the stage and the switch."""


__all__ = ["PullFailed", "StagedPull", "pull_onto", "relay_record", "stall_limit"]
