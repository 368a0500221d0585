"""Publishing models from the cache to instances, clusters and network storage.

One entry point, :func:`publish`: resolve the target, hash the model once
(:func:`prepare_model`), then hand it to the module for the kind of target::

    InstanceTarget -> axon.publish.instance.publish_to_instance
    ClusterTarget  -> axon.publish.cluster.publish_to_cluster
    StorageTarget  -> axon.publish.storage.publish_to_storage

Each returns a :class:`~axon.publish.results.TargetResult`; ``--dry-run`` returns plans
instead. :func:`register`, :func:`status` and :func:`cluster_status_for` back
``axon register`` and ``axon status``.

Modules, each calling only those below it::

    __init__     this façade
    cluster      strategies and quorum of a cluster publish, ClusterResult
    storage      network storage: one write, then each reader told; StorageResult
    rollout      fan-out, batches, all-or-nothing over a list of instances
    undo         the previous version kept aside for --atomic
    matrix       what each member of a cluster holds (axon status, checks between batches)
    instance     one instance: stage (with retries and resume) -> commit -> notify
    status       what one instance holds (axon status)
    members      a cluster's static and discovered members
    round_robin  the saved round-robin position of each cluster
    notify       POST /models/register, NotifyError when it fails
    plan         what a publish would send (--dry-run)
    results      the result protocol, InstanceResult, PublishResult, member states
    prepared     the model checked and hashed once
    options      PublishOptions, checked when built

The façade imports ``cluster``, ``storage`` and ``matrix`` when a call needs them:
a single-instance publish, whose start-up is most of an unchanged re-publish, never loads
their thread pools and subprocess machinery.

Every HTTP call to an instance goes through :class:`axon.mlos_client.MlosClient`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from axon.cache import Cache
from axon.config import load_config
from axon.errors import ConfigError
from axon.progress import NULL_PROGRESS, Progress
from axon.publish.instance import (
    StagedPublish,
    early_transport,
    publish_to_instance,
    stage_on_instance,
)
from axon.publish.notify import notify_instance
from axon.publish.options import PublishOptions
from axon.publish.plan import InstancePlan, plan_instance
from axon.publish.prepared import PreparedModel, prepare_model
from axon.publish.results import InstanceResult, Line, PublishResult, TargetResult
from axon.publish.status import InstanceStatus, instance_status
from axon.targets import ClusterTarget, InstanceTarget, StorageTarget, resolve_target
from axon.transports import transport_for
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.config import Config
    from axon.publish.cluster import ClusterResult
    from axon.publish.matrix import StatusMatrix
    from axon.publish.storage import StorageResult


def _context(
    ref_or_str: ModelRef | str, config: Config | None, cache: Cache | None
) -> tuple[ModelRef, Config, Cache]:
    ref = ref_or_str if isinstance(ref_or_str, ModelRef) else ModelRef.parse(ref_or_str)
    config = config if config is not None else load_config()
    cache = cache if cache is not None else Cache.from_config(config)
    return ref, config, cache


def publish(
    ref_or_str: ModelRef | str,
    target_spec: str = "localhost",
    options: PublishOptions | None = None,
    progress: Progress = NULL_PROGRESS,
    *,
    config: Config | None = None,
    cache: Cache | None = None,
) -> PublishResult:
    """Publish a cached model to ``target_spec`` (a configured name, host, URL or storage).

    Raises for problems before any target is touched (bad reference, model not in the
    cache, integrity, unknown target); failures on targets are in the result.
    """
    options = options or PublishOptions()
    ref, config, cache = _context(ref_or_str, config, cache)
    target = resolve_target(target_spec, config)
    if options.notify_instances:
        from axon.publish.storage import with_readers

        target = with_readers(target, options.notify_instances, config)
    early = None
    if isinstance(target, InstanceTarget) and not options.dry_run:
        early = early_transport(target, options)  # an SSH login overlaps the validation
    try:
        model = prepare_model(
            cache, ref, validate=options.validate, full=options.full_verify, progress=progress
        )
    except BaseException:
        if early is not None:
            early.close()
        raise
    result = PublishResult(model_id=ref.id, target=target_spec, dry_run=options.dry_run)
    if isinstance(target, InstanceTarget):
        if options.dry_run:
            result.plans.append(plan_instance(model, target))
        else:
            outcome = publish_to_instance(model, target, options, progress, transport=early)
            result.results.append(outcome)
    elif isinstance(target, ClusterTarget):
        from axon.publish.cluster import publish_to_cluster  # on first use: see above

        _collect(result, publish_to_cluster(model, target, options, progress))
    elif isinstance(target, StorageTarget):
        from axon.publish.storage import publish_to_storage  # on first use: see above

        _collect(result, publish_to_storage(model, target, options, progress))
    else:  # pragma: no cover - resolve_target returns one of the three
        raise ConfigError(f"unsupported target type {type(target).__name__}", target=target_spec)
    return result


def _collect(result: PublishResult, outcome: ClusterResult | StorageResult) -> None:
    """A cluster or storage result; in a dry run its plans instead, when it has them (a
    storage target that could not be planned reports its error as a result)."""
    if result.dry_run and outcome.plans is not None:
        result.plans.extend(outcome.plans)
    else:
        result.results.append(outcome)


def _instance(target_spec: str, config: Config) -> InstanceTarget:
    target = resolve_target(target_spec, config)
    if not isinstance(target, InstanceTarget):
        raise ConfigError(
            f"{target_spec!r} is a {type(target).__name__.removesuffix('Target').lower()}, "
            "not a single instance",
            target=target_spec,
            hint="give one instance of it with --target",
        )
    return target


def register(
    ref_or_str: ModelRef | str,
    target_spec: str = "localhost",
    *,
    config: Config | None = None,
    cache: Cache | None = None,
) -> dict[str, Any]:
    """``POST /models/register`` for a model already on the instance (upstream command).

    ``path`` is the model directory on the instance when the target's storage is known.
    """
    ref, config, cache = _context(ref_or_str, config, cache)
    target = _instance(target_spec, config)
    manifest = None
    with contextlib.suppress(FileNotFoundError):  # a model only the instance has is fine
        manifest = cache.get(ref).manifest
    with transport_for(target) as transport:
        path = transport.instance_path(ref)
    return notify_instance(target, ref, path, manifest=manifest, published=False)


def status(
    ref_or_str: ModelRef | str,
    target_spec: str = "localhost",
    *,
    config: Config | None = None,
    cache: Cache | None = None,
    full: bool = False,
) -> InstanceStatus:
    """Is ``ref`` on the target, which version, do its checksums match the cache, registered?"""
    ref, config, cache = _context(ref_or_str, config, cache)
    target = _instance(target_spec, config)
    model = prepare_model(cache, ref, validate=True, full=full)
    return instance_status(model, target)


def cluster_status_for(
    ref_or_str: ModelRef | str,
    target_spec: str,
    *,
    config: Config | None = None,
    cache: Cache | None = None,
    full: bool = False,
) -> StatusMatrix | None:
    """The status matrix when ``target_spec`` names a cluster; None for any other target
    (:func:`status` handles a single instance). The model must be in the cache: its
    checksums are what every instance is compared with."""
    from axon.publish.matrix import cluster_status  # on first use: see the module docstring

    config = config if config is not None else load_config()
    target = resolve_target(target_spec, config)
    if not isinstance(target, ClusterTarget):
        return None
    ref, config, cache = _context(ref_or_str, config, cache)
    model = prepare_model(cache, ref, validate=True, full=full)
    return cluster_status(model, target)


__all__ = [
    "InstancePlan",
    "InstanceResult",
    "InstanceStatus",
    "Line",
    "PreparedModel",
    "PublishOptions",
    "PublishResult",
    "StagedPublish",
    "TargetResult",
    "cluster_status_for",
    "instance_status",
    "notify_instance",
    "plan_instance",
    "prepare_model",
    "publish",
    "publish_to_instance",
    "register",
    "stage_on_instance",
    "status",
]
