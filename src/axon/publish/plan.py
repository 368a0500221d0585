"""Plans: what publishing to an instance would do, decided before anything moves.

:func:`plan_instance` compares the cache with what the target holds now, changing nothing
(``--dry-run``). :func:`compare` is the rule every plan and status check shares: a file is
sent unless the target has the same path with the same sha256.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from axon.publish.prepared import PreparedModel
from axon.transports import transport_for

if TYPE_CHECKING:
    from axon.targets import InstanceTarget
    from axon.transports.base import Transport
    from modelpkg.manifest import Manifest


@dataclass
class PlannedFile:
    path: str
    size: int
    send: bool  # False: the target already holds this content


@dataclass
class InstancePlan:
    """What publishing to one instance would do (``--dry-run``); changes nothing."""

    target: str
    method: str
    location: str  # where the files would go
    path: str | None  # the model directory as the instance sees it, when known
    files: list[PlannedFile]
    unchanged: bool  # the target already has exactly this manifest

    @property
    def bytes_to_send(self) -> int:
        return sum(f.size for f in self.files if f.send)

    @property
    def files_to_send(self) -> int:
        return sum(1 for f in self.files if f.send)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(bytes_to_send=self.bytes_to_send, files_to_send=self.files_to_send)
        return data


def compare(model: PreparedModel, remote: Manifest | None) -> list[PlannedFile]:
    """Each file of ``model``, marked ``send`` unless ``remote`` has the same path and sha256."""
    have = {(f.path, f.sha256) for f in remote.files} if remote is not None else set()
    return [
        PlannedFile(f.path, f.size, send=(f.path, f.sha256) not in have)
        for f in model.manifest.files
    ]


def target_location(transport: Transport, model: PreparedModel) -> tuple[str, str | None]:
    """Where ``model`` goes through ``transport`` (for messages), and the model directory
    as the instance sees it when the transport knows it."""
    return transport.location(model.ref), transport.instance_path(model.ref)


def plan_instance(model: PreparedModel, target: InstanceTarget) -> InstancePlan:
    """What :func:`~axon.publish.instance.publish_to_instance` would send; reads only.

    Content-addressed targets (the API) may need even less than planned: they also reuse
    blobs of other models.
    """
    with transport_for(target) as transport:
        remote = transport.fetch_manifest(model.ref)
        location, path = target_location(transport, model)
        files = compare(model, remote)
        return InstancePlan(
            target=target.name,
            method=transport.method,
            location=location,
            path=path,
            files=files,
            unchanged=remote is not None and not any(f.send for f in files),
        )


__all__ = ["InstancePlan", "PlannedFile", "compare", "plan_instance", "target_location"]
