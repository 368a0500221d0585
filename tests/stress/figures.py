"""The stress suite's two sizes and its figures.

The default run is bounded (it runs inside ``make test``, a couple of minutes);
``AXON_STRESS=full`` (``make stress``) runs many more trials, inputs and seconds of load:
:func:`scale` picks the number. Every test records its figures with :func:`record`; the
conftest prints them at the end of the run and writes them to ``$AXON_STRESS_REPORT``.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from typing import Any

FULL = os.environ.get("AXON_STRESS", "").lower() == "full"

FIGURES: dict[str, dict[str, Any]] = defaultdict(dict)
_LOCK = threading.Lock()


def scale(fast: int, full: int) -> int:
    """``fast`` in the default run, ``full`` under AXON_STRESS=full."""
    return full if FULL else fast


def record(section: str, key: str, value: Any, *, add: bool = False) -> None:
    """Remember a figure (``add``: sum it with what is there) for the end-of-run summary."""
    with _LOCK:
        if add and isinstance(value, int | float):
            FIGURES[section][key] = FIGURES[section].get(key, 0) + value
        else:
            FIGURES[section][key] = value


_TALLIES: dict[tuple[str, str], dict[str, int]] = {}


def tally(section: str, key: str, counts: dict[str, int]) -> None:
    """Add ``counts`` (label -> n) to a distribution, shown as ``label:n,...`` in the order
    the labels first came (``phases=before:6,transfer:6,commit:6,after:1,exited:2``)."""
    with _LOCK:
        total = _TALLIES.setdefault((section, key), {})
        for label, n in counts.items():
            total[label] = total.get(label, 0) + n
        FIGURES[section][key] = ",".join(f"{k}:{v}" for k, v in total.items())
