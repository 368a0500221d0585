"""The stress suite (issue 8): faults, hostile input and load.

Two sizes. The default is bounded (it runs inside ``make test``, a couple of minutes);
``AXON_STRESS=full`` (``make stress``) runs many more trials, inputs and seconds of load.
Every test records its figures with :func:`record`; the totals are printed at the end of the
run and written to ``$AXON_STRESS_REPORT`` (a JSON file) when that is set, which is where
the README's section:faults figures come from.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from typing import Any

import pytest

FULL = os.environ.get("AXON_STRESS", "").lower() == "full"

_FIGURES: dict[str, dict[str, Any]] = defaultdict(dict)
_LOCK = threading.Lock()


def scale(fast: int, full: int) -> int:
    """``fast`` in the default run, ``full`` under AXON_STRESS=full."""
    return full if FULL else fast


def record(section: str, key: str, value: Any, *, add: bool = False) -> None:
    """Remember a figure (``add``: sum it with what is there) for the end-of-run summary."""
    with _LOCK:
        if add and isinstance(value, int | float):
            _FIGURES[section][key] = _FIGURES[section].get(key, 0) + value
        else:
            _FIGURES[section][key] = value


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section(f"stress figures ({'full' if FULL else 'bounded'} run)")
    for section in sorted(_FIGURES):
        items = ", ".join(f"{k}={v}" for k, v in sorted(_FIGURES[section].items()))
        terminalreporter.write_line(f"{section}: {items}")
    out = os.environ.get("AXON_STRESS_REPORT")
    if out:
        with open(out, "w") as fh:
            json.dump({"full": FULL, "figures": _FIGURES}, fh, indent=2, sort_keys=True)


@pytest.fixture
def stress_full() -> bool:
    return FULL
