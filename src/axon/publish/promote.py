"""``axon promote REF --from STAGING --to PROD``: production pulls the build staging holds.

The members of the target cluster pull the model from the members of the source cluster
(relay, :mod:`axon.publish.relayed`): the publisher sends no model bytes at all, so a
laptop on a slow link promotes a 5 GB model as fast as the data centre moves it.

Before anything moves, the build is pinned: every source member is asked for the model's
manifest (``GET /v1/models/{id}/manifest``) and

* when the model is in the local cache, each member that holds it must hold exactly the
  cache's build (the digest of its manifest as published);
* otherwise every member that holds it must hold the same build.

A member holding another build stops the promotion (exit 5), naming it. Members that lack
the model or cannot be asked are not used as sources (the report lists them); with no
member holding it the promotion stops (exit 3). The target cluster's members must accept the
source cluster's members as peers (``mlos-core --accept-from STAGING``); one that cannot pull
fails with that hint, it is never sent the bytes by the publisher. Rollout control
(``--batch-size``, ``--atomic``, ``--min-success``, ``--fail-fast``) is as for a publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axon.cache import Cache
from axon.config import load_config
from axon.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    AxonError,
    ConfigError,
    IntegrityError,
    ModelNotFoundError,
)
from axon.mlos_client import MlosClient
from axon.progress import NULL_PROGRESS, Progress
from axon.publish.cluster import DEFAULT_MAX_PARALLEL, ClusterResult, rollout_all
from axon.publish.desired import build_digest, record_desired
from axon.publish.matrix import status_matrix
from axon.publish.members import cluster_members
from axon.publish.options import PublishOptions, parse_min_success
from axon.publish.prepared import PreparedModel, prepare_model
from axon.publish.relay import Peer, RelaySettings, survey
from axon.publish.results import Line
from axon.publish.rollout import parallel_map
from axon.targets import ClusterTarget, resolve_target
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.config import Config
    from axon.targets import InstanceTarget
    from modelpkg.manifest import Manifest


@dataclass
class Build:
    """The build a source cluster holds: its manifest and digest, the members holding it
    (the pull sources), and a note for each member that is not one."""

    manifest: Manifest
    digest: str
    holders: list[InstanceTarget]
    notes: list[str] = field(default_factory=list)
    pinned_by: str = "cache"  # "cache" (the local cache's build) or "agreement"


def held_manifest(ref: ModelRef, target: InstanceTarget) -> Manifest | None:
    """The manifest of ``ref`` ``target`` shows (None: it does not have the model)."""
    with MlosClient.for_target(target) as client:
        served, manifest = client.manifest(ref)
    if not served:
        raise AxonError(
            f"{target.name} cannot show its manifest (no GET /v1/models/{{id}}/manifest)",
            target=target.name,
        )
    return manifest


def source_build(
    ref: ModelRef, cluster: str, members: list[InstanceTarget], expected: str | None
) -> Build:
    """The build ``members`` hold of ``ref`` (see the module docstring); raises
    IntegrityError naming a member holding another build, ModelNotFoundError when none
    holds it."""
    answers = parallel_map(members, lambda t: held_manifest(ref, t), DEFAULT_MAX_PARALLEL)
    holding: dict[str, tuple[InstanceTarget, Manifest]] = {}
    notes = []
    for t in members:
        manifest, exc = answers[t.name]
        if exc is not None:
            why = exc.message if isinstance(exc, AxonError) else str(exc)
            notes.append(f"{t.name}: not a source: cannot ask it ({why})")
        elif manifest is None:
            notes.append(f"{t.name}: not a source: it does not have {ref}")
        else:
            holding[t.name] = (t, manifest)
    if not holding:
        raise ModelNotFoundError(
            f"no member of {cluster} has {ref}: nothing to promote",
            target=cluster,
            hint=f"publish it to {cluster} first (axon publish {ref} --target {cluster})",
        )
    digests = {name: m.digest() for name, (_t, m) in holding.items()}
    want = expected or _agreed(ref, cluster, digests)
    wrong = [name for name, d in digests.items() if d != want]
    if wrong:
        what = "the local cache's build" if expected else "the other members"
        raise IntegrityError(
            f"{', '.join(wrong)} of {cluster} {'holds' if len(wrong) == 1 else 'hold'} another "
            f"build of {ref} than {what} "
            f"(manifest sha256 {digests[wrong[0]][:12]}, expected {want[:12]}): refusing to "
            "promote",
            target=wrong[0],
            hint=f"publish the build you mean to {cluster} again, or check `axon status {ref} "
            f"--target {cluster}`",
        )
    first = next(iter(holding.values()))[1]
    holders = [t for t, _m in holding.values()]
    return Build(first, want, holders, notes, "cache" if expected else "agreement")


def _agreed(ref: ModelRef, cluster: str, digests: dict[str, str]) -> str:
    """The digest every member holding the model shows; IntegrityError naming who differs."""
    groups: dict[str, list[str]] = {}
    for name, digest in digests.items():
        groups.setdefault(digest, []).append(name)
    if len(groups) == 1:
        return next(iter(groups))
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    shown = "; ".join(f"{', '.join(names)}: {d[:12]}" for d, names in ranked)
    odd = ranked[-1][1][0]
    raise IntegrityError(
        f"the members of {cluster} disagree about {ref} ({shown}): refusing to promote",
        target=odd,
        hint=f"install the build you mean in the cache (then it is the reference), or "
        f"publish it to {cluster} again",
    )


@dataclass
class PromoteResult:
    """A promotion: the build, its sources, then the target cluster's rollout."""

    ref: str
    source: str
    build: Build
    cluster: ClusterResult
    plans: list[str] = field(default_factory=list)  # --dry-run

    @property
    def ok(self) -> bool:
        if self.plans:  # --dry-run: every member would be able to pull
            return not any("would FAIL" in p for p in self.plans)
        return self.cluster.ok

    @property
    def exit_code(self) -> int:
        if self.plans:
            return EXIT_OK if self.ok else EXIT_PARTIAL
        return self.cluster.exit_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "promotion",
            "model_id": self.ref,
            "from": self.source,
            "to": self.cluster.cluster,
            "manifest_sha256": self.build.digest,
            "pinned_by": self.build.pinned_by,
            "sources": [t.name for t in self.build.holders],
            "notes": self.build.notes,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "plans": self.plans or None,
            "result": self.cluster.to_dict(),
        }

    def lines(self, model_id: str = "") -> list[Line]:
        b = self.build
        pinned = "the cache's build" if b.pinned_by == "cache" else "all its members agree"
        head = [
            f"promote {self.ref} (manifest {b.digest[:12]}, {pinned}) from {self.source} "
            f"to {self.cluster.cluster}",
            f"  sources: {', '.join(t.name for t in b.holders)}",
            *(f"  {note}" for note in b.notes),
        ]
        if self.plans:
            return [Line(t) for t in head + self.plans]
        return [Line(t) for t in head] + self.cluster.lines()


def _clusters(config: Config, source: str, target: str) -> tuple[ClusterTarget, ClusterTarget]:
    out = []
    for flag, spec in (("--from", source), ("--to", target)):
        found = resolve_target(spec, config)
        if not isinstance(found, ClusterTarget):
            raise ConfigError(
                f"{flag} {spec!r} is not a cluster",
                target=spec,
                hint="name clusters of the config (clusters: or mlos_targets: type: cluster)",
            )
        out.append(found)
    if out[0].name == out[1].name:
        raise ConfigError(f"--from and --to are the same cluster {source!r}", target=source)
    return out[0], out[1]


def promote(
    ref_or_str: ModelRef | str,
    source: str,
    target: str,
    options: PublishOptions | None = None,
    progress: Progress = NULL_PROGRESS,
    *,
    settings: RelaySettings | None = None,
    config: Config | None = None,
    cache: Cache | None = None,
) -> PromoteResult:
    """Promote ``ref`` from cluster ``source`` to cluster ``target`` (module docstring)."""
    started = time.monotonic()
    options = options or PublishOptions()
    options.check("all")
    ref = ref_or_str if isinstance(ref_or_str, ModelRef) else ModelRef.parse(ref_or_str)
    config = config if config is not None else load_config()
    cache = cache if cache is not None else Cache.from_config(config)
    staging, prod = _clusters(config, source, target)
    expected = cached_digest(cache, ref)
    timeout = min(options.timeout, 10.0)
    build = source_build(ref, staging.name, cluster_members(staging, timeout=timeout), expected)
    members = cluster_members(prod, timeout=timeout)
    if not members:
        raise ConfigError(f"cluster {prod.name!r} has no instances", target=prod.name)
    parallel = options.max_parallel or prod.max_parallel or min(DEFAULT_MAX_PARALLEL, len(members))
    model = PreparedModel(ref, build.manifest, Path(), sum(f.size for f in build.manifest.files))
    sources = _sources(build, parallel)
    required = parse_min_success(options.min_success, len(members))
    result = ClusterResult(prod.name, "all", [], {}, required, len(members), relay=True)
    promotion = PromoteResult(ref.id, staging.name, build, result)
    if options.dry_run:
        promotion.plans = _plans(members, sources, parallel)
        return promotion
    settings = settings or cluster_relay(prod)
    outcome = rollout_all(
        model, members, options, parallel, progress, settings, sources=sources, push=False
    )
    result.results = [outcome.results[m.name] for m in members]
    result.states, result.stopped, result.batches = outcome.states, outcome.stopped, outcome.batches
    if outcome.stopped and options.batch_size:
        result.matrix = status_matrix(prod.name, members, model, max_parallel=parallel)
    if result.ok and prod.discovery:
        result.desired = record_desired(prod, ref, build.manifest, options.timeout)
    result.seconds = time.monotonic() - started
    return promotion


def cached_digest(cache: Cache, ref: ModelRef) -> str | None:
    """The digest of the cache's build of ``ref`` (as published), or None when the cache
    does not have it. Files are not re-hashed: a promotion moves no bytes from here."""
    try:
        model = prepare_model(cache, ref, validate=False)
    except ModelNotFoundError:
        return None
    return build_digest(ref, model.manifest)


def _sources(build: Build, parallel: int) -> list[Peer]:
    """The holders as relay sources: those that serve blobs (their advertised address)."""
    peers = survey(build.holders, max_parallel=parallel)
    usable = [p for p in peers.values() if p.address is not None]
    if not usable:
        raise AxonError(
            f"none of {', '.join(t.name for t in build.holders)} serves blobs to peers "
            "(GET /v1/relay): nothing to promote from",
            hint="upgrade the source cluster's mlos-core",
        )
    for p in peers.values():
        if p.address is None:
            build.notes.append(f"{p.name}: not a source: {p.why_not}")
    return usable


def cluster_relay(cluster: ClusterTarget) -> RelaySettings:
    """The cluster's ``relay:`` seeds and fanout (the defaults without a mapping)."""
    from axon.config import RelayConfig

    conf = cluster.relay
    if isinstance(conf, RelayConfig):
        return RelaySettings(seeds=conf.seeds, fanout=max(1, conf.fanout))
    return RelaySettings()


def _plans(members: list[InstanceTarget], sources: list[Peer], parallel: int) -> list[str]:
    """``--dry-run``: how each member would get the build."""
    lines = []
    for p in survey(members, max_parallel=parallel).values():
        usable = [s.name for s in sources if p.accepts_from(s)]
        if not p.can_pull:
            lines.append(f"  would FAIL  {p.name}: cannot pull: {p.why_not}")
        elif not usable:
            lines.append(f"  would FAIL  {p.name}: accepts none of the sources as a peer")
        else:
            lines.append(f"  would pull  {p.name} <- one of {', '.join(usable)}")
    return lines


__all__ = [
    "Build",
    "PromoteResult",
    "cached_digest",
    "cluster_relay",
    "held_manifest",
    "promote",
    "source_build",
]
