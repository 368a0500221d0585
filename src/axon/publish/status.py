"""What one instance holds of a model, read-only: ``axon status`` for an instance.

:func:`instance_status` compares the instance's manifest with the cached one and asks
``GET /models/{id}``; :func:`health_problem` asks ``GET /health``. A cluster asks both of each
member (:mod:`axon.publish.matrix`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from axon.errors import AxonError
from axon.mlos_client import HEALTH_TIMEOUT, MlosClient, ProtocolError
from axon.publish.notify import registry_client
from axon.publish.plan import compare, target_location
from axon.publish.prepared import PreparedModel
from axon.transports import transport_for

if TYPE_CHECKING:
    from axon.targets import InstanceTarget


@dataclass
class InstanceStatus:
    """``axon status`` for one instance: present? which version? matching? registered?"""

    target: str
    method: str
    model_id: str
    location: str
    present: bool
    version: str | None  # the version in the target's manifest
    checksums_match: bool | None  # None when the target's manifest cannot be read
    mismatched: list[str]  # files that differ from (or are missing against) the cache
    registered: bool | None  # None when the instance's API could not be asked
    error: dict[str, Any] | None = None
    # files the instance reports damaged: their bytes rewritten in place by another tool
    damaged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.present and bool(self.checksums_match) and self.error is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def instance_status(model: PreparedModel, target: InstanceTarget) -> InstanceStatus:
    """Compare what ``target`` holds for ``model.ref`` with the cache, and ask if registered."""
    with transport_for(target) as transport:
        remote = transport.fetch_manifest(model.ref)
        location, _path = target_location(transport, model)
        method = transport.method
        held = transport.matches(model.ref, model.manifest) if remote is None else None
        if held:
            remote = model.manifest
    mismatched: list[str] = []
    if remote is not None:
        mismatched = [f.path for f in compare(model, remote) if f.send]
        ours = {f.path for f in model.manifest.files}
        mismatched += sorted(f.path for f in remote.files if f.path not in ours)
    status = InstanceStatus(
        target=target.name,
        method=method,
        model_id=model.ref.id,
        location=location,
        present=remote is not None,
        version=remote.version if remote is not None else None,
        checksums_match=not mismatched if remote is not None else None,
        mismatched=mismatched,
        registered=None,
    )
    try:
        with registry_client(target) as client:
            info = client.model_info(model.ref)
        status.registered = info is not None
        _note_damage(status, info)
    except ProtocolError:
        raise  # not an MLOS Core answering: nothing it says about the model counts
    except AxonError as exc:
        status.error = exc.to_dict()
    if not status.present and held is not None and status.registered:
        # registered on an API-only instance, but not with the cache's manifest
        status.present, status.checksums_match = True, False
        status.version = model.ref.version
    return status


def _note_damage(status: InstanceStatus, info: dict[str, Any] | None) -> None:
    """The files the instance's registration says are damaged (mlos-core: rewritten in
    place by another tool) do not match the cache, whatever the manifest says."""
    damaged = (info or {}).get("damaged")
    if not isinstance(damaged, list):
        return
    status.damaged = [str(p)[:500] for p in damaged[:1000]]
    if status.damaged:
        status.mismatched += [p for p in status.damaged if p not in status.mismatched]
        status.checksums_match = False if status.present else status.checksums_match


def health_problem(target: InstanceTarget, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None when ``GET /health`` says healthy, else why not (one line)."""
    with MlosClient.for_target(target, timeout) as client:
        return client.health().problem


__all__ = ["InstanceStatus", "health_problem", "instance_status"]
