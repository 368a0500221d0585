"""Run the benchmarks: ``python -m benchmarks [name ...]`` (names: suffixes of bench_*.py).

Each ``bench_<name>.py`` module defines ``run(workdir: Path) -> list[Row]``. Results are
printed as a table (then, for rows with a target, a summary saying whether each is met) and
written to ``.bench/results.json`` for docs/benchmarks.md.

``AXON_BENCH_QUICK=1``: small sizes and 2 rounds, to check that everything runs (the figures
mean little); ``AXON_BENCH_ROUNDS=N``: how many times each tool runs (see each module).
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, print_rows, print_targets


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(p.stem[len("bench_") :] for p in here.glob("bench_*.py"))
    wanted = argv or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}")
        return 2
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    all_rows: dict[str, list[dict[str, object]]] = {}
    for name in wanted:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"\n== {name} ==", flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"axon-bench-{name}-", dir=out) as tmp:
            rows: list[Row] = module.run(Path(tmp))
        print_rows(rows)
        print_targets(rows)
        print(f"({time.monotonic() - started:.1f} s)")
        all_rows[name] = [r.as_dict() for r in rows]
    results = out / "results.json"
    old = json.loads(results.read_text()) if results.exists() else {}
    old.update(all_rows)
    results.write_text(json.dumps(old, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
