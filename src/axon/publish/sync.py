"""``axon sync CLUSTER [REF]``: lagging members pull what the up-to-date members have.

For a cluster whose members should all hold the same builds (a cluster without a discovery
store to catch up from, or one that has not caught up yet), each model is brought to one
build everywhere, by relay (:mod:`axon.publish.relayed`): no model bytes leave the publisher.

Which models: ``REF``; else the cluster's desired state (an etcd-discovered cluster), else
every model some member has registered (``GET /models``). Which build of each:

1. the local cache's, when it has the model;
2. else the desired state's record of it;
3. else the one every member holding it agrees on (when they disagree the model is left
   alone, and the report names who holds what: publish the build you mean).

Members holding that build are the sources; every other member (lacking the model, or
holding another build) pulls it. The status matrix of each model is shown before and after.
Exit 0 when every model is consistent afterwards, 9 when some are, 10 when none is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from axon.cache import Cache
from axon.config import load_config
from axon.errors import (
    EXIT_ALL_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    AxonError,
    ConfigError,
    DiscoveryError,
)
from axon.mlos_client import MlosClient
from axon.progress import NULL_PROGRESS, Progress
from axon.publish.cluster import DEFAULT_MAX_PARALLEL, ClusterResult, rollout_all
from axon.publish.desired import forget_desired, is_etcd, read_desired, record_desired
from axon.publish.matrix import StatusMatrix, status_matrix
from axon.publish.members import cluster_members
from axon.publish.options import PublishOptions
from axon.publish.prepared import PreparedModel
from axon.publish.promote import cached_digest, cluster_relay, held_manifest
from axon.publish.relay import survey
from axon.publish.results import Line
from axon.publish.rollout import parallel_map
from axon.targets import ClusterTarget, resolve_target
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.config import Config
    from axon.targets import InstanceTarget
    from modelpkg.manifest import Manifest


@dataclass
class ModelSync:
    """One model of a sync: the build chosen (and why), the matrix before and after, the
    pulls (None when nothing lagged or the model was left alone, ``skipped`` saying why)."""

    ref: str
    digest: str | None = None
    chosen_by: str = ""
    before: StatusMatrix | None = None
    after: StatusMatrix | None = None
    pulls: ClusterResult | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        if self.skipped:
            return False
        matrix = self.after or self.before
        return matrix is not None and matrix.consistent

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.ref,
            "manifest_sha256": self.digest,
            "chosen_by": self.chosen_by,
            "ok": self.ok,
            "skipped": self.skipped,
            "before": self.before.to_dict() if self.before else None,
            "pulls": self.pulls.to_dict() if self.pulls else None,
            "after": self.after.to_dict() if self.after else None,
        }

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"{self.ref}: left alone: {self.skipped}"]
        out = [f"{self.ref}: build {(self.digest or '?')[:12]} ({self.chosen_by})"]
        if self.before is not None:
            out += ["  before:", *(f"  {t}" for t in self.before.lines())]
        if self.pulls is None:
            out.append("  nothing to do: every member has this build")
            return out
        out += [f"  {line.text}" for line in self.pulls.lines()]
        if self.after is not None:
            out += ["  after:", *(f"  {t}" for t in self.after.lines())]
        return out


@dataclass
class SyncResult:
    """``axon sync``: one :class:`ModelSync` per model."""

    cluster: str
    models: list[ModelSync] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.models)

    @property
    def exit_code(self) -> int:
        good = sum(1 for m in self.models if m.ok)
        if good == len(self.models):
            return EXIT_OK
        return EXIT_PARTIAL if good else EXIT_ALL_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "sync",
            "cluster": self.cluster,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
            "models": [m.to_dict() for m in self.models],
        }

    def lines(self, model_id: str = "") -> list[Line]:
        texts = [f"sync {self.cluster}: {sum(m.ok for m in self.models)}/{len(self.models)} "
                 "model(s) consistent"]  # fmt: skip
        texts += [f"  warning: {w}" for w in self.warnings]
        for m in self.models:
            texts += m.lines()
        return [Line(t) for t in texts]


def sync(
    cluster_spec: str,
    ref_or_str: ModelRef | str | None = None,
    options: PublishOptions | None = None,
    progress: Progress = NULL_PROGRESS,
    *,
    config: Config | None = None,
    cache: Cache | None = None,
) -> SyncResult:
    """Bring the members of ``cluster_spec`` to one build of each model (module docstring)."""
    started = time.monotonic()
    options = options or PublishOptions()
    options.check("all")
    config = config if config is not None else load_config()
    cache = cache if cache is not None else Cache.from_config(config)
    cluster = resolve_target(cluster_spec, config)
    if not isinstance(cluster, ClusterTarget):
        raise ConfigError(f"{cluster_spec!r} is not a cluster", target=cluster_spec)
    members = cluster_members(cluster, timeout=min(options.timeout, 10.0))
    if not members:
        raise ConfigError(f"cluster {cluster.name!r} has no instances", target=cluster.name)
    result = SyncResult(cluster.name)
    desired = _desired(cluster, options, result)
    refs = [_ref(ref_or_str)] if ref_or_str else _models(cluster, members, desired, result)
    for ref in refs:
        result.models.append(_sync_one(cluster, members, ref, desired, cache, options, progress))
    result.seconds = time.monotonic() - started
    return result


def _ref(value: ModelRef | str) -> ModelRef:
    return value if isinstance(value, ModelRef) else ModelRef.parse(value)


def _desired(cluster: ClusterTarget, options: PublishOptions, out: SyncResult) -> dict[str, str]:
    """``{model id: digest}`` of the cluster's desired state ({} without an etcd store)."""
    if not is_etcd(cluster.discovery):
        return {}
    assert cluster.discovery is not None
    try:
        records, warnings = read_desired(cluster.discovery, cluster.name, options.timeout)
    except Exception as exc:  # httpx errors: the store is optional here
        out.warnings.append(f"cannot read the desired state in {cluster.discovery}: {exc}")
        return {}
    out.warnings += warnings
    return {r.model_id: r.manifest_sha256 for r in records}


def _models(
    cluster: ClusterTarget,
    members: list[InstanceTarget],
    desired: dict[str, str],
    out: SyncResult,
) -> list[ModelRef]:
    """Every model of the desired state, else every model some member has registered."""
    if desired:
        return [ModelRef.parse(m) for m in sorted(desired)]

    def listed(t: InstanceTarget) -> list[str]:
        with MlosClient.for_target(t) as client:
            return client.list_models()

    ids: set[str] = set()
    answers = parallel_map(members, listed, DEFAULT_MAX_PARALLEL)
    for t in members:
        found, exc = answers[t.name]
        if exc is not None:
            out.warnings.append(f"{t.name}: cannot list its models ({exc})")
        ids.update(found or [])
    refs = []
    for model_id in sorted(ids):
        try:
            refs.append(ModelRef.parse(model_id))
        except AxonError:
            out.warnings.append(f"{model_id!r}: not a model reference axon can publish")
    return refs


def _sync_one(
    cluster: ClusterTarget,
    members: list[InstanceTarget],
    ref: ModelRef,
    desired: dict[str, str],
    cache: Cache,
    options: PublishOptions,
    progress: Progress,
) -> ModelSync:
    one = ModelSync(ref.id)
    answers = parallel_map(members, lambda t: held_manifest(ref, t), DEFAULT_MAX_PARALLEL)
    held: dict[str, Manifest] = {
        t.name: m for t in members if (m := answers[t.name][0]) is not None
    }
    digests = {name: m.digest() for name, m in held.items()}
    cached = cached_digest(cache, ref)
    if cached:
        one.digest, one.chosen_by = cached, "the local cache's"
    elif ref.id in desired:
        one.digest, one.chosen_by = desired[ref.id], "the desired state's"
    elif len(set(digests.values())) == 1:
        one.digest, one.chosen_by = next(iter(digests.values())), "every member holding it agrees"
    else:
        groups: dict[str, list[str]] = {}
        for name, d in digests.items():
            groups.setdefault(d, []).append(name)
        one.skipped = (
            "members disagree ("
            + "; ".join(f"{', '.join(names)}: {d[:12]}" for d, names in groups.items())
            + "): publish the build you mean, or install it in the cache and sync again"
        )
        if not digests:
            one.skipped = "no member has it"
        return one
    sources = [t for t in members if digests.get(t.name) == one.digest]
    if not sources:
        one.skipped = f"no member has build {one.digest[:12]} to pull from: publish it"
        return one
    manifest = held[sources[0].name]
    model = PreparedModel(ref, manifest, Path(), sum(f.size for f in manifest.files))
    parallel = (
        options.max_parallel or cluster.max_parallel or min(DEFAULT_MAX_PARALLEL, len(members))
    )
    one.before = status_matrix(cluster.name, members, model, max_parallel=parallel)
    lagging = [t for t in members if t not in sources]
    if not lagging:
        return one
    peers = [p for p in survey(sources, max_parallel=parallel).values() if p.address]
    outcome = rollout_all(
        model, lagging, options, parallel, progress, cluster_relay(cluster), sources=peers,
        push=False,
    )  # fmt: skip
    pulls = ClusterResult(cluster.name, "all", [], {}, len(lagging), len(lagging), relay=True)
    pulls.results = [outcome.results[t.name] for t in lagging]
    pulls.states, pulls.stopped, pulls.batches = outcome.states, outcome.stopped, outcome.batches
    one.pulls = pulls
    one.after = status_matrix(cluster.name, members, model, max_parallel=parallel)
    if one.after.consistent and cluster.discovery:
        pulls.desired = record_desired(cluster, ref, manifest, options.timeout)
    return one


@dataclass
class ForgetResult:
    """``axon sync CLUSTER REF --forget``: the desired-state record removed (``removed``:
    what it said; None when there was none)."""

    cluster: str
    model_id: str
    key: str
    removed: str | None

    ok = True
    exit_code = EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "forget",
            "cluster": self.cluster,
            "model_id": self.model_id,
            "key": self.key,
            "removed": self.removed,
            "ok": True,
            "exit_code": EXIT_OK,
        }

    def lines(self, model_id: str = "") -> list[Line]:
        if self.removed is None:
            head = f"{self.model_id}: not in the desired state of {self.cluster} ({self.key})"
        else:
            head = f"{self.model_id}: removed from the desired state of {self.cluster}: " + (
                f"{self.key} ({self.removed})"
            )
        return [
            Line(head),
            Line(
                "  the members keep what they hold, and no longer catch up on it; to remove it "
                f"from them too: DELETE <member>/models/{self.model_id} on each (curl -X DELETE, "
                "with a tenant's token where the member has a tokens file)"
            ),
        ]


def forget(
    cluster_spec: str,
    ref_or_str: ModelRef | str,
    options: PublishOptions | None = None,
    *,
    config: Config | None = None,
) -> ForgetResult:
    """Remove ``ref`` from the desired state of ``cluster_spec`` (an etcd-discovered
    cluster), so that its members stop catching up on it (docs/relay.md). The members are
    left alone."""
    options = options or PublishOptions()
    config = config if config is not None else load_config()
    ref = _ref(ref_or_str)
    cluster = resolve_target(cluster_spec, config)
    if not isinstance(cluster, ClusterTarget):
        raise ConfigError(f"{cluster_spec!r} is not a cluster", target=cluster_spec)
    if not is_etcd(cluster.discovery):
        raise ConfigError(
            f"cluster {cluster.name!r} has no desired state to forget {ref.id} from (only a "
            "cluster discovered through etcd has one)",
            target=cluster.name,
            hint="delete the model from each member (DELETE <member>/models/ID) instead",
        )
    assert cluster.discovery is not None
    try:
        key, removed = forget_desired(cluster.discovery, cluster.name, ref, options.timeout)
    except httpx.HTTPError as exc:
        raise DiscoveryError(
            f"cannot remove {ref.id} from the desired state of {cluster.name}: "
            f"{cluster.discovery}: {type(exc).__name__}: {exc}",
            target=cluster.name,
            hint="check that etcd is up and retry; nothing was removed",
        ) from exc
    return ForgetResult(cluster.name, ref.id, key, removed)


__all__ = ["ForgetResult", "ModelSync", "SyncResult", "forget", "sync"]
