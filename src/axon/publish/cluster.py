"""Publishing one model to a cluster: which instances, how many at once, what counts as
success.

The model is validated and hashed once (a :class:`~axon.publish.prepared.PreparedModel`);
each instance then gets its own :func:`~axon.publish.instance.publish_to_instance`, in
parallel, each bounded by its own timeouts, so a dead instance never holds up the others.

Strategies (``strategy:`` in the config, ``--strategy`` on the command line)::

    all              every member; success = every member (or --min-success N|P%)
    first-available  members in order, skipping those whose GET /health is not healthy,
                     until one succeeds
    round-robin      like first-available, but starting at the member after the one that
                     got the previous publish (:mod:`axon.publish.round_robin`)

Rollout control (strategy ``all`` only): ``--batch-size N`` publishes N at a time and checks
each batch (healthy, registered, right checksum) before the next; ``--atomic`` stages on
every member and switches all or none (see :mod:`axon.publish.rollout`).

Relay (strategy ``all``; a cluster's ``relay:`` or ``--relay``): the publisher sends the model
to a seed, the other members pull it from members that have it (:mod:`axon.publish.relayed`);
each member's line says where its bytes came from. After a publish to a cluster found through
etcd succeeded, the cluster's desired state is recorded there (:mod:`axon.publish.desired`).

Exit codes (:mod:`axon.errors`): 0 when enough members succeeded, 9 (EXIT_PARTIAL) when some
but not enough did, 10 (EXIT_ALL_FAILED) when none did.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from axon.config import RelayConfig
from axon.errors import (
    EXIT_ALL_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    AxonError,
    ConfigError,
    OptionError,
)
from axon.progress import NULL_PROGRESS, Progress
from axon.publish.desired import record_desired
from axon.publish.instance import publish_to_instance, stage_on_instance
from axon.publish.matrix import StatusMatrix, status_matrix, verify_published
from axon.publish.members import cluster_members
from axon.publish.options import PublishOptions, parse_min_success
from axon.publish.plan import InstancePlan, plan_instance
from axon.publish.prepared import PreparedModel
from axon.publish.relay import Peer, RelaySettings, relay_plans, survey
from axon.publish.relayed import Pusher, Relay
from axon.publish.results import (
    CANCELLED,
    FAILED,
    PUBLISHED,
    UNHEALTHY,
    UNUSED,
    InstanceResult,
    Line,
    reason,
    state_error,
)
from axon.publish.rollout import (
    BatchWork,
    InstanceLine,
    PushStage,
    RolloutOutcome,
    Staged,
    StageWork,
    Work,
    fan_out,
    parallel_map,
    run_atomic,
    run_batches,
    run_guarded,
    switch_staged,
)
from axon.publish.round_robin import round_robin_claim, round_robin_record, round_robin_start
from axon.publish.status import health_problem

if TYPE_CHECKING:
    from axon.targets import ClusterTarget, InstanceTarget

# Instances published at once by default. Each in-flight instance costs one thread and a
# few MiB of buffers; waiting costs a whole extra round on slow links, so be generous.
DEFAULT_MAX_PARALLEL = 16


@dataclass
class ClusterResult:
    """The outcome of a cluster publish: one InstanceResult and one state per member.

    ``states`` values are those of :mod:`axon.publish.results` (published, failed,
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
    plans: list[InstancePlan] | None = None  # --dry-run: one per member that would get it
    relay: bool = False  # members pulled from members (docs/relay.md)
    desired: str | None = None  # the desired state recorded after success (or why not)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def succeeded(self) -> int:
        return sum(1 for s in self.states.values() if s == PUBLISHED)

    @property
    def failures(self) -> list[InstanceResult]:
        return [r for r in self.results if self.states.get(r.target) == FAILED]

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
            item["state"] = self.states.get(r.target, FAILED)
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
            "relay": self.relay,
            "publisher_bytes": self.publisher_bytes,
            "desired": self.desired,
        }

    @property
    def publisher_bytes(self) -> int:
        """Model bytes that left the publisher (pulled members: none)."""
        return sum(r.bytes_sent for r in self.results)

    def lines(self, model_id: str = "") -> list[Line]:
        """Succeeded n/N, then each member's state (and why it failed), then the matrix."""
        how = f"{self.strategy}, relay" if self.relay else self.strategy
        head = f"cluster {self.cluster} ({how}): succeeded {self.succeeded}/{self.total}"
        if self.required != self.total:
            head += f" (needs {self.required})"
        lines = [head + (" - ok" if self.ok else f" - {self.outcome.upper()}")]
        for r in self.results:
            state = self.states.get(r.target, FAILED)
            if state == PUBLISHED:
                lines.append(f"  ok      {r.target}: {_done_text(r)}")
            elif state == UNUSED:
                lines.append(f"  unused  {r.target}")
            else:
                lines.append(f"  {state:7} {r.target}: {reason(r)}")
        if self.stopped:
            lines.append(f"  {self.stopped}")
        if self.relay:
            lines.append(f"  from the publisher: {self.publisher_bytes / 2**20:.1f} MiB")
        if self.desired:
            lines.append(f"  {self.desired}")
        if self.matrix:
            lines += self.matrix.lines()
        return [Line(text) for text in lines]

    def summary(self) -> str:
        """:meth:`lines` as one text."""
        return "\n".join(line.text for line in self.lines())


def _done_text(r: InstanceResult) -> str:
    """A member that has the model: where its bytes came from, how many, how long."""
    mib = r.bytes_sent / 2**20
    sent = f"{r.files_sent} sent, {r.files_skipped} skipped, {mib:.1f} MiB in {r.seconds:.1f} s"
    how = r.relay or {}
    if how.get("how") == "pulled":
        pulled = int(how.get("bytes") or 0) / 2**20
        return f"{how['text']}, {pulled:.1f} MiB in {r.seconds:.1f} s"
    if how.get("how") == "unchanged":
        return f"had it already ({r.seconds:.1f} s)"
    if how.get("how") == "pushed":
        if not r.files_sent and not r.bytes_sent:
            return f"{how['text']}: had it already ({r.seconds:.1f} s)"
        return f"{how['text']}: {sent}"
    return sent


# ---- publish --------------------------------------------------------------------------------
def relay_settings(cluster: ClusterTarget, options: PublishOptions) -> RelaySettings | None:
    """The relay of this publish: ``--relay/--no-relay``, else the cluster's ``relay:``
    (true, false, or a mapping with ``seeds`` and ``fanout``); None when off."""
    conf = cluster.relay
    on = conf.enabled if isinstance(conf, RelayConfig) else bool(conf)
    if options.relay is not None:
        on = options.relay
    if not on:
        return None
    if not isinstance(conf, RelayConfig):
        return RelaySettings()
    for key in ("seeds", "fanout"):
        if getattr(conf, key) < 1:
            raise ConfigError(
                f"relay {key} {getattr(conf, key)} must be at least 1",
                key=f"clusters.{cluster.name}.relay.{key}",
                target=cluster.name,
            )
    return RelaySettings(seeds=conf.seeds, fanout=conf.fanout)


def publish_to_cluster(
    model: PreparedModel,
    cluster: ClusterTarget,
    options: PublishOptions,
    progress: Progress = NULL_PROGRESS,
) -> ClusterResult:
    """Publish ``model`` (prepared once) to the members of ``cluster``; one result each.

    Never raises because members failed: see :attr:`ClusterResult.exit_code`. Raises
    OptionError for options that contradict the cluster's strategy, ConfigError for a
    cluster without members and DiscoveryError when discovery fails.
    """
    started = time.monotonic()
    strategy = options.strategy or cluster.strategy or "all"
    options.check(strategy)
    if options.relay and strategy != "all":
        raise OptionError(
            f"--relay needs strategy 'all', not {strategy!r}", hint="add --strategy all"
        )
    relay = relay_settings(cluster, options) if strategy == "all" else None
    members = cluster_members(cluster, timeout=min(options.timeout, 10.0))
    if not members:
        raise ConfigError(
            f"cluster {cluster.name!r} has no instances",
            target=cluster.name,
            hint="list instances under the cluster in config.yaml, or give it a discovery URI",
        )
    wanted = len(members) if strategy == "all" else 1
    required = parse_min_success(options.min_success, wanted)
    parallel = (
        options.max_parallel or cluster.max_parallel or min(DEFAULT_MAX_PARALLEL, len(members))
    )
    result = ClusterResult(cluster.name, strategy, [], {}, required, wanted, relay=bool(relay))
    if options.dry_run:
        result.plans = _plans(model, cluster, members, strategy, parallel)
        if relay:
            relay_plans(result.plans, members, relay, parallel)
        return result
    if strategy == "all":
        outcome = rollout_all(model, members, options, parallel, progress, relay)
    else:
        outcome = _publish_one(model, cluster, members, options, strategy, progress)
    result.results = [outcome.results[m.name] for m in members]
    result.states, result.stopped, result.batches = outcome.states, outcome.stopped, outcome.batches
    if outcome.stopped and options.batch_size:
        result.matrix = status_matrix(cluster.name, members, model, max_parallel=parallel)
    if result.ok and cluster.discovery:
        result.desired = record_desired(cluster, model.ref, model.manifest, options.timeout)
    result.seconds = time.monotonic() - started
    return result


def _plans(
    model: PreparedModel,
    cluster: ClusterTarget,
    members: list[InstanceTarget],
    strategy: str,
    parallel: int,
) -> list[InstancePlan]:
    """Plans only: every member for ``all``, else the member the strategy would try first."""
    if strategy != "all" and members:
        start = round_robin_start(cluster.name, len(members)) if strategy == "round-robin" else 0
        members = [members[start]]

    def plan(target: InstanceTarget) -> InstancePlan:
        try:
            return plan_instance(model, target)
        except (AxonError, OSError) as exc:
            where = f"cannot plan: {exc}"
            return InstancePlan(target.name, target.access_method, where, None, [], False)

    plans = parallel_map(members, plan, parallel).values()
    return [value for value, _exc in plans]


def _instance_work(
    model: PreparedModel,
    options: PublishOptions,
    progress: Progress,
    cancel: threading.Event | None = None,
) -> Work:
    """Publish to one member on a progress line of its own."""

    def work(target: InstanceTarget) -> InstanceResult:
        line = InstanceLine(progress, target.name, model.total_bytes, cancel)
        line.start(f"{target.name} ({target.access_method})")
        result = publish_to_instance(model, target, options, line)
        line.finish(ok=result.ok, note="" if result.ok else reason(result))
        return result

    return work


def _stage_work(
    model: PreparedModel, options: PublishOptions, progress: Progress, cancel: threading.Event
) -> StageWork:
    """Stage on one member (``--atomic``) on a progress line of its own."""

    def stage(target: InstanceTarget) -> Staged:
        line = InstanceLine(progress, target.name, model.total_bytes, cancel)
        line.start(f"{target.name} (staging)")
        try:
            staged = stage_on_instance(model, target, options, line)
        except Exception as exc:
            line.finish(ok=False, note=str(exc))
            raise
        line.finish(ok=True, note="staged")
        return PushStage(staged)

    return stage


def rollout_all(
    model: PreparedModel,
    members: list[InstanceTarget],
    options: PublishOptions,
    parallel: int,
    progress: Progress,
    relay: RelaySettings | None = None,
    *,
    sources: list[Peer] | None = None,
    push: bool = True,
) -> RolloutOutcome:
    """Strategy ``all``: every member at once, in batches, or all-or-nothing; directly, or
    through relay (from ``sources``, members of another cluster that have the model, when
    given; ``push`` False: the publisher sends no bytes, as for a promotion)."""
    cancel = threading.Event()  # Ctrl-C: instances still sending stop at their next chunk
    relayed = None
    if relay is not None:
        peers = survey(members, max_parallel=parallel)
        pusher = Pusher(model, options, progress, cancel) if push else None
        relayed = Relay(
            model.ref, model.manifest, model.total_bytes, peers, relay, options, progress,
            parallel, cancel, pusher, list(sources or []),
        )  # fmt: skip
    if options.atomic:
        if relayed is not None:
            staged = relayed.stage(members)
            return switch_staged(members, staged, model.ref, max_parallel=parallel)
        stage = _stage_work(model, options, progress, cancel)
        return run_atomic(members, stage, model.ref, max_parallel=parallel, cancel=cancel)
    work = _instance_work(model, options, progress, cancel)
    batch_work: BatchWork = relayed.publish if relayed is not None else (
        lambda batch: fan_out(
            batch, work, max_parallel=parallel, fail_fast=options.fail_fast, cancel=cancel
        )
    )  # fmt: skip
    if options.batch_size:
        return run_batches(
            members,
            batch_work,
            lambda t: verify_published(model, t),
            batch_size=options.batch_size,
            max_parallel=parallel,
        )
    out = RolloutOutcome(batches=[[m.name for m in members]])
    results = batch_work(members)
    for m in members:
        result = results[m.name]
        if result is None:
            out.put(m, state_error(m, CANCELLED, "cancelled by --fail-fast"), CANCELLED)
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
            out.put(target, state_error(target, UNUSED, msg), UNUSED)
            continue
        problem = health_problem(target, timeout=min(options.timeout, 5.0))
        if problem:
            out.put(target, state_error(target, UNHEALTHY, problem), UNHEALTHY)
            continue
        out.batches.append([target.name])
        result = run_guarded(work, target)
        out.put(target, result, PUBLISHED if result.ok else FAILED)
        if result.ok:
            chosen = target
    if chosen is not None and strategy == "round-robin":
        index = next(i for i, m in enumerate(members) if m.name == chosen.name)
        round_robin_record(cluster.name, index, len(members), chosen.name, claimed=start)
    return out


__all__ = [
    "DEFAULT_MAX_PARALLEL",
    "ClusterResult",
    "publish_to_cluster",
    "relay_settings",
    "rollout_all",
]
