"""kill -9 of ``axon install`` at random moments: the cache never shows a partial model
(install stages in a hidden dir and renames it in one step), and installing again works."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.fixtures.models import write_model_dir
from tests.stress.checkers import check_fs_root
from tests.stress.figures import record, scale
from tests.stress.harness import Home, MiB, kill_at_random, run_axon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_kill_9_during_install_leaves_no_partial_model(tmp_path: Path) -> None:
    home = Home(tmp_path / "home", None, "k")  # type: ignore[arg-type]
    home.path.mkdir()
    sources = []
    for i in range(2):
        src = write_model_dir(tmp_path / f"src{i}", weights_size=scale(4 * MiB, 24 * MiB), seed=i)
        for j in range(scale(4, 16)):
            (src / f"shard-{j}.bin").write_bytes(os.urandom(256 * 1024))
        sources.append(src)
    args = ["install", str(sources[0]), "--as", "hf/inst@v1"]
    assert run_axon(home, *args).returncode == 0
    rng = random.Random(8)
    trials = scale(3, 25)
    for trial in range(trials):
        args = ["install", str(sources[(trial + 1) % 2]), "--as", "hf/inst@v1"]
        kill_at_random(home, args, 1.0, rng, spread=(0.3, 2.0))
        models = home.path / "cache" / "models"
        n, problems = check_fs_root(models)
        assert problems == [] and n == 1, f"trial {trial}: {problems}"
        listed = run_axon(home, "list", "--json")
        assert listed.returncode == 0 and "hf/inst" in listed.stdout, listed.stderr
        done = run_axon(home, *args)
        assert done.returncode == 0, done.stderr
        assert run_axon(home, "verify", "hf/inst@v1").returncode == 0
    record("kill_install", "trials", trials)
    record("kill_install", "partial_models_seen", 0)
