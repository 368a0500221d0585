"""Schemathesis against the real mlos-core's own /openapi.json (a subprocess server): every
generated request must get an answer that is not a 5xx, the server must stay up, and nothing
may appear outside its models directory."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.common import require
from tests.fixtures.mlos import ServerFactory
from tests.stress.checkers import check_fs_root, tree_digest
from tests.stress.figures import record, scale

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MAX_EXAMPLES = scale(10, 150)
MAX_TIME = scale(12, 300)


# schemathesis's error groups that come from generating cases, not from the server's answers
GENERATION_ERRORS = {"Failed Health Check", "Schema Error", "Serialization not possible"}
GENERATION_FRAME = "in iter_coverage_cases"  # schemathesis generating coverage-phase cases


def _statuses(har: Path) -> dict[int, int]:
    """How many answers had each status, over every phase of the run (from its HAR report)."""
    require(har.is_file(), f"schemathesis wrote no HAR report at {har}")
    counts: dict[int, int] = {}
    for entry in json.loads(har.read_text())["log"]["entries"]:
        status = int(entry["response"]["status"])
        counts[status] = counts.get(status, 0) + 1
    return counts


def _schemathesis() -> str | None:
    exe = Path(sys.executable).with_name("schemathesis")
    return str(exe) if exe.exists() else shutil.which("schemathesis")


@pytest.mark.parametrize("with_tokens", [False, True])
def test_schemathesis_finds_no_server_error(
    mlos_server: ServerFactory, tmp_path: Path, with_tokens: bool
) -> None:
    exe = _schemathesis()
    require(exe is not None, "schemathesis not installed (pip install -e '.[dev]')")
    assert exe is not None
    jail = tmp_path / "jail"
    (jail / "outside").mkdir(parents=True)
    (jail / "outside" / "keep").write_text("x")
    tokens = {"tenants": {"t": {"tokens": ["tok"], "namespaces": ["*"]}}}
    srv = mlos_server(
        models_dir=jail / "models", no_fsync=True, tokens=tokens if with_tokens else None
    )
    args = [
        exe, "run", f"{srv.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--phases", "examples,coverage,fuzzing",
        "-n", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME), "--seed", "8", "--workers", "2",
        "--request-timeout", "30", "--no-color",
    ]  # fmt: skip
    if with_tokens:
        args += ["-H", "Authorization: Bearer tok"]
    har = tmp_path / "answers.har"
    args += ["--report", "har", "--report-har-path", str(har)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=MAX_TIME + 600, cwd=tmp_path)
    out = run.stdout + run.stderr
    cases = re.search(r"(\d+) generated", out)
    statuses = _statuses(har)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    record("schemathesis", "cases", int(cases.group(1)) if cases else 0, add=True)
    record("schemathesis", "requests", sum(statuses.values()), add=True)
    record("schemathesis", "5xx_seen", server_errors, add=True)
    # Every phase's answers are in the HAR file: not one may be a 5xx.
    assert server_errors == 0, f"{server_errors} answers were 5xx: {statuses}\n{out[-6000:]}"
    # A non-zero exit is allowed only for errors of schemathesis's own case generation (a
    # health check or a schema pattern it cannot satisfy): never a failed check, a network
    # error, a time-out or an unresponsive server.
    errors = {k: int(n) for k, n in re.findall(r"🚫 ([^:\n]+): (\d+)", out)}
    # a "Runtime Error" is schemathesis's own only when its traceback is in case generation
    if errors.get("Runtime Error", 0) <= out.count(GENERATION_FRAME):
        errors.pop("Runtime Error", None)
    unexplained = sorted(set(errors) - GENERATION_ERRORS)
    assert run.returncode == 0 or (not unexplained and "unique failure" not in out), (
        f"schemathesis exit {run.returncode}, errors {errors}\n{out[-6000:]}"
    )
    assert cases and int(cases.group(1)) > 0, out[-2000:]
    assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
    assert srv.running
    assert tree_digest(jail / "outside") == {"keep": tree_digest(jail / "outside")["keep"]}
    assert sorted(p.name for p in jail.iterdir()) == ["models", "outside"]
    assert check_fs_root(jail / "models")[1] == []
