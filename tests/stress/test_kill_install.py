"""kill -9 of ``axon install`` at observed points of the copy: the cache never shows a
partial model (install stages in a hidden dir and renames it in one step), and installing
again works.

Two sources alternate under one reference. Each kill is aimed, in turn, before the first
byte lands in the install's staging dir, at a random fraction of the bytes, or once every
byte is there and the model dir not swapped yet (:func:`~tests.stress.harness.kill_on_progress`
with a :class:`~tests.stress.harness.CacheProbe`); a kill that lands elsewhere is recorded
and the trial tries again. Partial models the checker saw are counted, then asserted none.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from modelpkg.refs import ModelRef
from tests.fixtures.models import write_model_dir
from tests.stress.checkers import check_fs_root, tree_digest
from tests.stress.figures import record, scale, tally
from tests.stress.harness import (
    PHASES,
    CacheProbe,
    Home,
    Kill,
    MiB,
    calibrate,
    kill_on_progress,
    process_victim,
    run_axon,
    source_sizes,
    start_axon,
    tally_kills,
    transfer_points,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TRIALS = scale(3, 24)  # each aimed at PHASES[trial % 3]
ATTEMPTS = 4  # kills per trial at most, until one lands in the phase aimed at
REF = ModelRef.parse("hf/inst@v1")


def _content(path: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(path).items() if k != "manifest.yaml"}


def test_kill_9_during_install_leaves_no_partial_model(tmp_path: Path) -> None:
    home = Home(tmp_path / "home", REF, "k")
    home.path.mkdir()
    models = home.path / "cache" / "models"
    sources = []
    for i in range(2):
        src = write_model_dir(tmp_path / f"src{i}", weights_size=scale(4 * MiB, 24 * MiB), seed=i)
        for j in range(scale(4, 16)):
            (src / f"shard-{j}.bin").write_bytes(os.urandom(256 * 1024))
        sources.append(src)
    expected = [_content(src) for src in sources]
    first = ["install", str(sources[0]), "--as", REF.id]
    calibration = calibrate(home, first, CacheProbe(models, REF, source_sizes(sources[0])))
    rng = random.Random(8)
    kills: list[Kill] = []
    partial: list[str] = []
    turn = 0
    for trial in range(TRIALS):
        want = PHASES[trial % len(PHASES)]
        for _attempt in range(ATTEMPTS):
            turn += 1
            old, new = sources[(turn + 1) % 2], sources[turn % 2]
            args = ["install", str(new), "--as", REF.id]
            probe = CacheProbe(models, REF, source_sizes(new))
            proc = start_axon(home, *args)
            kill = kill_on_progress(
                process_victim(proc), proc, probe, want, rng, timeline=calibration
            )
            kills.append(kill)
            n, problems = check_fs_root(models)
            partial += [f"trial {trial}, {kill}: {p}" for p in problems]
            if n != 1:  # the old model or the new one, always exactly one
                partial.append(f"trial {trial}, {kill}: {n} models in the cache")
            if _content(models / REF.relpath) not in (expected[0], expected[1]):
                partial.append(f"trial {trial}, {kill}: the cache holds neither {old} nor {new}")
            listed = run_axon(home, "list", "--json")
            assert listed.returncode == 0, listed.stderr
            if REF.id not in listed.stdout:
                partial.append(f"trial {trial}, {kill}: axon list does not show {REF.id}")
            done = run_axon(home, *args)
            assert done.returncode == 0, done.stderr
            assert run_axon(home, "verify", REF.id).returncode == 0
            assert _content(models / REF.relpath) == expected[turn % 2]
            if kill.phase == want:
                break
    counts = tally_kills(kills)
    tally("kill_install", "phases", counts)
    record("kill_install", "transfer_kills_at", transfer_points(kills))
    record("kill_install", "trials", TRIALS)
    record("kill_install", "partial_models_seen", len(partial), add=True)
    assert partial == [], f"a reader saw {len(partial)} partial/mixed model(s): {partial}"
    missing = [p for p in PHASES if counts[p] == 0]
    assert not missing, f"no kill landed in {missing} in {ATTEMPTS} tries: {kills}"
