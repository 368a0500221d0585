"""The moving parts of a cluster publish: fan-out, health and content probes, batches,
all-or-nothing (``--atomic``) and the status matrix.

:mod:`axon.publish.cluster` decides *which* instances get the model and *what counts as
success*; this module does the work on a given list of instances and reports per instance.

Nothing here ever raises because one instance failed: every failure becomes that instance's
:class:`~axon.publish.plan.InstanceResult` with an ``error`` dict, so one dead instance
never hides what happened on the others.

All-or-nothing, per access method::

    stage everywhere (uploaded + verified, invisible)  --any failure-->  abort every stage
        |
    commit everywhere  --a commit fails-->  roll back the committed ones:
        api         POST /v1/models/{id}/rollback   (the server keeps one previous generation)
        filesystem  the previous version dir, hard-linked aside before the commit, swapped back
        ssh         the same, with ``cp -al`` / ``mv`` on the remote host
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from axon.errors import (
    EXIT_ALL_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    AxonError,
    RemoteError,
    TargetUnreachableError,
)
from axon.fsutil import remove_tree, replace_dir
from axon.progress import Progress

if TYPE_CHECKING:
    from axon.publish.plan import InstanceResult, PreparedModel
    from axon.refs import ModelRef
    from axon.targets import InstanceTarget

# Per-instance states in a ClusterResult. Only PUBLISHED counts as a success.
PUBLISHED = "published"
FAILED = "failed"
UNHEALTHY = "unhealthy"  # skipped: GET /health did not answer "healthy"
CANCELLED = "cancelled"  # --fail-fast: never started
NOT_STARTED = "not-started"  # a batch before it failed: still on its previous version
UNUSED = "unused"  # first-available / round-robin: an earlier instance took the model
ABORTED = "aborted"  # --atomic: staged, then dropped because another instance failed
ROLLED_BACK = "rolled-back"  # --atomic: switched, then switched back

HEALTH_TIMEOUT = 5.0


# ---- results for instances that did not (fully) run ----------------------------------------
def error_dict(exc: BaseException, target: str) -> dict[str, Any]:
    """The ``error`` of an InstanceResult, from any exception (AxonError keeps its fields)."""
    if isinstance(exc, AxonError):
        data = exc.to_dict()
        data.setdefault("target", target)
        return data
    return {"type": type(exc).__name__, "message": str(exc) or repr(exc), "target": target}


def failed_result(
    target: InstanceTarget, error: dict[str, Any], seconds: float = 0.0
) -> InstanceResult:
    """An InstanceResult for an instance where nothing (more) was published."""
    from axon.errors import EXIT_TRANSPORT
    from axon.publish.plan import InstanceResult

    return InstanceResult(
        target=target.name,
        method=target.access_method,
        location=target.endpoint,
        path=None,
        files_sent=0,
        files_skipped=0,
        bytes_sent=0,
        seconds=seconds,
        notified=False,
        registered=False,
        error=error,
        ok=False,
        exit_code=int(error.get("exit_code", EXIT_TRANSPORT)),
    )


def state_error(target: InstanceTarget, state: str, message: str) -> InstanceResult:
    return failed_result(target, {"type": state, "message": message, "target": target.name})


def mark_failed(result: InstanceResult, error: dict[str, Any]) -> InstanceResult:
    """The same result, now failed with ``error`` (e.g. verification after a batch)."""
    result.error = error
    result.ok = False
    return result


def reason(result: InstanceResult) -> str:
    """One line: why this instance failed."""
    err = result.error or {}
    text = str(err.get("message") or err.get("type") or "failed")
    if err.get("hint"):
        text += f" ({err['hint']})"
    return text


# ---- progress: one line per instance --------------------------------------------------------
class InstanceLine:
    """Folds an instance's inner progress tasks into one task keyed by the instance name.

    Inner tasks (per file, hashing, retries) advance the one line; messages keep the instance
    name in front. The total is the model size; the line is clamped so it never passes 100%.
    """

    def __init__(self, inner: Progress, name: str, total: int) -> None:
        self.inner, self.name, self.total = inner, name, total
        self.done = 0
        self._lock = threading.Lock()

    def start(self, description: str) -> None:
        self.inner.begin(self.name, description, self.total)

    def finish(self, *, ok: bool, note: str = "") -> None:
        self.inner.end(self.name, ok=ok, note=note)

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        with self._lock:
            step = max(0, min(nbytes, self.total - self.done))
            self.done += step
        if step:
            self.inner.advance(self.name, step)

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        self.inner.message(f"{self.name}: {text}")


# ---- fan-out --------------------------------------------------------------------------------
Work = Callable[["InstanceTarget"], "InstanceResult"]


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
) -> dict[str, InstanceResult | None]:
    """Run ``work`` on every target, ``max_parallel`` at a time; results by instance name.

    With ``fail_fast`` the first failure cancels every instance not started yet (their
    result is None); instances already running finish (each bounded by its own timeouts).
    """
    results: dict[str, InstanceResult | None] = {t.name: None for t in targets}
    pending = list(targets)
    workers = max(1, min(max_parallel, len(targets)))
    running: dict[Future[InstanceResult], InstanceTarget] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="axon-cluster") as pool:
        # launch only into free slots, so --fail-fast really stops launching
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
    return results


# ---- probes ---------------------------------------------------------------------------------
def _headers(target: InstanceTarget) -> dict[str, str]:
    token = getattr(target, "token", None)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _url(target: InstanceTarget, path: str) -> str:
    return str(target.endpoint).rstrip("/") + path


def health_problem(target: InstanceTarget, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None when ``GET /health`` says healthy, else why not (one line)."""
    import httpx

    url = _url(target, "/health")
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"GET {url} failed: {type(exc).__name__}: {exc}"
    if resp.status_code != 200:
        return f"GET {url} answered HTTP {resp.status_code}"
    try:
        status = resp.json().get("status")
    except (ValueError, AttributeError):
        return f"GET {url} did not answer a JSON object"
    return None if status == "healthy" else f"GET {url} says status {status!r}"


@dataclass
class StatusRow:
    """What one instance has of one model. ``None`` means "could not tell"."""

    instance: str
    endpoint: str
    healthy: bool
    present: bool | None = None
    checksum_ok: bool | None = None
    registered: bool | None = None
    version: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def status_row(model: PreparedModel, target: InstanceTarget) -> StatusRow:
    """Probe one instance: ``GET /health``, then H4's instance_status (the target's manifest
    against the cached one, and ``GET /models/{id}``)."""
    from axon.publish.plan import instance_status

    problem = health_problem(target)
    row = StatusRow(target.name, target.endpoint, healthy=problem is None)
    notes = [problem] if problem else []
    try:
        status = instance_status(model, target)
    except (AxonError, OSError) as exc:
        row.note = problem or str(exc)  # a down instance: the health line says enough
        return row
    row.present, row.version = status.present, status.version
    row.checksum_ok, row.registered = status.checksums_match, status.registered
    if status.mismatched:
        notes.append(f"differs: {', '.join(status.mismatched[:3])}")
    if status.error and not problem:
        notes.append(str(status.error.get("message", status.error)))
    row.note = "; ".join(notes)
    return row


def verify_published(model: PreparedModel, target: InstanceTarget) -> str | None:
    """After a batch: healthy, present with the right checksums, registered. None if so."""
    row = status_row(model, target)
    if not row.healthy:
        return f"not healthy after publishing: {row.note}"
    if not row.present:
        return f"{model.ref} is not present after publishing ({row.note or 'no manifest'})"
    if not row.checksum_ok:
        return f"wrong content after publishing: {row.note}"
    if not row.registered:
        return f"{model.ref} is not registered after publishing (GET /models/{{id}} is not 200)"
    return None


# ---- status matrix --------------------------------------------------------------------------
@dataclass
class StatusMatrix:
    """``axon status REF --target CLUSTER``: instance x (present, checksum ok, registered)."""

    ref: str
    cluster: str
    rows: list[StatusRow] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """Every instance healthy, with the model present, correct and registered."""
        return bool(self.rows) and all(
            r.healthy and r.present and r.checksum_ok and r.registered for r in self.rows
        )

    @property
    def exit_code(self) -> int:
        """0 when consistent, 9 when only some instances are right, 10 when none is."""
        if self.consistent:
            return EXIT_OK
        right = any(r.healthy and r.present and r.checksum_ok and r.registered for r in self.rows)
        return EXIT_PARTIAL if right else EXIT_ALL_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "exit_code": self.exit_code,
            "cluster": self.cluster,
            "consistent": self.consistent,
            "instances": [r.to_dict() for r in self.rows],
        }

    def lines(self) -> list[str]:
        """The matrix as plain text lines (the CLI prints them)."""

        def mark(value: bool | None) -> str:
            return "yes" if value else ("?" if value is None else "NO")

        width = max([len("instance"), *(len(r.instance) for r in self.rows)])
        out = [
            f"{self.ref} on cluster {self.cluster}:",
            f"  {'instance':{width}}  healthy  present  checksum  registered  note",
        ]
        for r in self.rows:
            checksum = "-" if r.present is False else mark(r.checksum_ok)
            out.append(
                f"  {r.instance:{width}}  {mark(r.healthy):7}  {mark(r.present):7}  "
                f"{checksum:8}  {mark(r.registered):10}  {r.note}".rstrip()
            )
        verdict = "all instances agree" if self.consistent else "instances DIFFER (drift)"
        out.append(f"  {verdict}")
        return out


def status_matrix(
    cluster: str, members: list[InstanceTarget], model: PreparedModel, *, max_parallel: int = 8
) -> StatusMatrix:
    """Probe every member in parallel; rows in member order."""
    matrix = StatusMatrix(str(model.ref), cluster)
    if members:
        workers = max(1, min(max_parallel, len(members)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="axon-status") as pool:
            matrix.rows = list(pool.map(lambda t: status_row(model, t), members))
    return matrix


# ---- all-or-nothing: previous versions kept aside -------------------------------------------
class Backup:
    """The previous version of a model on one instance, kept until every commit succeeded.

    ``unchanged`` (the instance already held exactly this model) means nothing to undo.
    """

    def __init__(self, target: InstanceTarget, ref: ModelRef) -> None:
        self.target, self.ref = target, ref
        self.method = target.access_method
        self.saved: str | None = None  # where the previous version was linked aside
        self.existed = False
        self.unchanged = False

    def _final(self) -> PurePosixPath:
        if not self.target.storage_path:
            raise RemoteError(
                "cannot keep the previous version aside: no storage_path",
                target=self.target.name,
                hint="set storage_path for this instance, or use access_method: api",
            )
        return PurePosixPath(self.target.storage_path) / self.ref.relpath

    def save(self, *, unchanged: bool = False) -> None:
        """Hard-link the current version dir aside (API instances keep it server-side)."""
        self.unchanged = unchanged
        if unchanged:
            return
        if self.method == "api":
            try:
                self.existed = _api_has(self.target, self.ref)
            except AxonError:  # cannot ask: its commit will fail too; undo = server rollback
                self.existed = True
            return
        final = self._final()
        aside = final.parent / f".{final.name}.rollback-{uuid.uuid4().hex[:12]}"
        if self.method == "ssh":
            self.existed = _ssh(self.target, f"test -d {_q(final)}", check=False) == 0
            if self.existed:
                _ssh(self.target, f"cp -al {_q(final)} {_q(aside)}")
        else:
            self.existed = os.path.isdir(final)
            if self.existed:
                _link_tree(Path(final), Path(aside))
        self.saved = str(aside) if self.existed else None

    def restore(self) -> None:
        """Put the previous version back (or remove the new one if there was none)."""
        if self.unchanged:
            return
        if self.method == "api":
            _api_undo(self.target, self.ref, rollback=self.existed)
            return
        final = self._final()
        if self.method == "ssh":
            tmp = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            cmd = f"if [ -d {_q(final)} ]; then mv {_q(final)} {_q(tmp)}; fi"
            if self.saved:
                cmd += f" && mv {_q(self.saved)} {_q(final)}"
            _ssh(self.target, cmd + f" && rm -rf {_q(tmp)}")
        elif self.saved:
            replace_dir(Path(self.saved), Path(final))
        else:
            remove_tree(Path(final))
        self.saved = None
        if self.existed:  # the instance may have cached the new manifest: tell it again
            from axon.publish.notify import notify_instance

            notify_instance(self.target, self.ref, str(final))

    def drop(self) -> None:
        """Every commit succeeded (or was undone): the copy aside is no longer needed."""
        if self.saved is None:
            return
        if self.method == "ssh":
            _ssh(self.target, f"rm -rf {_q(self.saved)}", check=False)
        else:
            remove_tree(Path(self.saved))
        self.saved = None


def _q(path: PurePosixPath | str) -> str:
    return shlex.quote(str(path))


def _link_tree(src: Path, dst: Path) -> None:
    """``cp -al``: the same files under a second name, no bytes copied."""
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            os.link(Path(dirpath) / name, dst / rel / name)


def _ssh(target: InstanceTarget, command: str, *, check: bool = True) -> int:
    """Run one shell command on the instance's SSH host (key auth only, no prompts)."""
    host = target.ssh_host or "localhost"
    argv = ["ssh", "-o", "BatchMode=yes", "-p", str(target.ssh_port or 22)]
    if target.ssh_key:
        argv += ["-i", str(target.ssh_key)]
    for opt in target.ssh_options or []:
        argv += ["-o", opt]
    argv += [f"{target.ssh_user}@{host}" if target.ssh_user else host, command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=target.timeout or 30.0)
    if check and proc.returncode != 0:
        raise RemoteError(
            f"remote command failed ({proc.returncode}): {command}: {proc.stderr.strip()}",
            target=target.name,
            hint="check the SSH access and free space on the instance",
        )
    return proc.returncode


def _api_has(target: InstanceTarget, ref: ModelRef) -> bool:
    from axon.publish.notify import is_registered

    return is_registered(target, ref, timeout=HEALTH_TIMEOUT)


def _api_undo(target: InstanceTarget, ref: ModelRef, *, rollback: bool) -> None:
    """``POST /v1/models/{id}/rollback`` (the server kept the replaced generation), or
    ``DELETE /models/{id}`` when the instance did not have the model before."""
    import httpx

    qid = quote(ref.id, safe="")
    method, url = ("POST", _url(target, f"/v1/models/{qid}/rollback"))
    if not rollback:
        method, url = ("DELETE", _url(target, f"/models/{qid}"))
    try:
        resp = httpx.request(method, url, headers=_headers(target), timeout=HEALTH_TIMEOUT * 2)
    except httpx.HTTPError as exc:
        raise TargetUnreachableError(
            f"undo failed: {method} {url}: {exc}", target=target.name, url=url
        ) from exc
    if resp.status_code != 200:
        raise RemoteError(
            f"undo refused: {method} {url} answered HTTP {resp.status_code}: {resp.text[:200]}",
            target=target.name,
            url=url,
            status=resp.status_code,
            hint="check the instance's models dir; it may hold the new version",
        )


# ---- rollout drivers ------------------------------------------------------------------------
Outcome = tuple[Any, BaseException | None]


def parallel_map(
    targets: list[InstanceTarget], fn: Callable[[InstanceTarget], Any], max_parallel: int
) -> dict[str, Outcome]:
    """``fn`` on every target in parallel: ``{name: (value, None) or (None, exception)}``."""

    def guarded(t: InstanceTarget) -> Outcome:
        try:
            return fn(t), None
        except Exception as exc:
            return None, exc

    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(targets)))) as pool:
        return dict(zip([t.name for t in targets], pool.map(guarded, targets), strict=True))


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
    work: Work,
    verify: Callable[[InstanceTarget], str | None],
    *,
    batch_size: int,
    max_parallel: int,
    fail_fast: bool = False,
) -> RolloutOutcome:
    """Publish ``batch_size`` instances at a time; after each batch every instance of it must
    pass ``verify`` (healthy, registered, right checksum) before the next batch starts."""
    out = RolloutOutcome()
    batches = [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    for number, batch in enumerate(batches, 1):
        out.batches.append([t.name for t in batch])
        results = fan_out(batch, work, max_parallel=max_parallel, fail_fast=fail_fast)
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


def run_atomic(
    members: list[InstanceTarget],
    stage: Callable[[InstanceTarget], Any],
    ref: ModelRef,
    *,
    max_parallel: int,
) -> RolloutOutcome:
    """Stage on every instance; only if all staged, commit on all; if a commit fails, put the
    committed instances back on their previous version. ``stage`` returns an object with
    ``commit()`` (-> InstanceResult) and ``abort()`` (H4's StagedPublish)."""
    staged = parallel_map(members, stage, max_parallel)
    try:
        return _switch_all(members, staged, ref, max_parallel)
    finally:
        for value, _exc in staged.values():
            with contextlib.suppress(Exception):
                value.transport.close()


def _switch_all(
    members: list[InstanceTarget], staged: dict[str, Outcome], ref: ModelRef, max_parallel: int
) -> RolloutOutcome:
    out = RolloutOutcome(batches=[[t.name for t in members]])
    backups = {t.name: Backup(t, ref) for t in members}
    saved = parallel_map(
        [t for t in members if staged[t.name][1] is None],
        lambda t: backups[t.name].save(unchanged=_unchanged(staged[t.name][0])),
        max_parallel,
    )
    refused = [
        t
        for t in members
        if staged[t.name][1] is not None or (t.name in saved and saved[t.name][1] is not None)
    ]
    if refused:
        _abort_all(members, staged, backups, saved, refused, out, max_parallel)
        return out
    committed = parallel_map(members, lambda t: staged[t.name][0].commit(), max_parallel)
    broken = [t for t in members if _commit_failed(committed[t.name])]
    if not broken:
        parallel_map(members, lambda t: backups[t.name].drop(), max_parallel)
        for t in members:
            out.put(t, committed[t.name][0], PUBLISHED)
        return out
    _roll_back(members, staged, committed, backups, broken, out, max_parallel)
    return out


def _unchanged(staged: Any) -> bool:
    """The instance already holds exactly this model (its session needs nothing)."""
    return bool(getattr(getattr(staged, "session", None), "unchanged", False))


def _commit_failed(outcome: Outcome) -> bool:
    value, exc = outcome
    return exc is not None or not getattr(value, "ok", True)


def _abort_all(
    members: list[InstanceTarget],
    staged: dict[str, Outcome],
    backups: dict[str, Backup],
    saved: dict[str, Outcome],
    refused: list[InstanceTarget],
    out: RolloutOutcome,
    max_parallel: int,
) -> None:
    names = ", ".join(t.name for t in refused)
    ok = [t for t in members if staged[t.name][1] is None]
    parallel_map(ok, lambda t: staged[t.name][0].abort(), max_parallel)
    parallel_map(ok, lambda t: backups[t.name].drop(), max_parallel)
    for t in members:
        exc = staged[t.name][1] or saved.get(t.name, (None, None))[1]
        if t in refused:
            err = exc or RemoteError("could not stage", target=t.name)
            out.put(t, failed_result(t, error_dict(err, t.name)), FAILED)
        else:
            msg = f"staged, then aborted because {names} could not stage; still on its old version"
            out.put(t, state_error(t, ABORTED, msg), ABORTED)
    out.stopped = f"--atomic: {names} could not stage, so no instance switched"


def _roll_back(
    members: list[InstanceTarget],
    staged: dict[str, Outcome],
    committed: dict[str, Outcome],
    backups: dict[str, Backup],
    broken: list[InstanceTarget],
    out: RolloutOutcome,
    max_parallel: int,
) -> None:
    names = ", ".join(t.name for t in broken)
    switched = [t for t in members if t not in broken]
    restored = parallel_map(switched, lambda t: backups[t.name].restore(), max_parallel)
    parallel_map(broken, lambda t: staged[t.name][0].abort(), max_parallel)
    parallel_map(members, lambda t: backups[t.name].drop(), max_parallel)
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
