"""Publishing models from the cache to instances, clusters and network storage.

One entry point, :func:`publish`: resolve the target, hash the model once
(:func:`prepare_model`), then hand it to the module for the kind of target::

    InstanceTarget -> axon.publish.instance.publish_to_instance
    ClusterTarget  -> axon.publish.cluster.publish_to_cluster    (imported when needed)
    StorageTarget  -> axon.publish.storage.publish_to_storage    (imported when needed)

``--dry-run`` returns plans instead of results. :func:`register` and :func:`status` back
``axon register`` and ``axon status``.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from axon.errors import EXIT_ALL_FAILED, EXIT_PARTIAL, ConfigError
from axon.progress import NULL_PROGRESS, Progress
from axon.publish.instance import (
    StagedPublish,
    early_transport,
    publish_to_instance,
    stage_on_instance,
)
from axon.publish.notify import notify_instance
from axon.publish.plan import (
    InstancePlan,
    InstanceResult,
    InstanceStatus,
    PreparedModel,
    PublishOptions,
    instance_status,
    plan_instance,
    prepare_model,
)
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.cache import Cache
    from axon.config import Config
    from axon.targets import InstanceTarget


@dataclass
class PublishResult:
    """Everything one ``axon publish`` did: one result (or plan) per target, never hidden."""

    model_id: str
    target: str
    dry_run: bool = False
    results: list[Any] = field(default_factory=list)  # InstanceResult / ClusterResult / ...
    plans: list[Any] = field(default_factory=list)  # InstancePlan (dry run)

    @property
    def ok(self) -> bool:
        return all(bool(getattr(r, "ok", False)) for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when all went well; one target: its own code; several: partial / all failed."""
        failed = [r for r in self.results if not getattr(r, "ok", False)]
        if not failed:
            return 0
        if len(self.results) == 1:
            return int(getattr(failed[0], "exit_code", 0) or EXIT_ALL_FAILED)
        return EXIT_ALL_FAILED if len(failed) == len(self.results) else EXIT_PARTIAL

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model_id": self.model_id,
            "target": self.target,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "exit_code": self.exit_code,
        }
        if self.dry_run:
            data["plans"] = [p.to_dict() for p in self.plans]
        else:
            data["results"] = [r.to_dict() for r in self.results]
        return data


def _context(
    ref_or_str: ModelRef | str, config: Config | None, cache: Cache | None
) -> tuple[ModelRef, Config, Cache]:
    from axon.cache import Cache
    from axon.config import load_config

    ref = ref_or_str if isinstance(ref_or_str, ModelRef) else ModelRef.parse(ref_or_str)
    config = config if config is not None else load_config()
    cache = cache if cache is not None else Cache.from_config(config)
    return ref, config, cache


def _kind_module(kind: str) -> Any:
    """Import ``axon.publish.<kind>`` (cluster, storage) lazily, with a clear error if absent."""
    try:
        return importlib.import_module(f"axon.publish.{kind}")
    except ModuleNotFoundError as exc:
        if exc.name != f"axon.publish.{kind}":
            raise
        raise ConfigError(
            f"publishing to a {kind} target is not available in this axon",
            hint="upgrade axon-publish",
        ) from exc


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
    from axon.targets import ClusterTarget, InstanceTarget, StorageTarget, resolve_target

    options = options or PublishOptions()
    ref, config, cache = _context(ref_or_str, config, cache)
    target = resolve_target(target_spec, config)
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
        outcome = _kind_module("cluster").publish_to_cluster(model, target, options, progress)
        _collect(result, outcome)
    elif isinstance(target, StorageTarget):
        outcome = _kind_module("storage").publish_to_storage(model, target, options, progress)
        _collect(result, outcome)
    else:  # pragma: no cover - resolve_target returns one of the three
        raise ConfigError(f"unsupported target type {type(target).__name__}", target=target_spec)
    return result


def _collect(result: PublishResult, outcome: Any) -> None:
    # cluster/storage modules return one result object; in a dry run it may carry plans
    plans = getattr(outcome, "plans", None)
    if result.dry_run and plans is not None:
        result.plans.extend(plans)
    if not result.dry_run or plans is None:
        result.results.append(outcome)


def _instance(target_spec: str, config: Config) -> InstanceTarget:
    from axon.targets import InstanceTarget, resolve_target

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
    from axon.transports import transport_for

    ref, config, cache = _context(ref_or_str, config, cache)
    target = _instance(target_spec, config)
    manifest = None
    with contextlib.suppress(FileNotFoundError):  # a model only the instance has is fine
        manifest = cache.get(ref).manifest
    with transport_for(target) as transport:
        path = transport.instance_path(ref)
    return notify_instance(target, ref, path, manifest=manifest)


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


__all__ = [
    "InstancePlan",
    "InstanceResult",
    "InstanceStatus",
    "PreparedModel",
    "PublishOptions",
    "PublishResult",
    "StagedPublish",
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
