"""kill -9 during a signed publish to an instance that takes only signed models.

``axon publish`` of a model signed by a trusted key is killed with SIGKILL before its first
byte lands, mid-transfer, or with every byte there and the version not yet visible (API and
filesystem targets); then the server itself is killed mid-upload and restarted. After each
kill a reader sees whole models only, the old content or the new, each registered with its
signer; a re-run completes and the new version is registered as signed by that key. A
publish signed by an untrusted key, run between the kills, changes nothing visible.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.cache import Cache
from axon.signing import sign_model
from tests.fixtures.signing import KeyPair, make_key, trusted_dir
from tests.stress.checkers import check_fs_root, check_registered, tree_digest
from tests.stress.figures import record, scale, tally
from tests.stress.harness import (
    Home,
    Kill,
    MiB,
    ServerProbe,
    StagedDirProbe,
    calibrate,
    kill_on_progress,
    kill_trials,
    make_home,
    process_victim,
    published,
    rerun_replaces,
    run_axon,
    start_axon,
    tally_kills,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TRIALS = scale(3, 12)
ATTEMPTS = 4
WEIGHTS = scale(1 * MiB, 8 * MiB)
REF = "hf/signed@v1"


def _signed_home(tmp_path: Path, n: int, key: KeyPair) -> Home:
    home = make_home(tmp_path, REF, n, WEIGHTS)
    sign_model(Cache(home.path / "cache"), home.ref, key=key.private)
    return home


def _content(models_dir: Path) -> dict[str, str]:
    root = models_dir / "hf" / "signed" / "v1"
    return {k: v for k, v in tree_digest(root).items() if k != "manifest.yaml"}


def _signer(url: str) -> dict[str, Any] | None:
    r = httpx.get(f"{url}/v1/models/hf%2Fsigned%40v1", timeout=10)
    if r.status_code != 200:
        return None
    signer: dict[str, Any] | None = r.json()["signer"]
    return signer


@pytest.mark.parametrize("kind", ["api", "filesystem"])
def test_kill_9_during_a_signed_publish(kind: str, mlos_server: Any, tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    mallory = make_key(tmp_path / "keys", "mallory")
    trusted = trusted_dir(tmp_path / "trusted", alice)
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    if kind == "api":
        target, targets = srv.url, {}
        probe = lambda home: ServerProbe(srv.models_dir, home.ref, home.manifest())  # noqa: E731
    else:
        target = "inst"
        targets = {"inst": {"endpoint": srv.url, "access_method": "filesystem",
                            "storage_path": str(srv.models_dir)}}  # fmt: skip
        probe = lambda home: StagedDirProbe(srv.models_dir, home.ref, home.manifest())  # noqa: E731
    args = ["publish", REF, "--target", target, "-q", "--retries", "1"]
    count = 0

    def new_home(key: KeyPair = alice) -> Home:
        nonlocal count
        home = _signed_home(tmp_path, count, key)
        home.write_config(targets)
        count += 1
        return home

    current = new_home()
    calibration = calibrate(current, args, probe(current))
    assert _content(srv.models_dir) == published(current)
    rng = random.Random(f"signed-{kind}")
    problems: list[str] = []

    def attempt(trial: int, want: str) -> Kill:
        nonlocal current
        home = new_home()
        proc = start_axon(home, *args)
        kill = kill_on_progress(
            process_victim(proc), proc, probe(home), want, rng, timeline=calibration
        )
        where = f"trial {trial}, {kill}"
        _seen, found = check_fs_root(srv.models_dir)
        problems.extend(f"{where}: {p}" for p in found)
        problems.extend(check_registered(srv.url, srv.models_dir))
        if _content(srv.models_dir) not in (published(current), published(home)):
            problems.append(f"{where}: neither the old nor the new content")
        signer = _signer(srv.url)
        if signer is None or signer.get("trusted_as") != "alice.pub":
            problems.append(f"{where}: registered without its signer: {signer}")
        current = rerun_replaces(current, home, args, lambda: _content(srv.models_dir), where)
        return kill

    def untrusted_changes_nothing() -> None:
        """Between trials, a publish signed by an untrusted key: refused (exit 5), nothing
        visible changes."""
        rogue = new_home(mallory)
        refused = run_axon(rogue, *args)
        assert refused.returncode == 5, refused.stderr
        assert _content(srv.models_dir) == published(current)
        shutil.rmtree(rogue.path)

    kills = kill_trials(TRIALS, ATTEMPTS, attempt, after_trial=untrusted_changes_nothing)
    counts = tally_kills(kills)
    tally("kill_signed_publish", f"{kind}_phases", counts)
    record("kill_signed_publish", f"{kind}_trials", TRIALS)
    record("kill_signed_publish", "partial_or_unsigned_seen", len(problems), add=True)
    assert problems == [], problems
    assert (_signer(srv.url) or {}).get("trusted_as") == "alice.pub"


def test_kill_9_of_the_server_during_a_signed_upload(mlos_server: Any, tmp_path: Path) -> None:
    """The server is killed at random points of signed uploads; after each restart (whose
    scan checks every visible model's signature again) the visible version is whole and
    registered with its signer, and the publish completes on a re-run."""
    alice = make_key(tmp_path / "keys", "alice")
    trusted = trusted_dir(tmp_path / "trusted", alice)
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    args = ["publish", REF, "--target", srv.url, "-q", "--retries", "0"]
    rng = random.Random("server-kill")
    current = _signed_home(tmp_path, 0, alice)
    assert run_axon(current, *args).returncode == 0
    problems: list[str] = []
    for n in range(1, 1 + scale(3, 10)):
        home = _signed_home(tmp_path, n, alice)
        proc = start_axon(home, *args)
        delay = rng.uniform(0.05, 1.0)
        with contextlib.suppress(Exception):
            proc.wait(timeout=delay)
        srv.kill()
        proc.wait(timeout=60)
        srv.restart()
        _seen, found = check_fs_root(srv.models_dir)
        problems += [f"kill {n}: {p}" for p in found] + check_registered(srv.url, srv.models_dir)
        if _content(srv.models_dir) not in (published(current), published(home)):
            problems.append(f"kill {n}: neither the old nor the new content")
        signer = _signer(srv.url)
        if signer is None or signer.get("trusted_as") != "alice.pub":
            problems.append(f"kill {n}: after the restart, registered without its signer")
        rerun = run_axon(home, *args)
        assert rerun.returncode == 0, rerun.stderr
        assert _content(srv.models_dir) == published(home)
        current = home
    record("kill_signed_publish", "server_kills", scale(3, 10))
    assert problems == [], problems
