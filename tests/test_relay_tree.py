"""The relay tree (:func:`axon.publish.relay.spread`) on its own: who pulls from whom, and
when. The work is a plain function here (the real pulls are in test_relay_publish.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from axon.publish.relay import (
    PULL,
    PUSH,
    SEED,
    Peer,
    RelaySettings,
    normal_url,
    plan_roles,
    push_text,
    spread,
)
from axon.targets import InstanceTarget


def peer(
    i: int, *, can_pull: bool = True, accepts: set[int] | None = None, follow: bool = False
) -> Peer:
    url = f"http://127.0.0.1:{9000 + i}"
    allowed = (
        None
        if accepts is None
        else frozenset(normal_url(f"http://127.0.0.1:{9000 + j}") for j in accepts)
    )
    address = url if can_pull else None  # one that cannot pull: an older server, no relay
    why = "" if can_pull else "no relay"
    return Peer(InstanceTarget(f"core-{i}", url), address, can_pull, allowed, why, follow)


class Recorded:
    """Work that takes a little while and records who served whom, and how many at once."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.lock = threading.Lock()
        self.serving: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.calls: dict[str, tuple[str, list[str]]] = {}
        self.fail = fail or set()

    def __call__(self, member: Peer, sources: list[Peer], role: str, ready: Any) -> bool:
        first = sources[0].name if sources else ""
        with self.lock:
            self.calls[member.name] = (role, [s.name for s in sources])
            if first:
                self.serving[first] += 1
                self.most[first] = max(self.most[first], self.serving[first])
        time.sleep(0.05)
        with self.lock:
            if first:
                self.serving[first] -= 1
        return member.name not in self.fail


def test_no_source_serves_more_than_fanout_at_once_and_the_tree_grows() -> None:
    members = [peer(i) for i in range(1, 11)]
    work = Recorded()
    done = spread(members, [peer(0)], work, bool, settings=RelaySettings(fanout=2), max_parallel=16)
    assert all(value for value, exc in done.outcomes.values())
    assert max(work.most.values()) <= 2
    assert len(work.most) >= 3  # members that got it served others
    assert all(role == PULL for role, _ in work.calls.values())
    # every puller was offered every holder it could carry on from
    assert all(len(sources) >= 1 for _, sources in work.calls.values())
    assert len(done.holders) == 11


def test_without_sources_one_seed_then_pulls_and_a_member_that_cannot_pull_is_pushed() -> None:
    members = [peer(1), peer(2), peer(3, can_pull=False), peer(4)]
    work = Recorded()
    spread(members, [], work, bool, settings=RelaySettings(seeds=1, fanout=3), max_parallel=8)
    roles = {name: role for name, (role, _) in work.calls.items()}
    assert roles == {"core-1": SEED, "core-2": PULL, "core-3": PUSH, "core-4": PULL}
    assert work.calls["core-2"][1][0] == "core-1"


def test_a_failed_seed_is_replaced_by_the_next_member() -> None:
    members = [peer(1), peer(2), peer(3)]
    work = Recorded(fail={"core-1"})
    done = spread(members, [], work, bool, settings=RelaySettings(), max_parallel=8)
    roles = {name: role for name, (role, _) in work.calls.items()}
    assert roles["core-1"] == SEED and roles["core-2"] == SEED and roles["core-3"] == PULL
    assert done.outcomes["core-1"][0] is False
    assert [h.name for h in done.holders] == ["core-2", "core-3"]


def test_a_member_accepting_none_of_the_holders_is_pushed_and_gone_sources_are_dropped() -> None:
    members = [peer(1), peer(2, accepts={5})]  # core-2 accepts only core-5: nobody has it
    work = Recorded()
    done = spread(
        members,
        [peer(0), peer(9)],
        work,
        bool,
        gone=lambda value, exc: ["core-9"],  # every pull gave up on core-9
        settings=RelaySettings(),
        max_parallel=1,
    )
    assert work.calls["core-2"] == (PUSH, [])
    assert "core-9" not in [h.name for h in done.holders]


def test_fail_fast_starts_nothing_more() -> None:
    members = [peer(i) for i in range(1, 6)]
    work = Recorded(fail={"core-1"})
    done = spread(
        members,
        [peer(0)],
        work,
        bool,
        settings=RelaySettings(fanout=1),
        max_parallel=1,
        fail_fast=True,
    )
    assert done.outcomes["core-1"][0] is False
    assert [done.outcomes[f"core-{i}"] for i in range(2, 6)] == [(None, None)] * 4


def test_seeds_two_members_get_the_publishers_bytes() -> None:
    members = [peer(i) for i in range(1, 6)]
    work = Recorded()
    spread(members, [], work, bool, settings=RelaySettings(seeds=2, fanout=3), max_parallel=8)
    roles = [work.calls[f"core-{i}"][0] for i in range(1, 6)]
    assert roles == [SEED, SEED, PULL, PULL, PULL]


def test_a_member_serving_what_it_receives_is_a_source_before_it_is_done() -> None:
    """Cut-through: the seed calls ready() when its first bytes arrive; pullers start from it
    then, not when it has the whole model (and followers of followers likewise)."""
    started: dict[str, float] = {}
    ended: dict[str, float] = {}

    def work(member: Peer, sources: list[Peer], role: str, ready: Any) -> bool:
        started[member.name] = time.monotonic()
        time.sleep(0.05)
        ready()  # bytes are landing
        time.sleep(0.5)
        ended[member.name] = time.monotonic()
        return True

    members = [peer(i, follow=True) for i in range(1, 6)]
    done = spread(members, [], work, bool, settings=RelaySettings(fanout=2), max_parallel=8)
    assert all(value for value, _exc in done.outcomes.values())
    assert started["core-2"] < ended["core-1"] and started["core-3"] < ended["core-1"]
    assert started["core-4"] < ended["core-2"] or started["core-4"] < ended["core-3"]
    # without cut-through nobody starts before its source is done
    started.clear()
    ended.clear()
    plain = [peer(i) for i in range(1, 4)]
    spread(plain, [], work, bool, settings=RelaySettings(fanout=2), max_parallel=8)
    assert started["core-2"] >= ended["core-1"]


def test_a_member_that_cannot_pull_but_serves_is_the_seed_and_the_plan_agrees() -> None:
    """core-1 cannot pull (no peers) but core-2 and core-3 accept it: the publisher sends
    its one copy to core-1 (it would push there anyway), the others pull from it; the dry
    run's plan (:func:`plan_roles`) names the same roles and sources."""
    lone = Peer(InstanceTarget("core-1", "http://127.0.0.1:9001"), "http://127.0.0.1:9001",
                False, frozenset(), "it has no peers", True)  # fmt: skip
    members = [peer(2, accepts={1, 3}, follow=True), lone, peer(3, accepts={1, 2}, follow=True)]
    work = Recorded()
    spread(members, [], work, bool, settings=RelaySettings(seeds=1, fanout=1), max_parallel=8)
    assert work.calls["core-1"] == (SEED, [])
    assert work.calls["core-2"][0] == PULL and work.calls["core-3"][0] == PULL
    assert work.calls["core-2"][1][0] == "core-1"
    planned = plan_roles(["core-2", "core-1", "core-3"], [], {m.name: m for m in members},
                         RelaySettings(seeds=1, fanout=1))  # fmt: skip
    assert {n: (role, [s.name for s in given][:1]) for n, (role, given) in planned.items()} == {
        "core-1": (SEED, []),
        "core-2": (PULL, ["core-1"]),
        "core-3": (PULL, ["core-2"]),  # fanout 1: core-1 serves core-2, core-2 follows on
    }
    assert push_text(lone, SEED) == "pushed (seed; it has no peers)"
    # nobody accepts a member that cannot pull: it is pushed, and a member that pulls seeds
    alone = Peer(lone.target, lone.address, False, frozenset(), "it has no peers", True)
    others = [peer(2, accepts={3}), alone, peer(3, accepts={2})]
    work = Recorded()
    spread(others, [], work, bool, settings=RelaySettings(seeds=1), max_parallel=8)
    assert work.calls["core-1"] == (PUSH, []) and work.calls["core-2"] == (SEED, [])


def test_the_plan_starts_members_as_the_real_run_launches_them() -> None:
    """Members that start together do not pull from each other: with fanout 3 and a
    cut-through seed, the two others both pull from the seed, in the plan as in a run."""
    members = [peer(i, follow=True) for i in (1, 2, 3)]
    planned = plan_roles(["core-1", "core-2", "core-3"], [], {m.name: m for m in members},
                         RelaySettings())  # fmt: skip
    firsts = {n: (role, [s.name for s in given][:1]) for n, (role, given) in planned.items()}
    assert firsts == {"core-1": (SEED, []), "core-2": (PULL, ["core-1"]),
                      "core-3": (PULL, ["core-1"])}  # fmt: skip

    def work(member: Peer, sources: list[Peer], role: str, ready: Any) -> bool:
        ready()
        time.sleep(0.2)
        return True

    calls: dict[str, str] = {}

    def recorded(member: Peer, sources: list[Peer], role: str, ready: Any) -> bool:
        calls[member.name] = sources[0].name if sources else ""
        return work(member, sources, role, ready)

    spread(members, [], recorded, bool, settings=RelaySettings(), max_parallel=8)
    assert calls == {"core-1": "", "core-2": "core-1", "core-3": "core-1"}
