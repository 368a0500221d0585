"""What a publish reports: one result per target, never "stop at the first failure".

Every kind of target reports through the same :class:`TargetResult` protocol, so callers
(the CLI among them) need not know which kind they hold::

    TargetResult                 ok, exit_code, to_dict() (--json), lines() (human text)
    ├── InstanceResult           one MLOS Core instance (here)
    ├── ClusterResult            one InstanceResult and one state per member
    │                            (axon.publish.cluster)
    └── StorageResult            the storage write, then one notice per reading instance
                                 (axon.publish.storage)

:class:`PublishResult` holds the results (or, for ``--dry-run``, the plans) of one publish.
The member states of a cluster publish and the functions that build the result of an instance
that did not (fully) run are here too: the cluster, rollout and instance code share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from axon.errors import (
    EXIT_ALL_FAILED,
    EXIT_INTEGRITY,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_TRANSPORT,
    AxonError,
)
from axon.progress import size_text

if TYPE_CHECKING:
    from axon.publish.plan import InstancePlan
    from axon.targets import InstanceTarget


@dataclass(frozen=True)
class Line:
    """One line of a result's human summary. ``error`` lines report a failure on their
    own (the CLI sends them to stderr, as ``axon: error: ...``)."""

    text: str
    error: bool = False


class TargetResult(Protocol):
    """The outcome of publishing to one target, whatever its kind."""

    @property
    def ok(self) -> bool:
        """The target has the model (for a cluster: enough members have it)."""
        ...

    @property
    def exit_code(self) -> int:
        """0 when ok, else the exit code of what went wrong (docs/exit-codes.md)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """This result as one JSON object of ``axon publish --json``."""
        ...

    def lines(self, model_id: str) -> list[Line]:
        """The human summary of ``model_id``'s publish to this target."""
        ...


def error_text(error: dict[str, Any], fallback_target: str) -> str:
    """One line for an ``error`` dict: the target, the message, the hint."""
    target = error.get("target") or fallback_target
    text = str(error.get("message") or error.get("type") or "failed")
    if not text.startswith(str(target)):
        text = f"{target}: {text}"
    if error.get("hint"):
        text += f" ({error['hint']})"
    return text


@dataclass
class InstanceResult:
    """The outcome of publishing to one instance (one object of ``--json`` output)."""

    target: str
    method: str
    location: str
    path: str | None
    files_sent: int = 0
    files_skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    notified: bool = False
    registered: bool = False
    attempts: int = 0
    error: dict[str, Any] | None = None
    ok: bool = False
    exit_code: int = 0
    #: a relayed cluster publish: where the bytes came from (docs/relay.md), else None
    relay: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self, model_id: str) -> list[Line]:
        """``published ... -> target``, then where; or the one error line."""
        if not self.ok:
            return [Line(error_text(self.error or {}, self.target), error=True)]
        tail = " (unchanged: nothing sent)" if self.files_sent == 0 else ""
        registered = ", registered" if self.registered else ""
        return [
            Line(
                f"published {model_id} -> {self.target} ({self.method}): {self.files_sent} "
                f"sent, {self.files_skipped} skipped, {size_text(self.bytes_sent)} in "
                f"{self.seconds:.2f} s{registered}{tail}"
            ),
            Line(f"  at {self.location}"),
        ]


# ---- the state of each member of a cluster publish --------------------------------------
PUBLISHED = "published"  # the only state that counts as a success
FAILED = "failed"
UNHEALTHY = "unhealthy"  # skipped: GET /health did not answer "healthy"
CANCELLED = "cancelled"  # --fail-fast: never started
NOT_STARTED = "not-started"  # a batch before it failed: still on its previous version
UNUSED = "unused"  # first-available / round-robin: an earlier member took the model
ABORTED = "aborted"  # --atomic: staged, then dropped because another member failed
ROLLED_BACK = "rolled-back"  # --atomic: switched, then switched back


# ---- results of instances that did not (fully) run ----------------------------------------
def error_dict(exc: BaseException, target: str) -> dict[str, Any]:
    """The ``error`` of an InstanceResult, from any exception (AxonError keeps its fields)."""
    if isinstance(exc, AxonError):
        data = exc.to_dict()
        data.setdefault("target", target)
        data.setdefault("exit_code", exc.exit_code)
        return data
    return {"type": type(exc).__name__, "message": str(exc) or repr(exc), "target": target}


def failed_result(
    target: InstanceTarget, error: dict[str, Any], seconds: float = 0.0
) -> InstanceResult:
    """An InstanceResult for an instance where nothing (more) was published."""
    return InstanceResult(
        target=target.name,
        method=target.access_method,
        location=target.endpoint,
        path=None,
        seconds=seconds,
        error=error,
        ok=False,
        exit_code=int(error.get("exit_code", EXIT_TRANSPORT)),
    )


def state_error(target: InstanceTarget, state: str, message: str) -> InstanceResult:
    """The result of a member that was not (fully) published, for a reason named ``state``.

    Its ``exit_code``: 7 for an unhealthy member, 0 for one a pick-one strategy did not
    need, else 9 (it is part of a cluster publish that did not complete)."""
    code = {UNHEALTHY: EXIT_TRANSPORT, UNUSED: EXIT_OK}.get(state, EXIT_PARTIAL)
    error = {"type": state, "message": message, "target": target.name, "exit_code": code}
    return failed_result(target, error)


def mark_failed(result: InstanceResult, error: dict[str, Any]) -> InstanceResult:
    """The same result, now failed with ``error`` (e.g. verification after a batch)."""
    result.error = error
    result.ok = False
    result.exit_code = int(error.get("exit_code", EXIT_INTEGRITY))
    return result


def reason(result: InstanceResult) -> str:
    """One line: why this instance failed."""
    err = result.error or {}
    text = str(err.get("message") or err.get("type") or "failed")
    if err.get("hint"):
        text += f" ({err['hint']})"
    return text


# ---- one publish --------------------------------------------------------------------------
@dataclass
class PublishResult:
    """Everything one ``axon publish`` did: one result (or plan) per target, never hidden."""

    model_id: str
    target: str
    dry_run: bool = False
    results: list[TargetResult] = field(default_factory=list)
    plans: list[InstancePlan] = field(default_factory=list)  # --dry-run

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when all went well; one target: its own code; several: partial / all failed."""
        failed = [r for r in self.results if not r.ok]
        if not failed:
            return 0
        if len(self.results) == 1:
            return int(failed[0].exit_code or EXIT_ALL_FAILED)
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


__all__ = [
    "ABORTED",
    "CANCELLED",
    "FAILED",
    "NOT_STARTED",
    "PUBLISHED",
    "ROLLED_BACK",
    "UNHEALTHY",
    "UNUSED",
    "InstanceResult",
    "Line",
    "PublishResult",
    "TargetResult",
    "error_dict",
    "error_text",
    "failed_result",
    "mark_failed",
    "reason",
    "size_text",
    "state_error",
]
