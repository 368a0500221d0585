"""mlos-core killed with SIGKILL in the middle of uploads, then restarted; and several
publishers of one model racing each other. The previous version stays whole, leftovers are
cleaned at start-up, the publish re-runs cleanly; in a race one complete version wins."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from modelpkg.layout import is_leftover
from tests.fixtures.mlos import ServerFactory
from tests.stress.checkers import check_fs_root, check_registered
from tests.stress.figures import record, scale
from tests.stress.harness import Home, MiB, axon_cmd, make_homes, run_axon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REF = "hf/crash@v1"


def _content(models_dir: Path) -> dict[str, str]:
    from tests.stress.checkers import tree_digest

    digest = tree_digest(models_dir / "hf" / "crash" / "v1")
    return {k: v for k, v in digest.items() if k != "manifest.yaml"}


def _leftovers(models_dir: Path) -> list[str]:
    staging = models_dir / ".mlos" / "staging"
    found = [str(p) for p in staging.iterdir()] if staging.is_dir() else []
    for dirpath, dirs, _files in os.walk(models_dir):
        dirs[:] = [d for d in dirs if d != ".mlos"]
        found += [os.path.join(dirpath, d) for d in dirs if is_leftover(d)]
    return found


def test_kill_9_of_mlos_core_mid_upload(mlos_server: ServerFactory, tmp_path: Path) -> None:
    a, b = make_homes(tmp_path, REF, scale(4 * MiB, 16 * MiB))
    srv = mlos_server(no_fsync=False)
    args = ["publish", REF, "-t", srv.url, "-q", "--retries", "0", "--timeout", "10"]
    assert run_axon(a, *args).returncode == 0
    rng = random.Random(88)
    trials = scale(1, 12)
    for trial in range(trials):
        old, new = (a, b) if trial % 2 == 0 else (b, a)
        proc = subprocess.Popen(
            axon_cmd(*args), env=new.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(0.3, 1.5))
        srv.kill()
        proc.wait(timeout=60)
        srv.start()
        n, problems = check_fs_root(srv.models_dir)
        problems += check_registered(srv.url, srv.models_dir)
        assert problems == [] and n == 1, f"trial {trial}: {problems}"
        current = _content(srv.models_dir)
        assert current in (_expected(old), _expected(new)), f"trial {trial}: mixed content"
        assert _leftovers(srv.models_dir) == [], f"trial {trial}: leftovers after restart"
        rerun = run_axon(new, *args)
        assert rerun.returncode == 0, rerun.stderr
        assert _content(srv.models_dir) == _expected(new)
    record("kill_server", "trials", trials)
    record("kill_server", "partial_models_seen", 0)


def _expected(home: Home) -> dict[str, str]:
    return {k: v for k, v in home.content().items() if not k.startswith(".axon")}


@pytest.mark.parametrize("kind", ["api", "filesystem"])
def test_concurrent_publishers_one_complete_version_wins(
    kind: str, mlos_server: ServerFactory, tmp_path: Path
) -> None:
    a, b = make_homes(tmp_path, REF, scale(2 * MiB, 8 * MiB))
    srv = mlos_server(no_fsync=True)
    if kind == "api":
        target = srv.url
    else:
        target = "inst"
        conf = {
            "endpoint": srv.url,
            "access_method": "filesystem",
            "storage_path": str(srv.models_dir),
        }
        for home in (a, b):
            home.write_config({"inst": conf})
    args = ["publish", REF, "-t", target, "-q"]
    rounds, racers = scale(1, 5), scale(3, 8)
    for _ in range(rounds):
        procs = [
            subprocess.Popen(
                axon_cmd(*args),
                env=(a, b)[i % 2].env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(racers)
        ]
        codes = [p.wait(timeout=300) for p in procs]
        errors = [p.stderr.read() if p.stderr else "" for p in procs]
        assert 0 in codes, errors
        n, problems = check_fs_root(srv.models_dir)
        problems += check_registered(srv.url, srv.models_dir)
        assert problems == [] and n == 1, problems
        assert _content(srv.models_dir) in (_expected(a), _expected(b))
    record("concurrent_publishers", f"{kind}_rounds", rounds)
    record("concurrent_publishers", "racers_per_round", racers)
