"""Where the next round-robin publish to a cluster starts, kept across runs.

The position of each cluster is in ``<AXON_HOME>/state/round-robin.json``, read and written
under an exclusive lock (``round-robin.lock``) so concurrent publishes to one cluster start
at different members, and written atomically so a crash never leaves half a file.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from axon.config import axon_home
from modelpkg.atomic import atomic_write_text

STATE_FILE = "round-robin.json"


def _state_path() -> Path:
    return axon_home() / "state" / STATE_FILE


@contextmanager
def _locked_state() -> Iterator[dict[str, Any]]:
    """The round-robin state, locked against concurrent publishes; written back atomically."""
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            state = {}  # a damaged state file only costs the position
        if not isinstance(state.get("clusters"), dict):
            state = {"version": 1, "clusters": {}}
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def round_robin_start(cluster: str, count: int) -> int:
    """Index of the member the next round-robin publish to ``cluster`` starts at (a peek,
    for plans: :func:`round_robin_claim` is what a publish calls)."""
    with _locked_state() as state:
        entry = state["clusters"].get(cluster) or {}
        return int(entry.get("next", 0)) % max(count, 1)


def round_robin_claim(cluster: str, count: int) -> int:
    """The member index this publish starts at, moving the position past it in the same
    locked step: a concurrent publish to the cluster starts at the member after."""
    count = max(count, 1)
    with _locked_state() as state:
        entry = dict(state["clusters"].get(cluster) or {})
        start = int(entry.get("next", 0)) % count
        entry["next"] = (start + 1) % count
        state["clusters"][cluster] = entry
        return start


def round_robin_record(
    cluster: str, used: int, count: int, member: str, claimed: int | None = None
) -> None:
    """``used`` took the model: the next publish starts after it. With ``claimed`` (the
    start this publish claimed), only while no other publish claimed a start since."""
    count = max(count, 1)
    with _locked_state() as state:
        entry = state["clusters"].get(cluster) or {}
        nxt = int(entry.get("next", 0)) % count
        if claimed is None or nxt == (claimed + 1) % count:
            nxt = (used + 1) % count
        state["clusters"][cluster] = {
            "next": nxt,
            "last": member,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


__all__ = ["STATE_FILE", "round_robin_claim", "round_robin_record", "round_robin_start"]
