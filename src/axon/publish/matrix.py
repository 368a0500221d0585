"""What each member of a cluster holds of a model: the status matrix.

``axon status REF --target CLUSTER`` prints it (:func:`cluster_status`); a rolling publish
checks every member of a batch with :func:`verify_published` before the next batch starts,
and prints the matrix when it stops. Each row is :func:`~axon.publish.status.health_problem`
then :func:`~axon.publish.status.instance_status` of one member.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from axon.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_PARTIAL, AxonError
from axon.publish.members import cluster_members
from axon.publish.prepared import PreparedModel
from axon.publish.status import health_problem, instance_status

if TYPE_CHECKING:
    from axon.targets import ClusterTarget, InstanceTarget


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
    """Probe one instance: ``GET /health``, then :func:`instance_status`."""
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


def cluster_status(
    model: PreparedModel, cluster: ClusterTarget, *, max_parallel: int = 16
) -> StatusMatrix:
    """``axon status REF --target CLUSTER``: for each member, is the model present, with the
    cached checksums, and registered?"""
    members = cluster_members(cluster)
    return status_matrix(cluster.name, members, model, max_parallel=max_parallel)


__all__ = [
    "StatusMatrix",
    "StatusRow",
    "cluster_status",
    "status_matrix",
    "status_row",
    "verify_published",
]
