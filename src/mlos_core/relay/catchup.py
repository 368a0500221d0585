"""Catch-up: a member of a discovered cluster pulls what the cluster's desired state lists.

The desired state (:mod:`modelpkg.desired`: one record per model, written by ``axon`` after a
publish to the cluster succeeded) is read at start and every ``--catch-up-interval`` seconds.
Each listed model is

- **current**: visible here as that build (manifest digest) and registered;
- **diverged**: visible here as another build registered *after* the record's
  ``published_at`` (someone published to this instance directly since): left alone;
- **lagging**: missing, or an older build: a pull is started (sources: every peer that
  shows that build), retried each round until it is current.

Progress is reported in ``/health`` (``relay.catch_up``) and ``/metrics``
(``mlos_relay_lagging_models``, ``mlos_relay_catching_up``) until nothing lags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from modelpkg.desired import DesiredModel
from modelpkg.errors import PackageError
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from mlos_core.relay import Relay

from mlos_core.relay.pull import PullJob

log = logging.getLogger("mlos_core.relay")

SHOWN = 50  # model ids listed per kind in /health


class DesiredSource(Protocol):
    """A cluster's desired state (blocking; called in a worker thread). ``read`` raises
    ``ConnectionError`` when the store cannot be read; records that are not ones are left out
    (and logged) by the source."""

    def read(self) -> list[DesiredModel]: ...

    def describe(self) -> str: ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CatchUp:
    def __init__(self, relay: Relay, source: DesiredSource) -> None:
        self.relay = relay
        self.source = source
        self.interval = max(0.2, relay.settings.catch_up_interval)
        self.desired: dict[str, DesiredModel] = {}
        self.lagging: list[str] = []
        self.diverged: list[str] = []
        self.unowned: list[str] = []
        self.error: str | None = None
        self.checked_at: str | None = None
        self.jobs: dict[str, PullJob] = {}  # model id -> the last catch-up pull of it
        self._wake = asyncio.Event()

    @property
    def catching_up(self) -> bool:
        return bool(self.lagging) or any(not j.final for j in self.jobs.values())

    def wake(self) -> None:
        """Check again now rather than at the next interval."""
        self._wake.set()

    async def loop(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:  # one bad round must not end catching up
                log.exception("catch-up round failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def once(self) -> None:
        try:
            records = await asyncio.to_thread(self.source.read)
        except (ConnectionError, OSError, ValueError, PackageError) as exc:
            message = f"cannot read the desired state at {self.source.describe()}: {exc}"
            if message != self.error:
                log.warning("catch-up: %s (keeping the last one read)", message)
            self.error = message
            records = list(self.desired.values())
        else:
            if self.error:
                log.info("catch-up: desired state readable again at %s", self.source.describe())
            self.error = None
        self.desired = {r.model_id: r for r in records}
        lagging, diverged, unowned = [], [], []
        for record in self.desired.values():
            ref = ModelRef.parse(record.model_id)
            state = await asyncio.to_thread(self._state, ref, record)
            if state == "diverged":
                diverged.append(ref.id)
            elif state == "lagging":
                lagging.append(ref.id)
                if not self._start(ref, record):
                    unowned.append(ref.id)
        self.lagging, self.diverged, self.unowned = lagging, diverged, unowned
        self.checked_at = _now()

    def _state(self, ref: ModelRef, record: DesiredModel) -> str:
        core = self.relay.core
        digest = core.visible_digest(ref)
        entry = core.registry.get(ref.id)
        if entry is not None and digest == record.manifest_sha256:
            return "current"
        if entry is not None and digest is not None and entry.registered_at > record.published_at:
            return "diverged"
        return "lagging"

    def _start(self, ref: ModelRef, record: DesiredModel) -> bool:
        """Start a pull of ``record`` unless one runs; False when no tenant owns the model's
        namespace (nothing can be pulled for it)."""
        relay = self.relay
        tenant = relay.owner_of(ref.namespace)
        if tenant is None:
            return False
        previous = self.jobs.get(ref.id)
        if previous is not None and not previous.final:
            if previous.digest == record.manifest_sha256:
                return True
            if previous.task is not None:  # an older build's pull: superseded
                previous.task.cancel()
        joined = relay.running_for(ref.id, record.manifest_sha256, tenant)
        if joined is not None:
            self.jobs[ref.id] = joined
            return True
        job = PullJob(
            ref=ref,
            digest=record.manifest_sha256,
            tenant=tenant,
            sources=[],
            fallback=True,
            origin="catch-up",
        )
        self.jobs[ref.id] = relay.submit(job)
        log.info("catch-up: pulling %s (build %s) from peers", ref.id, job.digest[:12])
        return True

    def report(self) -> dict[str, Any]:
        pulls = []
        for model_id, job in sorted(self.jobs.items()):
            if model_id not in self.lagging:
                continue
            pulls.append(
                {
                    "model_id": model_id,
                    "pull_id": job.pull_id,
                    "state": job.state,
                    "bytes_done": job.bytes_done,
                    "bytes_total": job.bytes_total,
                    "source": job.source,
                    "code": job.code,
                    "message": job.message,
                }
            )
        return {
            "catching_up": self.catching_up,
            "desired": len(self.desired),
            "current": len(self.desired) - len(self.lagging) - len(self.diverged),
            "lagging": self.lagging[:SHOWN],
            "diverged": self.diverged[:SHOWN],
            "unowned": self.unowned[:SHOWN],
            "pulls": pulls[:SHOWN],
            "source": self.source.describe(),
            "error": self.error,
            "checked_at": self.checked_at,
        }
