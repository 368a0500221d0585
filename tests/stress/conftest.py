"""The stress suite: faults, hostile input and load, in two sizes (bounded by default, full
under ``AXON_STRESS=full``; :mod:`tests.stress.figures`).

The figures the tests record are printed at the end of the run and written to
``$AXON_STRESS_REPORT`` (a JSON file) when that is set, which is where the figures in
docs/faults.md come from.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.stress.figures import FIGURES, FULL


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section(f"stress figures ({'full' if FULL else 'bounded'} run)")
    for section in sorted(FIGURES):
        items = ", ".join(f"{k}={v}" for k, v in sorted(FIGURES[section].items()))
        terminalreporter.write_line(f"{section}: {items}")
    out = os.environ.get("AXON_STRESS_REPORT")
    if out:
        with open(out, "w") as fh:
            json.dump({"full": FULL, "figures": FIGURES}, fh, indent=2, sort_keys=True)
