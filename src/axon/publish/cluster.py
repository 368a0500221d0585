"""Publishing one model to a cluster: which instances, how many at once, what counts as
success.

The model is validated and hashed once (a :class:`~axon.publish.plan.PreparedModel`); each
instance then gets its own :func:`~axon.publish.instance.publish_to_instance`, in parallel,
each bounded by its own timeouts, so a dead instance never holds up the others.

Strategies (``strategy:`` in the config, ``--strategy`` on the command line)::

    all              every member; success = every member (or --min-success N|P%)
    first-available  members in order, skipping those whose GET /health is not healthy,
                     until one succeeds
    round-robin      like first-available, but starting at the member after the one that
                     got the previous publish; the position is kept per cluster in
                     <AXON_HOME>/state/round-robin.json

Rollout control (strategy ``all`` only): ``--batch-size N`` publishes N at a time and checks
each batch (healthy, registered, right checksum) before the next; ``--atomic`` stages on
every member and switches all or none (see :mod:`axon.publish.rollout`).

Exit codes (:mod:`axon.errors`): 0 when enough members succeeded, 9 (EXIT_PARTIAL) when some
but not enough did, 10 (EXIT_ALL_FAILED) when none did.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axon.errors import (
    EXIT_ALL_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    AxonError,
    ConfigError,
    OptionError,
)
from axon.progress import NULL_PROGRESS, Progress
from axon.publish import cluster_status as probes
from axon.publish import rollout
from axon.publish.cluster_status import StatusMatrix, cluster_status, cluster_status_for
from axon.publish.rollout import (
    CANCELLED,
    FAILED,
    PUBLISHED,
    UNHEALTHY,
    UNUSED,
    InstanceLine,
    RolloutOutcome,
)
from modelpkg.atomic import atomic_write_text

if TYPE_CHECKING:
    from axon.publish.plan import InstanceResult, PreparedModel, PublishOptions
    from axon.targets import ClusterTarget, InstanceTarget

STRATEGIES = ("all", "first-available", "round-robin")
# Instances published at once by default. Each in-flight instance costs one thread and a
# few MiB of buffers; waiting costs a whole extra round on slow links, so be generous.
DEFAULT_MAX_PARALLEL = 16
STATE_FILE = "round-robin.json"


@dataclass
class ClusterOptions:
    """The cluster controls of a publish. Read from the same-named ``PublishOptions`` fields
    (or a ``PublishOptions.cluster`` of this type) by :meth:`from_options`."""

    strategy: str | None = None  # overrides the cluster's own
    max_parallel: int | None = None  # default: the cluster's, else min(16, members)
    fail_fast: bool = False
    min_success: str | int | None = None  # "N" or "P%"; default: every targeted member
    batch_size: int | None = None
    atomic: bool = False

    @classmethod
    def from_options(cls, options: Any) -> ClusterOptions:
        nested = getattr(options, "cluster", None)
        if isinstance(nested, ClusterOptions):
            return nested
        extra = getattr(options, "extra", None) or {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = getattr(options, f.name, f.default)
            if value == f.default:  # older callers put some of these in ``extra``
                value = extra.get(f.name, f.default)
            values[f.name] = value
        return cls(**values)


@dataclass
class ClusterResult:
    """The outcome of a cluster publish: one InstanceResult and one state per member.

    ``states`` values are those of :mod:`axon.publish.rollout` (published, failed,
    unhealthy, cancelled, not-started, unused, aborted, rolled-back); only ``published``
    counts as a success.
    """

    cluster: str
    strategy: str
    results: list[InstanceResult]
    states: dict[str, str]
    required: int  # successes needed for ok
    wanted: int  # successes the strategy aims for (members for "all", else 1)
    seconds: float = 0.0
    stopped: str | None = None  # why a rollout stopped early
    batches: list[list[str]] = field(default_factory=list)
    matrix: StatusMatrix | None = None  # who has what, after a stopped rollout
    plans: list[Any] | None = None  # --dry-run: an InstancePlan per member that would get it

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def succeeded(self) -> int:
        return sum(1 for s in self.states.values() if s == PUBLISHED)

    @property
    def failures(self) -> list[InstanceResult]:
        return [r for r in self.results if self.states.get(_name(r)) == FAILED]

    @property
    def ok(self) -> bool:
        return self.succeeded >= self.required

    @property
    def outcome(self) -> str:
        """``ok`` (all wanted succeeded), ``partial`` or ``failed`` (none succeeded)."""
        if self.succeeded >= self.wanted:
            return "ok"
        return "partial" if self.succeeded else "failed"

    @property
    def exit_code(self) -> int:
        if self.ok:
            return EXIT_OK
        return EXIT_PARTIAL if self.succeeded else EXIT_ALL_FAILED

    def to_dict(self) -> dict[str, Any]:
        instances = []
        for r in self.results:
            item = r.to_dict()
            item["state"] = self.states.get(_name(r), FAILED)
            instances.append(item)
        return {
            "type": "cluster",
            "target": self.cluster,
            "strategy": self.strategy,
            "ok": self.ok,
            "outcome": self.outcome,
            "succeeded": self.succeeded,
            "total": self.total,
            "required": self.required,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "batches": self.batches,
            "instances": instances,
            "matrix": self.matrix.to_dict() if self.matrix else None,
        }

    def summary(self) -> str:
        """:meth:`summary_lines` as one text (what ``axon publish`` prints)."""
        return "\n".join(self.summary_lines())

    def summary_lines(self) -> list[str]:
        """The seed's summary as plain text: succeeded n/N, then each failure and its reason."""
        head = f"cluster {self.cluster} ({self.strategy}): succeeded {self.succeeded}/{self.total}"
        if self.required != self.total:
            head += f" (needs {self.required})"
        lines = [head + (" - ok" if self.ok else f" - {self.outcome.upper()}")]
        for r in self.results:
            state = self.states.get(_name(r), FAILED)
            if state == PUBLISHED:
                mib = r.bytes_sent / 2**20
                lines.append(
                    f"  ok      {_name(r)}: {r.files_sent} sent, {r.files_skipped} skipped, "
                    f"{mib:.1f} MiB in {r.seconds:.1f} s"
                )
            elif state == UNUSED:
                lines.append(f"  unused  {_name(r)}")
            else:
                lines.append(f"  {state:7} {_name(r)}: {rollout.reason(r)}")
        if self.stopped:
            lines.append(f"  {self.stopped}")
        if self.matrix:
            lines += self.matrix.lines()
        return lines


def _name(result: InstanceResult) -> str:
    target = result.target
    return target if isinstance(target, str) else str(getattr(target, "name", target))


# ---- options --------------------------------------------------------------------------------
def parse_min_success(value: str | int | None, wanted: int) -> int:
    """``None`` -> ``wanted``; ``"2"`` -> 2; ``"60%"`` -> ceil(60% of ``wanted``), at least 1."""
    if value is None or value == "":
        return wanted
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError(text)
            return max(1, math.ceil(wanted * pct / 100 - 1e-9))
        count = int(text)
    except ValueError:
        raise OptionError(
            f"--min-success {value!r} is neither a count nor a percentage",
            hint="use e.g. --min-success 2 or --min-success 60%",
        ) from None
    if count < 1 or count > wanted:
        raise OptionError(
            f"--min-success {count} is outside 1..{wanted} (the members targeted)",
            hint=f"use a count from 1 to {wanted}, or a percentage",
        )
    return count


def _check_options(opts: ClusterOptions, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise OptionError(
            f"unknown cluster strategy {strategy!r}", hint=f"use one of: {', '.join(STRATEGIES)}"
        )
    if opts.batch_size is not None and opts.batch_size < 1:
        raise OptionError(f"--batch-size {opts.batch_size} must be at least 1")
    if opts.max_parallel is not None and opts.max_parallel < 1:
        raise OptionError(f"--max-parallel {opts.max_parallel} must be at least 1")
    if opts.atomic and opts.batch_size:
        raise OptionError(
            "--atomic and --batch-size cannot be combined",
            hint="--atomic switches every instance at once; drop one of them",
        )
    if strategy != "all" and (opts.atomic or opts.batch_size):
        raise OptionError(
            f"--atomic and --batch-size need strategy 'all', not {strategy!r}",
            hint="add --strategy all",
        )


# ---- members --------------------------------------------------------------------------------
def cluster_members(cluster: ClusterTarget, *, timeout: float = 5.0) -> list[InstanceTarget]:
    """The static members, then those found by ``cluster.discovery``. A member listed twice
    (same place) is published once; a discovered member whose endpoint is already listed is
    skipped. Discovered members take the cluster's access settings (``template``), or the
    first static member's, or the API."""
    members: list[InstanceTarget] = []
    places = set()
    for member in cluster.instances:
        place = (member.endpoint.rstrip("/"), member.access_method, member.storage_path)
        if place not in places and member.name not in {m.name for m in members}:
            places.add(place)
            members.append(member)
    if cluster.discovery:
        from axon.discovery import discover, member_target

        template = getattr(cluster, "template", None) or (members[0] if members else None)
        seen = {m.endpoint.rstrip("/") for m in members}
        names = {m.name for m in members}
        for found in discover(cluster.discovery, cluster.name, timeout=timeout):
            if found.endpoint.rstrip("/") in seen:
                continue
            seen.add(found.endpoint.rstrip("/"))
            member = member_target(found, template)
            if member.name in names:  # two records with one id: keep both, distinguishable
                member = dataclasses.replace(member, name=f"{member.name}@{member.endpoint}")
            names.add(member.name)
            members.append(member)
    return members


# ---- round-robin position -------------------------------------------------------------------
def _state_path() -> Path:
    from axon.config import axon_home

    return axon_home() / "state" / STATE_FILE


@contextmanager
def _locked_state() -> Iterator[dict[str, Any]]:
    """The round-robin state, locked against concurrent publishes; written back atomically."""
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            state = {}  # a damaged state file only costs the position
        if not isinstance(state.get("clusters"), dict):
            state = {"version": 1, "clusters": {}}
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def round_robin_start(cluster: str, count: int) -> int:
    """Index of the member the next round-robin publish to ``cluster`` starts at (a peek,
    for plans: :func:`round_robin_claim` is what a publish calls)."""
    with _locked_state() as state:
        entry = state["clusters"].get(cluster) or {}
        return int(entry.get("next", 0)) % max(count, 1)


def round_robin_claim(cluster: str, count: int) -> int:
    """The member index this publish starts at, moving the position past it in the same
    locked step: a concurrent publish to the cluster starts at the member after."""
    count = max(count, 1)
    with _locked_state() as state:
        entry = dict(state["clusters"].get(cluster) or {})
        start = int(entry.get("next", 0)) % count
        entry["next"] = (start + 1) % count
        state["clusters"][cluster] = entry
        return start


def round_robin_record(
    cluster: str, used: int, count: int, member: str, claimed: int | None = None
) -> None:
    """``used`` took the model: the next publish starts after it. With ``claimed`` (the
    start this publish claimed), only while no other publish claimed a start since."""
    count = max(count, 1)
    with _locked_state() as state:
        entry = state["clusters"].get(cluster) or {}
        nxt = int(entry.get("next", 0)) % count
        if claimed is None or nxt == (claimed + 1) % count:
            nxt = (used + 1) % count
        state["clusters"][cluster] = {
            "next": nxt,
            "last": member,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


# ---- publish --------------------------------------------------------------------------------
def publish_to_cluster(
    model: PreparedModel,
    cluster: ClusterTarget,
    options: PublishOptions,
    progress: Progress = NULL_PROGRESS,
) -> ClusterResult:
    """Publish ``model`` (prepared once) to the members of ``cluster``; one result each.

    Never raises because members failed: see :attr:`ClusterResult.exit_code`. Raises
    OptionError for contradicting options and DiscoveryError when discovery fails.
    """
    started = time.monotonic()
    opts = ClusterOptions.from_options(options)
    strategy = opts.strategy or cluster.strategy or "all"
    _check_options(opts, strategy)
    members = cluster_members(cluster, timeout=min(options.timeout, 10.0))
    if not members:
        raise ConfigError(
            f"cluster {cluster.name!r} has no instances",
            target=cluster.name,
            hint="list instances under the cluster in config.yaml, or give it a discovery URI",
        )
    wanted = len(members) if strategy == "all" else 1
    required = parse_min_success(opts.min_success, wanted)
    parallel = opts.max_parallel or cluster.max_parallel or min(DEFAULT_MAX_PARALLEL, len(members))
    if options.dry_run:
        return _dry_run(model, cluster, members, strategy, required, wanted, parallel)
    if strategy == "all":
        outcome = _publish_all(model, cluster, members, options, opts, parallel, progress)
    else:
        outcome = _publish_one(model, cluster, members, options, strategy, progress)
    result = ClusterResult(
        cluster=cluster.name,
        strategy=strategy,
        results=[outcome.results[m.name] for m in members],
        states=outcome.states,
        required=required,
        wanted=wanted,
        stopped=outcome.stopped,
        batches=outcome.batches,
    )
    if outcome.stopped and opts.batch_size:
        result.matrix = probes.status_matrix(cluster.name, members, model, max_parallel=parallel)
    result.seconds = time.monotonic() - started
    return result


def _dry_run(
    model: PreparedModel,
    cluster: ClusterTarget,
    members: list[InstanceTarget],
    strategy: str,
    required: int,
    wanted: int,
    parallel: int,
) -> ClusterResult:
    """Plans only: every member for ``all``, else the member the strategy would try first."""
    from axon.publish.plan import InstancePlan, plan_instance

    if strategy != "all" and members:
        start = round_robin_start(cluster.name, len(members)) if strategy == "round-robin" else 0
        members = [members[start]]

    def plan(target: InstanceTarget) -> InstancePlan:
        try:
            return plan_instance(model, target)
        except (AxonError, OSError) as exc:
            where = f"cannot plan: {exc}"
            return InstancePlan(target.name, target.access_method, where, None, [], False)

    plans = list(rollout.parallel_map(members, plan, parallel).values())
    result = ClusterResult(cluster.name, strategy, [], {}, required, wanted)
    result.plans = [value for value, _exc in plans]
    return result


def _instance_work(
    model: PreparedModel,
    options: PublishOptions,
    progress: Progress,
    cancel: threading.Event | None = None,
) -> rollout.Work:
    from axon.publish.instance import publish_to_instance

    def work(target: InstanceTarget) -> InstanceResult:
        line = InstanceLine(progress, target.name, model.total_bytes, cancel)
        line.start(f"{target.name} ({target.access_method})")
        result = publish_to_instance(model, target, options, line)
        line.finish(ok=result.ok, note="" if result.ok else rollout.reason(result))
        return result

    return work


def _publish_all(
    model: PreparedModel,
    cluster: ClusterTarget,
    members: list[InstanceTarget],
    options: PublishOptions,
    opts: ClusterOptions,
    parallel: int,
    progress: Progress,
) -> RolloutOutcome:
    cancel = threading.Event()  # Ctrl-C: instances still sending stop at their next chunk
    if opts.atomic:
        from axon.publish.instance import stage_on_instance

        def stage(target: InstanceTarget) -> Any:
            line = InstanceLine(progress, target.name, model.total_bytes, cancel)
            line.start(f"{target.name} (staging)")
            try:
                staged = stage_on_instance(model, target, options, line)
            except Exception as exc:
                line.finish(ok=False, note=str(exc))
                raise
            line.finish(ok=True, note="staged")
            return staged

        return rollout.run_atomic(members, stage, model.ref, max_parallel=parallel, cancel=cancel)
    work = _instance_work(model, options, progress, cancel)
    if opts.batch_size:
        return rollout.run_batches(
            members,
            work,
            lambda t: probes.verify_published(model, t),
            batch_size=opts.batch_size,
            max_parallel=parallel,
            fail_fast=opts.fail_fast,
            cancel=cancel,
        )
    out = RolloutOutcome(batches=[[m.name for m in members]])
    results = rollout.fan_out(
        members, work, max_parallel=parallel, fail_fast=opts.fail_fast, cancel=cancel
    )
    for m in members:
        result = results[m.name]
        if result is None:
            out.put(m, rollout.state_error(m, CANCELLED, "cancelled by --fail-fast"), CANCELLED)
        else:
            out.put(m, result, PUBLISHED if result.ok else FAILED)
    return out


def _publish_one(
    model: PreparedModel,
    cluster: ClusterTarget,
    members: list[InstanceTarget],
    options: PublishOptions,
    strategy: str,
    progress: Progress,
) -> RolloutOutcome:
    """first-available / round-robin: members in order (round-robin: from the saved
    position), skipping unhealthy ones, until one succeeds."""
    start = round_robin_claim(cluster.name, len(members)) if strategy == "round-robin" else 0
    order = members[start:] + members[:start]
    work = _instance_work(model, options, progress)
    out = RolloutOutcome()
    chosen: InstanceTarget | None = None
    for target in order:
        if chosen is not None:
            msg = f"not needed: {chosen.name} has the model ({strategy})"
            out.put(target, rollout.state_error(target, UNUSED, msg), UNUSED)
            continue
        problem = probes.health_problem(target, timeout=min(options.timeout, 5.0))
        if problem:
            out.put(target, rollout.state_error(target, UNHEALTHY, problem), UNHEALTHY)
            continue
        out.batches.append([target.name])
        result = rollout.run_guarded(work, target)
        out.put(target, result, PUBLISHED if result.ok else FAILED)
        if result.ok:
            chosen = target
    if chosen is not None and strategy == "round-robin":
        index = next(i for i, m in enumerate(members) if m.name == chosen.name)
        round_robin_record(cluster.name, index, len(members), chosen.name, claimed=start)
    return out


__all__ = [
    "STRATEGIES",
    "ClusterOptions",
    "ClusterResult",
    "StatusMatrix",
    "cluster_members",
    "cluster_status",
    "cluster_status_for",
    "parse_min_success",
    "publish_to_cluster",
    "round_robin_claim",
    "round_robin_record",
    "round_robin_start",
]
