"""The moving parts of a cluster publish: fan-out, batches and all-or-nothing (``--atomic``).

:mod:`axon.publish.cluster` decides *which* instances get the model and *what counts as
success*; this module does the work on a given list of instances and reports per instance.
The checks between batches are passed in (from :mod:`axon.publish.matrix`); undo for
``--atomic`` is :mod:`axon.publish.undo`.

Nothing here ever raises because one instance failed: every failure becomes that instance's
:class:`~axon.publish.results.InstanceResult` with an ``error`` dict, so one dead instance
never hides what happened on the others.

All-or-nothing::

    stage everywhere (uploaded + verified, invisible)  --any failure-->  abort every stage
        |
    commit everywhere  --a commit fails-->  put the committed ones back (undo.Backup)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from axon.errors import InterruptedPublish, RemoteError
from axon.progress import Progress, expect, skip
from axon.publish.results import (
    ABORTED,
    CANCELLED,
    FAILED,
    NOT_STARTED,
    PUBLISHED,
    ROLLED_BACK,
    InstanceResult,
    error_dict,
    failed_result,
    mark_failed,
    state_error,
)
from axon.publish.undo import Backup

if TYPE_CHECKING:
    from axon.publish.instance import StagedPublish
    from axon.targets import InstanceTarget
    from modelpkg.refs import ModelRef


# ---- progress: one line per instance --------------------------------------------------------
class InstanceLine:
    """Folds an instance's inner progress tasks into one task keyed by the instance name.

    Inner tasks (per file, hashing, retries) advance the one line; messages keep the instance
    name in front. The total is the model size; the line is clamped so it never passes 100%.
    """

    def __init__(
        self, inner: Progress, name: str, total: int, cancel: threading.Event | None = None
    ) -> None:
        self.inner, self.name, self.total = inner, name, total
        self.cancel = cancel  # set on Ctrl-C: the next chunk of this instance stops it
        self.done = 0
        self._lock = threading.Lock()

    def start(self, description: str) -> None:
        self.inner.begin(self.name, description, self.total)

    def finish(self, *, ok: bool, note: str = "") -> None:
        self.inner.end(self.name, ok=ok, note=note)

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise InterruptedPublish(
                f"{self.name}: interrupted while receiving (what it got is kept)",
                target=self.name,
                hint="run the publish again: it resumes where this one stopped",
            )
        with self._lock:
            step = max(0, min(nbytes, self.total - self.done))
            self.done += step
        if step:
            self.inner.advance(self.name, step)

    def skip(self, key: str, nbytes: int) -> None:
        """A resumed offset: done on the line, not sent (no rate)."""
        with self._lock:
            step = max(0, min(nbytes, self.total - self.done))
            self.done += step
        if step:
            skip(self.inner, self.name, step)

    def expect(self, target: str, total: int, done: int = 0) -> None:
        """What the member receives in all (:func:`axon.progress.expect`): the line's total
        becomes that instead of the model's size."""
        with self._lock:
            self.total, self.done = total, min(done, total)
        expect(self.inner, self.name, total, done)

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        self.inner.message(f"{self.name}: {text}")


# ---- fan-out --------------------------------------------------------------------------------
class Staged(Protocol):
    """A model staged on one instance, not yet visible (``--atomic``): pushed
    (:class:`PushStage`) or pulled from a peer (:class:`axon.publish.pull.StagedPull`)."""

    @property
    def unchanged(self) -> bool:
        """The instance already holds exactly this model: nothing to undo."""
        ...

    def commit(self) -> InstanceResult:
        """Make it visible (raises, or returns a failed result, when it cannot)."""
        ...

    def abort(self) -> None:
        """Drop what was staged; never raises."""
        ...

    def close(self) -> None:
        """Release what the staging holds open (what it staged stays)."""
        ...


class PushStage:
    """A :class:`~axon.publish.instance.StagedPublish` (the publisher sent the bytes) as a
    :class:`Staged`."""

    def __init__(self, staged: StagedPublish, relay: dict[str, Any] | None = None) -> None:
        self.staged = staged
        self.relay = relay  # a relayed rollout: why the publisher sent this one the bytes

    @property
    def unchanged(self) -> bool:
        return self.staged.session is not None and self.staged.session.unchanged

    def commit(self) -> InstanceResult:
        result = self.staged.commit()
        result.relay = self.relay
        return result

    def abort(self) -> None:
        self.staged.abort()

    def close(self) -> None:
        self.staged.transport.close()


Work = Callable[["InstanceTarget"], "InstanceResult"]  # publish to one instance
StageWork = Callable[["InstanceTarget"], Staged]  # stage on one (--atomic)
#: publish to one batch of instances: a result per instance (None: not started)
BatchWork = Callable[[list["InstanceTarget"]], dict[str, "InstanceResult | None"]]


def run_guarded(work: Work, target: InstanceTarget) -> InstanceResult:
    """``work(target)``, with any exception turned into a failed result for that instance."""
    started = time.monotonic()
    try:
        return work(target)
    except Exception as exc:
        return failed_result(target, error_dict(exc, target.name), time.monotonic() - started)


def fan_out(
    targets: list[InstanceTarget],
    work: Work,
    *,
    max_parallel: int,
    fail_fast: bool = False,
    cancel: threading.Event | None = None,
) -> dict[str, InstanceResult | None]:
    """Run ``work`` on every target, ``max_parallel`` at a time; results by instance name.

    With ``fail_fast`` the first failure cancels every instance not started yet (their
    result is None); instances already running finish (each bounded by its own timeouts).
    On Ctrl-C nothing more starts and ``cancel`` is set: instances still sending stop at
    their next chunk (see :class:`InstanceLine`) instead of finishing their upload.
    """
    results: dict[str, InstanceResult | None] = {t.name: None for t in targets}
    pending = list(targets)
    workers = max(1, min(max_parallel, len(targets)))
    running: dict[Future[InstanceResult], InstanceTarget] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="axon-cluster") as pool:
        # launch only into free slots, so --fail-fast really stops launching
        try:
            while pending or running:
                while pending and len(running) < workers:
                    target = pending.pop(0)
                    running[pool.submit(run_guarded, work, target)] = target
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    results[running.pop(fut).name] = result
                    if fail_fast and not result.ok:
                        pending.clear()
        except BaseException:  # Ctrl-C: start nothing more; in-flight ones stop at a chunk
            pending.clear()
            if cancel is not None:
                cancel.set()
            raise
    return results


# ---- rollout drivers ------------------------------------------------------------------------
Outcome = tuple[Any, BaseException | None]


def parallel_map(
    targets: list[InstanceTarget],
    fn: Callable[[InstanceTarget], Any],
    max_parallel: int,
    cancel: threading.Event | None = None,
    release: Callable[[Any], None] | None = None,
) -> dict[str, Outcome]:
    """``fn`` on every target in parallel: ``{name: (value, None) or (None, exception)}``.

    On Ctrl-C ``cancel`` is set, the calls still running are waited for, and ``release``
    is called on every value already returned (nobody else will see it), then it raises.
    """

    def guarded(t: InstanceTarget) -> Outcome:
        try:
            return fn(t), None
        except Exception as exc:
            return None, exc

    if not targets:
        return {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(targets))))
    futures = [pool.submit(guarded, t) for t in targets]
    try:
        out = {t.name: f.result() for t, f in zip(targets, futures, strict=True)}
    except BaseException:
        if cancel is not None:
            cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for f in futures:
            if release is not None and f.done() and not f.cancelled():
                value, _exc = f.result()
                if value is not None:
                    with contextlib.suppress(Exception):
                        release(value)
        raise
    pool.shutdown(wait=True)
    return out


@dataclass
class RolloutOutcome:
    """Per-instance results and states of one rollout, and why it stopped early (if it did)."""

    results: dict[str, InstanceResult] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    batches: list[list[str]] = field(default_factory=list)

    def put(self, target: InstanceTarget, result: InstanceResult, state: str) -> None:
        self.results[target.name] = result
        self.states[target.name] = state


def run_batches(
    members: list[InstanceTarget],
    work: BatchWork,
    verify: Callable[[InstanceTarget], str | None],
    *,
    batch_size: int,
    max_parallel: int,
) -> RolloutOutcome:
    """Publish ``batch_size`` instances at a time (``work`` on each batch: :func:`fan_out`,
    or a relay); after each batch every instance of it must pass ``verify`` (healthy,
    registered, right checksum) before the next batch starts."""
    out = RolloutOutcome()
    batches = [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    for number, batch in enumerate(batches, 1):
        out.batches.append([t.name for t in batch])
        results = work(batch)
        bad = _check_batch(batch, results, verify, max_parallel, out)
        if bad:
            out.stopped = (
                f"rollout stopped after batch {number}/{len(batches)}: "
                f"{', '.join(bad)} failed; later batches were not started"
            )
            for rest in batches[number:]:
                for t in rest:
                    msg = "not started: an earlier batch failed (still on its previous version)"
                    out.put(t, state_error(t, NOT_STARTED, msg), NOT_STARTED)
            break
    return out


def _check_batch(
    batch: list[InstanceTarget],
    results: dict[str, InstanceResult | None],
    verify: Callable[[InstanceTarget], str | None],
    max_parallel: int,
    out: RolloutOutcome,
) -> list[str]:
    """Verify the members of a batch that published, record each one's state in ``out``;
    the names of those that failed (publishing or verification)."""
    checks = parallel_map(
        [t for t in batch if (r := results[t.name]) is not None and r.ok],
        verify,
        max_parallel,
    )
    bad = []
    for t in batch:
        result = results[t.name]
        if result is None:
            out.put(t, state_error(t, CANCELLED, "cancelled by --fail-fast"), CANCELLED)
            continue
        problem, exc = checks.get(t.name, (None, None))
        if exc is not None or problem:
            mark_failed(result, {"type": "VerificationError", "message": problem or str(exc)})
        out.put(t, result, PUBLISHED if result.ok else FAILED)
        if not result.ok:
            bad.append(t.name)
    return bad


def run_atomic(
    members: list[InstanceTarget],
    stage: StageWork,
    ref: ModelRef,
    *,
    max_parallel: int,
    cancel: threading.Event | None = None,
) -> RolloutOutcome:
    """Stage on every instance; only if all staged, commit on all; if a commit fails, put the
    committed instances back on their previous version. Ctrl-C sets ``cancel`` while
    staging; the switch itself is never interrupted half-way."""
    staged = parallel_map(members, stage, max_parallel, cancel, release=_close)
    return switch_staged(members, staged, ref, max_parallel=max_parallel)


def switch_staged(
    members: list[InstanceTarget], staged: dict[str, Outcome], ref: ModelRef, *, max_parallel: int
) -> RolloutOutcome:
    """The second half of :func:`run_atomic`: ``staged`` is each member's staging outcome
    (``(Staged, None)`` or ``(None, exception)``); commit on all, or on none."""
    try:
        return _switch_all(members, staged, ref, max_parallel)
    finally:
        for value, _exc in staged.values():
            if value is not None:
                _close(value)


def _close(staged: Staged) -> None:
    """Release a staged publish's connection (what it staged stays: a re-run resumes)."""
    with contextlib.suppress(Exception):
        staged.close()


def _switch_all(
    members: list[InstanceTarget], staged: dict[str, Outcome], ref: ModelRef, max_parallel: int
) -> RolloutOutcome:
    backups = {t.name: Backup(t, ref) for t in members}
    return _Switch(members, staged, backups, max_parallel).run()


def _unchanged(staged: Staged) -> bool:
    """The instance already holds exactly this model (its session needs nothing)."""
    return staged.unchanged


def _commit_failed(outcome: Outcome) -> bool:
    """A commit that raised, or whose InstanceResult is not ok."""
    result, exc = outcome
    return exc is not None or not result.ok


@dataclass
class _Switch:
    """The switch of an ``--atomic`` rollout once staging is over: every member commits, or
    none does; ``staged`` is each member's staging outcome, ``backups`` its way back."""

    members: list[InstanceTarget]
    staged: dict[str, Outcome]
    backups: dict[str, Backup]
    max_parallel: int
    out: RolloutOutcome = field(default_factory=RolloutOutcome)

    def run(self) -> RolloutOutcome:
        members, staged, backups, out = self.members, self.staged, self.backups, self.out
        out.batches = [[t.name for t in members]]
        saved = parallel_map(
            [t for t in members if staged[t.name][1] is None],
            lambda t: backups[t.name].save(unchanged=_unchanged(staged[t.name][0])),
            self.max_parallel,
        )
        refused = [
            t
            for t in members
            if staged[t.name][1] is not None or (t.name in saved and saved[t.name][1] is not None)
        ]
        if refused:
            self._abort_all(saved, refused)
            return out
        committed = parallel_map(members, lambda t: staged[t.name][0].commit(), self.max_parallel)
        broken = [t for t in members if _commit_failed(committed[t.name])]
        if not broken:
            parallel_map(members, lambda t: backups[t.name].drop(), self.max_parallel)
            for t in members:
                out.put(t, committed[t.name][0], PUBLISHED)
            return out
        self._roll_back(committed, broken)
        return out

    def _abort_all(self, saved: dict[str, Outcome], refused: list[InstanceTarget]) -> None:
        staged, backups, out = self.staged, self.backups, self.out
        names = ", ".join(t.name for t in refused)
        ok = [t for t in self.members if staged[t.name][1] is None]
        parallel_map(ok, lambda t: staged[t.name][0].abort(), self.max_parallel)
        parallel_map(ok, lambda t: backups[t.name].drop(), self.max_parallel)
        for t in self.members:
            exc = staged[t.name][1] or saved.get(t.name, (None, None))[1]
            if t in refused:
                err = exc or RemoteError("could not stage", target=t.name)
                out.put(t, failed_result(t, error_dict(err, t.name)), FAILED)
            else:
                msg = (
                    f"staged, then aborted because {names} could not stage; "
                    "still on its old version"
                )
                out.put(t, state_error(t, ABORTED, msg), ABORTED)
        out.stopped = f"--atomic: {names} could not stage, so no instance switched"

    def _roll_back(self, committed: dict[str, Outcome], broken: list[InstanceTarget]) -> None:
        staged, backups, out = self.staged, self.backups, self.out
        names = ", ".join(t.name for t in broken)
        switched = [t for t in self.members if t not in broken]
        restored = parallel_map(switched, lambda t: backups[t.name].restore(), self.max_parallel)
        parallel_map(broken, lambda t: staged[t.name][0].abort(), self.max_parallel)
        parallel_map(self.members, lambda t: backups[t.name].drop(), self.max_parallel)
        for t in broken:
            value, exc = committed[t.name]
            result = value if exc is None else failed_result(t, error_dict(exc, t.name))
            out.put(t, result, FAILED)
        for t in switched:
            _, exc = restored[t.name]
            if exc is None:
                msg = f"switched, then rolled back because the commit failed on {names}"
                out.put(t, state_error(t, ROLLED_BACK, msg), ROLLED_BACK)
            else:
                err = error_dict(exc, t.name)
                err["message"] = f"rollback FAILED, instance has the NEW version: {err['message']}"
                out.put(t, failed_result(t, err), FAILED)
        out.stopped = f"--atomic: commit failed on {names}; switched instances were rolled back"
