"""Relay: the members of a cluster pull a model from members that already have it.

The publisher's uplink is the slow link; the instances sit next to each other. So the
publisher sends the model to a few *seeds* and every other member pulls it from a member
that has it (``POST /v1/pulls``, docs/relay.md), spreading as a tree::

    publisher --push--> core-1                      (seeds: 1 by default)
    core-1 --pull--> core-2, core-3, core-4         (each source serves at most `fanout`
    core-2 --pull--> core-5, core-6, core-7          pullers at once)
    core-3 --pull--> core-8 ...

A member becomes a source as soon as its pull is done. A pull names its source first and
every other member that has the model (and that the puller accepts as a peer) after it: when
a source dies mid-pull, the puller carries on from the next one, at the bytes it holds.

Where relay cannot work for a member (an older server, an instance given no peers, a pull
that failed on every source), the member gets a direct push when the publisher has the model
(``axon publish``), and its line in the report says so; ``axon promote`` has no bytes to
push and reports the member failed instead.

Peer addresses: each member tells its own (``GET /v1/relay``: the address it advertises),
which need not be the URL the publisher uses (a tunnel or a proxy in front of it).

:func:`survey` asks the members, :func:`spread` decides who pulls from whom and when,
:class:`Relay` runs a publish (or promotion) through both; one pull on one member is
:mod:`axon.publish.pull`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

from axon.errors import AxonError
from axon.mlos_client import HEALTH_TIMEOUT, MlosClient
from axon.publish.rollout import parallel_map

if TYPE_CHECKING:
    from axon.publish.plan import InstancePlan
    from axon.targets import InstanceTarget

#: pullers one source serves at once (a tree of this degree)
DEFAULT_FANOUT = 3
#: members the publisher sends the model to itself
DEFAULT_SEEDS = 1

R = TypeVar("R")

# how a member gets the model (the ``role`` a spread's work is called with)
PULL = "pull"  # from the sources it is given
SEED = "seed"  # nobody has it yet: the publisher sends it
PUSH = "push"  # it cannot pull (``Peer.why_not``), or no member it accepts has the model


def normal_url(url: str) -> str:
    """``scheme://host:port/path`` as mlos-core compares peer URLs (host in lower case, the
    default port filled in, no trailing ``/``)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    except ValueError:
        return url.strip().rstrip("/")
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Peer:
    """A member as relay sees it: its target (how the publisher reaches it), the address its
    peers use (None: it cannot serve them), whether it can pull, from which addresses
    (normalised; None: unknown, assume any) and why it cannot."""

    target: InstanceTarget
    address: str | None = None
    can_pull: bool = False
    accepts: frozenset[str] | None = None
    why_not: str = ""
    #: serves a blob while still receiving it (``?follow=1``): a source from its first byte
    cut_through: bool = False

    @property
    def name(self) -> str:
        return self.target.name

    def accepts_from(self, source: Peer) -> bool:
        if source.address is None:
            return False
        return self.accepts is None or normal_url(source.address) in self.accepts


@dataclass(frozen=True)
class RelaySettings:
    """How wide the tree is: ``seeds`` members get the publisher's bytes, each source serves
    at most ``fanout`` pullers at once."""

    seeds: int = DEFAULT_SEEDS
    fanout: int = DEFAULT_FANOUT


def survey(members: list[InstanceTarget], *, max_parallel: int) -> dict[str, Peer]:
    """Ask every member whether it can relay (``GET /v1/relay``), in parallel; a member that
    cannot be asked is a :class:`Peer` that cannot pull, saying why."""

    def ask(target: InstanceTarget) -> Peer:
        if target.access_method != "api":
            return Peer(target, why_not=f"reached over {target.access_method}, not the API")
        with MlosClient.for_target(target, min(target.timeout, HEALTH_TIMEOUT * 2)) as client:
            info = client.relay_info()
        if info is None:
            return Peer(target, why_not="this mlos-core has no relay (GET /v1/relay: 404)")
        accepts = frozenset(normal_url(p) for p in info.peers)
        address = info.advertise if info.blobs else None
        return Peer(target, address, info.can_pull, accepts, info.why_not, info.cut_through)

    answers = parallel_map(members, ask, max_parallel)
    out: dict[str, Peer] = {}
    for t in members:
        peer, exc = answers[t.name]
        if exc is not None:
            why = exc.message if isinstance(exc, AxonError) else str(exc)
            peer = Peer(t, why_not=f"cannot ask it about relay: {why}")
        out[t.name] = peer
    return out


# ---- the tree -------------------------------------------------------------------------------
#: (member, sources, role, ready) -> outcome; ``ready()``: the member's bytes are arriving
#: and it serves them as they land (cut-through): it may be a source before it is done
Work = Callable[["Peer", list["Peer"], str, Callable[[], None]], R]
EARLY_POLL = 0.1  # seconds between looks for members that became sources while receiving


@dataclass
class Spread(Generic[R]):
    """What :func:`spread` did: each member's outcome (``(value, None)``, ``(None, exc)``,
    or ``(None, None)`` when it never started), and which members have the model now."""

    outcomes: dict[str, tuple[R | None, BaseException | None]] = field(default_factory=dict)
    holders: list[Peer] = field(default_factory=list)


@dataclass
class _Tree:
    """The state of a spread: who has the model, how many pullers each serves."""

    holders: list[Peer]
    fanout: int
    seeds: int
    rank: dict[str, int] = field(default_factory=dict)  # ties go to the earlier listed
    #: members that cannot pull whose address a member that can pull accepts
    servable: frozenset[str] = frozenset()
    seeded: int = 0
    serving: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.serving = {p.name: 0 for p in self.holders}

    def choose(self, member: Peer, running: list[Peer]) -> tuple[str, list[Peer]] | None:
        """How ``member`` starts now: ``(role, sources)``, or None to wait for a source.

        A member that cannot pull gets the publisher's bytes anyway: while nobody has the
        model and seeds are wanted, it is a seed when a member that pulls accepts it as a
        source, so the publisher does not send a second copy to a member that could have
        pulled from it."""
        if not member.can_pull:
            if not self.holders and member.name in self.servable and self.seeded < self.seeds:
                return SEED, []
            return PUSH, []
        usable = [h for h in self.holders if member.accepts_from(h)]
        free = [h for h in usable if self.serving[h.name] < self.fanout]
        if free:
            first = min(free, key=lambda h: (self.serving[h.name], self.rank.get(h.name, 0)))
            return PULL, [first, *(h for h in usable if h is not first)]
        if not self.holders and member.address is not None and self.seeded < self.seeds:
            return SEED, []  # nobody has it: the publisher sends it
        if usable or any(member.accepts_from(p) for p in running):
            return None  # a source it accepts is busy, or will have the model soon
        if not self.holders:
            if running:
                return None  # the seeds are on their way (or may fail: then it is one)
            if member.address is not None:
                return SEED, []  # every seed failed: a new one
        return PUSH, []  # no member it accepts has the model, nor will soon

    def early(self, member: Peer) -> None:
        """``member`` serves what it receives (cut-through): a source before it is done."""
        if member.address is not None and member not in self.holders:
            self.holders.append(member)
            self.serving.setdefault(member.name, 0)

    def started(self, role: str, sources: list[Peer]) -> None:
        if role == PULL:
            self.serving[sources[0].name] += 1
        elif role == SEED:
            self.seeded += 1

    def finished(
        self, member: Peer, role: str, sources: list[Peer], good: bool, gone: list[str]
    ) -> None:
        """``member`` is done (``good``: it has the model); ``gone``: sources its pull gave
        up on, which are not offered again."""
        if role == PULL:
            self.serving[sources[0].name] -= 1
        if gone:
            self.holders = [h for h in self.holders if h.name not in gone]
        if not good and member in self.holders:  # a source while receiving, then failed
            self.holders.remove(member)
        if good and member.address is not None and member not in self.holders:
            self.holders.append(member)
            self.serving.setdefault(member.name, 0)


def _servable(members: list[Peer]) -> frozenset[str]:
    """The members that cannot pull but can serve: a member that pulls accepts them."""
    return frozenset(
        m.name
        for m in members
        if not m.can_pull and any(o.can_pull and o.accepts_from(m) for o in members)
    )


def _seeds_first(members: list[Peer], servable: frozenset[str]) -> list[Peer]:
    """``members`` in the order they are looked at: the ``servable`` ones first (the
    publisher sends them the model anyway, so they are the seeds when nobody has it), the
    others in their order."""
    return sorted(members, key=lambda m: m.name not in servable)


def push_text(member: Peer, role: str) -> str:
    """How a member the publisher sends the model to is reported (``role`` SEED or PUSH)."""
    why = member.why_not or "it cannot pull"
    if role == SEED:
        return "pushed (seed)" if member.can_pull else f"pushed (seed; {why})"
    if not member.can_pull:
        return f"direct push: {why}"
    return "direct push: none of the members that have the model is its peer"


def spread(
    members: list[Peer],
    sources: list[Peer],
    work: Work[R],
    ok: Callable[[R], bool],
    *,
    gone: Callable[[R | None, BaseException | None], list[str]] = lambda value, exc: [],
    settings: RelaySettings,
    max_parallel: int,
    fail_fast: bool = False,
    cancel: threading.Event | None = None,
) -> Spread[R]:
    """Run ``work(member, sources, role, ready)`` for every member, as a tree.

    ``sources`` have the model now; a member for which ``ok`` holds becomes one, a source
    named by ``gone`` (of an outcome: the sources its pull gave up on) is one no more. A puller
    is given its sources in order of preference: the least busy first (of equally busy ones,
    the one listed first), then every other it accepts (to carry on from, should the first
    fail). No source is first for more than ``settings.fanout`` pullers at once: a puller
    waits for a free one. A member whose work calls ``ready()`` while its bytes arrive is a
    source from then on when it serves them as they land (``Peer.cut_through``), so the
    pulls overlap the publisher's push. When nobody has the model, up to ``settings.seeds``
    members get it from the publisher (role ``seed``); a member that cannot pull, or that
    accepts none of the members that could ever have it, gets a direct push (role ``push``).
    ``work`` never raises for the member's sake (an exception is its outcome). With
    ``fail_fast`` the first failure starts nothing more; on Ctrl-C ``cancel`` is set and
    nothing more starts.
    """
    out: Spread[R] = Spread()
    rank = {p.name: i for i, p in enumerate([*sources, *members])}
    servable = _servable(members)
    tree = _Tree(list(sources), settings.fanout, settings.seeds, rank, servable)
    waiting = _seeds_first(members, servable)
    running: dict[Future[tuple[R | None, BaseException | None]], tuple[Peer, str, list[Peer]]] = {}

    arrived: list[Peer] = []  # members that called ready(), for the loop to pick up
    lock = threading.Lock()

    def ready_of(member: Peer) -> Callable[[], None]:
        def ready() -> None:
            if member.cut_through:
                with lock:
                    arrived.append(member)

        return ready

    def guarded(
        member: Peer, given: list[Peer], role: str
    ) -> tuple[R | None, BaseException | None]:
        try:
            return work(member, given, role, ready_of(member)), None
        except Exception as exc:
            return None, exc

    def launch(pool: ThreadPoolExecutor) -> None:
        started = True
        while started and waiting and len(running) < workers:
            started = False
            busy = [m for m, _, _ in running.values()]
            for member in waiting:
                how = tree.choose(member, busy)
                if how is None:
                    continue
                role, given = how
                waiting.remove(member)
                tree.started(role, given)
                running[pool.submit(guarded, member, given, role)] = (member, role, given)
                started = True
                break

    workers = max(1, min(max_parallel, len(members) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="axon-relay") as pool:
        try:
            while waiting or running:
                launch(pool)
                if not running:
                    break  # pragma: no cover - choose() always starts someone when idle
                done, _ = wait(running, EARLY_POLL, return_when=FIRST_COMPLETED)
                with lock:
                    early, arrived[:] = list(arrived), []
                finished = {running[f][0].name for f in done}
                for member in early:
                    if member.name not in finished:
                        tree.early(member)
                for future in done:
                    member, role, given = running.pop(future)
                    value, exc = future.result()
                    out.outcomes[member.name] = (value, exc)
                    good = exc is None and value is not None and ok(value)
                    tree.finished(member, role, given, good, gone(value, exc))
                    if fail_fast and not good:
                        waiting.clear()
        except BaseException:  # Ctrl-C: start nothing more; running pulls stop at their poll
            waiting.clear()
            if cancel is not None:
                cancel.set()
            raise
    for member in members:
        out.outcomes.setdefault(member.name, (None, None))
    out.holders = tree.holders
    return out


def relay_plans(
    plans: list[InstancePlan],
    members: list[InstanceTarget],
    settings: RelaySettings,
    max_parallel: int,
) -> None:
    """``--dry-run`` with relay: say in each plan's method how the member would get the
    model (pushed as a seed, pulled from which member, or pushed because it cannot pull),
    by the choices a real run makes (:func:`spread`)."""
    peers = survey(members, max_parallel=max_parallel)
    lacking = [p.target for p in plans if not p.unchanged]
    having = [p.target for p in plans if p.unchanged]
    roles = plan_roles(lacking, having, peers, settings)
    for plan in plans:
        peer = peers.get(plan.target)
        if peer is None:
            continue
        role, sources = roles.get(plan.target, ("has", []))
        if role == "has":
            plan.method += ", relay: has it"
        elif role == PULL:
            plan.method += f", relay: would pull from {sources[0].name}"
        else:
            plan.method += f", relay: {push_text(peer, role)}"


def plan_roles(
    lacking: list[str], having: list[str], peers: dict[str, Peer], settings: RelaySettings
) -> dict[str, tuple[str, list[Peer]]]:
    """``{member: (role, sources)}``: how each member named in ``lacking`` would get the
    model from :func:`spread`, the members named in ``having`` having it, were every step to
    succeed and every member take as long: members start in the order a real run starts
    them, a cut-through member is a source from the next launch after it starts (when its
    first bytes arrive), another once it is done."""
    members = [peers[name] for name in lacking if name in peers]
    sources = [peers[n] for n in having if n in peers and peers[n].address is not None]
    rank = {p.name: i for i, p in enumerate([*sources, *members])}
    servable = _servable(members)
    tree = _Tree(sources, settings.fanout, settings.seeds, rank, servable)
    out: dict[str, tuple[str, list[Peer]]] = {}
    waiting = _seeds_first(members, servable)
    running: list[tuple[Peer, str, list[Peer]]] = []
    while waiting:
        started: list[Peer] = []
        going = True
        while going:  # one launch: every member that can start now, as spread() starts them
            going = False
            for member in waiting:
                how = tree.choose(member, [m for m, _, _ in running])
                if how is None:
                    continue
                role, given = how
                waiting.remove(member)
                out[member.name] = (role, given)
                tree.started(role, given)
                running.append((member, role, given))
                started.append(member)
                going = True
                break
        if started:  # their first bytes arrive: cut-through members serve from then on
            for member in started:
                if member.cut_through:
                    tree.early(member)
        elif running:  # everyone waits for a source: the first started is done
            member, role, given = running.pop(0)
            tree.finished(member, role, given, True, [])
        else:  # pragma: no cover - choose() starts someone when nobody runs
            member = waiting.pop(0)
            out[member.name] = (PUSH, [])
    return out


def peer_names(peers: list[Peer]) -> dict[str, str]:
    """``{advertised address: member name}``: what a pull's answer names, as the report
    names it."""
    return {p.address.rstrip("/"): p.name for p in peers if p.address}


__all__ = [
    "DEFAULT_FANOUT",
    "DEFAULT_SEEDS",
    "PULL",
    "PUSH",
    "SEED",
    "Peer",
    "RelaySettings",
    "Spread",
    "normal_url",
    "peer_names",
    "plan_roles",
    "push_text",
    "relay_plans",
    "spread",
    "survey",
]
