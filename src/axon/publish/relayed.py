"""A cluster publish or promotion through relay: who gets the publisher's bytes, who pulls.

:class:`Relay` runs :func:`axon.publish.relay.spread` over a list of members and turns what
each did into its result: pulled (from whom, after which sources failed), pushed as a seed,
or pushed directly because it could not pull (and why). The same class serves

* ``axon publish --target CLUSTER`` with relay on: a :class:`Pusher` sends seeds (and the
  members that cannot pull) the model from the cache;
* ``axon promote``: no pusher; the members of the source cluster are the sources from the
  start, and a member that cannot pull fails, saying why (no model bytes leave the
  publisher);
* each batch of ``--batch-size`` (the sources carry over from batch to batch), and the
  staging half of ``--atomic`` (:meth:`Relay.stage`: pulls stop at a prepared upload, which
  peers can already pull from; :func:`axon.publish.rollout.switch_staged` commits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from axon.errors import AxonError, InterruptedPublish
from axon.progress import Progress
from axon.publish.instance import publish_to_instance, stage_on_instance
from axon.publish.pull import PullFailed, StagedPull, pull_onto
from axon.publish.relay import PULL, Peer, RelaySettings, peer_names, push_text, spread
from axon.publish.results import InstanceResult, error_dict, failed_result, reason
from axon.publish.rollout import InstanceLine, Outcome, PushStage, Staged

if TYPE_CHECKING:
    from axon.publish.options import PublishOptions
    from axon.publish.prepared import PreparedModel
    from axon.targets import InstanceTarget
    from modelpkg.manifest import Manifest
    from modelpkg.refs import ModelRef

MAX_SOURCES = 16  # sources one pull request may name (docs/relay.md)
Ready = Callable[[], None]  # a member's bytes are arriving (see axon.publish.relay.spread)


class Pusher:
    """How the publisher sends one member the model itself (a seed, or a member that cannot
    pull), on the member's own progress line."""

    def __init__(
        self,
        model: PreparedModel,
        options: PublishOptions,
        progress: Progress,
        cancel: threading.Event,
    ) -> None:
        self.model, self.options, self.progress, self.cancel = model, options, progress, cancel

    def _line(self, target: InstanceTarget, what: str, ready: Ready) -> InstanceLine:
        line = _ReadyLine(self.progress, target.name, self.model.total_bytes, self.cancel)
        line.ready = ready
        line.start(f"{target.name} ({what})")
        return line

    def push(
        self, target: InstanceTarget, how: dict[str, Any], ready: Ready = lambda: None
    ) -> InstanceResult:
        line = self._line(target, how["text"], ready)
        result = publish_to_instance(self.model, target, self.options, line)
        line.finish(ok=result.ok, note=how["text"] if result.ok else reason(result))
        how["bytes"] = result.bytes_sent
        result.relay = how
        return result

    def stage(
        self, target: InstanceTarget, how: dict[str, Any], ready: Ready = lambda: None
    ) -> Staged:
        line = self._line(target, f"staging; {how['text']}", ready)
        try:
            staged = stage_on_instance(self.model, target, self.options, line)
        except Exception as exc:
            line.finish(ok=False, note=str(exc))
            raise
        line.finish(ok=True, note="staged")
        how["bytes"] = staged.counters.bytes_sent
        return PushStage(staged, relay=how)


class _ReadyLine(InstanceLine):
    """A member's progress line that calls ``ready`` once its first bytes went out: from then
    on it serves them to followers as they land (cut-through)."""

    ready: Ready = staticmethod(lambda: None)
    _told = False

    def advance(self, key: str, nbytes: int) -> None:
        super().advance(key, nbytes)
        if nbytes and not self._told:
            self._told = True
            self.ready()


def pushed(text: str) -> dict[str, Any]:
    """The ``relay`` record of a member the publisher sent the model to."""
    return {"how": "pushed", "source": None, "bytes": 0, "tried": [], "text": text}


@dataclass
class Relay:
    """One relayed rollout (see the module docstring). ``sources`` have the model now and
    grow as members get it; ``peers`` are every member surveyed (for names in reports)."""

    ref: ModelRef
    manifest: Manifest
    total: int
    peers: dict[str, Peer]
    settings: RelaySettings
    options: PublishOptions
    progress: Progress
    max_parallel: int
    cancel: threading.Event
    pusher: Pusher | None = None
    sources: list[Peer] = field(default_factory=list)

    @property
    def names(self) -> dict[str, str]:
        return peer_names([*self.peers.values(), *self.sources])

    def publish(self, members: list[InstanceTarget]) -> dict[str, InstanceResult | None]:
        """Each member gets the model, visible: its result (None: not started, after a
        ``--fail-fast`` failure)."""
        done = spread(
            [self.peers[m.name] for m in members],
            self.sources,
            self._publish_one,
            lambda r: r.ok,
            gone=_gone,
            settings=self.settings,
            max_parallel=self.max_parallel,
            fail_fast=self.options.fail_fast,
            cancel=self.cancel,
        )
        self.sources = done.holders
        out: dict[str, InstanceResult | None] = {}
        for m in members:
            value, exc = done.outcomes[m.name]
            out[m.name] = _failed(m, exc) if exc is not None else value
        return out

    def stage(self, members: list[InstanceTarget]) -> dict[str, Outcome]:
        """Each member gets the model staged, not visible (``--atomic``): ``{name: (Staged,
        None) or (None, exception)}``."""
        done = spread(
            [self.peers[m.name] for m in members],
            self.sources,
            self._stage_one,
            lambda s: True,
            gone=_gone,
            settings=self.settings,
            max_parallel=self.max_parallel,
            cancel=self.cancel,
        )
        out: dict[str, Outcome] = {}
        for m in members:
            value, exc = done.outcomes[m.name]
            out[m.name] = (value, exc)
        return out

    # ---- one member ------------------------------------------------------------------
    def _pull(
        self, member: Peer, sources: list[Peer], ready: Ready, *, commit: bool
    ) -> InstanceResult | StagedPull:
        return pull_onto(
            member,
            sources[:MAX_SOURCES],
            self.ref,
            self.manifest,
            self.options,
            self.progress,
            total=self.total,
            cancel=self.cancel,
            names=self.names,
            commit=commit,
            ready=ready,
        )

    def _publish_one(
        self, member: Peer, sources: list[Peer], role: str, ready: Ready
    ) -> InstanceResult:
        if role == PULL:
            try:
                result = self._pull(member, sources, ready, commit=True)
            except InterruptedPublish:
                raise
            except AxonError as exc:
                text = f"direct push: the pull failed ({_short(exc)})"
                return self._push(member, text, ready, exc)
            assert isinstance(result, InstanceResult)
            return result
        return self._push(member, _why_push(member, role), ready)

    def _push(
        self, member: Peer, text: str, ready: Ready, cause: AxonError | None = None
    ) -> InstanceResult:
        if self.pusher is None:
            raise cause or _cannot(member, text)
        return self.pusher.push(member.target, pushed(text), ready)

    def _stage_one(self, member: Peer, sources: list[Peer], role: str, ready: Ready) -> Staged:
        if role == PULL:
            try:
                staged = self._pull(member, sources, ready, commit=False)
            except InterruptedPublish:
                raise
            except AxonError as exc:
                if self.pusher is None:
                    raise
                text = f"direct push: the pull failed ({_short(exc)})"
                return self.pusher.stage(member.target, pushed(text), ready)
            assert isinstance(staged, StagedPull)
            return staged
        text = _why_push(member, role)
        if self.pusher is None:
            raise _cannot(member, text)
        return self.pusher.stage(member.target, pushed(text), ready)


def _why_push(member: Peer, role: str) -> str:
    return push_text(member, role)


def _cannot(member: Peer, text: str) -> PullFailed:
    why = text.removeprefix("direct push: ")
    return PullFailed(
        f"{member.name} cannot pull the model: {why}",
        refused=True,
        target=member.name,
        hint="start it with --peer URL of a source, or --cluster/--accept-from "
        "with the source cluster's discovery",
    )


def _short(exc: AxonError) -> str:
    text = exc.message
    return text if len(text) <= 160 else text[:157] + "..."


def _gone(value: object, exc: BaseException | None) -> list[str]:
    """The sources a member's pull gave up on (they are not offered again)."""
    how = getattr(value, "relay", None) or getattr(value, "how", None)
    if not isinstance(how, dict):
        return []
    return [str(t.get("source")) for t in how.get("tried", []) if isinstance(t, dict)]


def _failed(target: InstanceTarget, exc: BaseException) -> InstanceResult:
    return failed_result(target, error_dict(exc, target.name))


__all__ = ["MAX_SOURCES", "Pusher", "Relay", "pushed"]
