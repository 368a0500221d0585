"""kill -9 of ``axon publish`` at observed points of the write, to every kind of target.

For each kind (filesystem, SSH, API, cluster, shared directory, S3) every attempt publishes
content the target has never held (:func:`~tests.stress.harness.make_home`) over the
previous one and kills the publish with SIGKILL at a point seen at the target
(:func:`~tests.stress.harness.kill_on_progress`): before its first byte lands, at a random
fraction of its bytes, or once every byte landed and the new version is not visible yet.
Trials aim at the three phases in turn; a kill that lands elsewhere (the publish was quicker
than the look) is recorded and the trial tries again. After each kill a reader checker looks
at what a reader sees (every visible version whole, the old content or the new one, never a
mix), and a re-run of the same publish completes and leaves exactly that content. Partial
models the checker saw are counted and asserted to be none at the end, after the figures.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelpkg.manifest import Manifest
from tests.stress.checkers import check_fs_root, check_registered, check_s3, tree_digest
from tests.stress.figures import record, scale, tally
from tests.stress.harness import (
    PHASES,
    AllOf,
    Home,
    Kill,
    MiB,
    Probe,
    S3Probe,
    ServerProbe,
    StagedDirProbe,
    calibrate,
    kill_on_progress,
    kill_trials,
    make_home,
    process_victim,
    published,
    rerun_replaces,
    start_axon,
    tally_kills,
    transfer_points,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TRIALS = scale(3, 18)  # each aimed at PHASES[trial % 3]
ATTEMPTS = 4  # kills per trial at most, until one lands in the phase aimed at
WEIGHTS = scale(1 * MiB, 12 * MiB)
REF = "hf/killme@v1"


@dataclass
class Setup:
    target: str
    targets: dict[str, Any]
    check: Callable[[], tuple[int, list[str]]]
    content: Callable[[], dict[str, str]]  # what the final location holds now
    probe: Callable[[Home], Probe]  # what the target shows of that home's content


def _fs_content(models_dir: Path) -> Callable[[], dict[str, str]]:
    def content() -> dict[str, str]:
        digest = tree_digest(models_dir / "hf" / "killme" / "v1")
        return {k: v for k, v in digest.items() if k != "manifest.yaml"}

    return content


def _server_check(*servers: Any) -> Callable[[], tuple[int, list[str]]]:
    def check() -> tuple[int, list[str]]:
        seen, problems = 0, []
        for srv in servers:
            n, p = check_fs_root(srv.models_dir)
            seen += n
            problems += p + check_registered(srv.url, srv.models_dir)
        return seen, problems

    return check


def _staged(root: Path) -> Callable[[Home], Probe]:
    return lambda home: StagedDirProbe(root, home.ref, home.manifest())


def _served(*servers: Any) -> Callable[[Home], Probe]:
    return lambda home: AllOf(ServerProbe(s.models_dir, home.ref, home.manifest()) for s in servers)


def _setup(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    mlos = request.getfixturevalue("mlos_server")
    if kind == "shared":
        shared = tmp_path / "shared"
        shared.mkdir()
        return Setup(
            str(shared), {}, lambda: check_fs_root(shared), _fs_content(shared), _staged(shared)
        )
    if kind == "s3":
        s3 = request.getfixturevalue("s3")
        bucket = s3.bucket()
        client = s3.client()
        storage = {
            "type": "network_storage",
            "storage_type": "s3",
            "storage_path": f"s3://{bucket}/models",
            "endpoint_url": s3.endpoint_url,
        }
        return Setup(
            "s3t",
            {"s3t": storage},
            lambda: check_s3(client, bucket, "models"),
            lambda: _s3_content(client, bucket),
            lambda home: S3Probe(client, bucket, "models", home.ref, home.manifest()),
        )
    if kind == "cluster":
        one, two = mlos(no_fsync=True), mlos(no_fsync=True)
        return Setup(
            "c",
            {"c": {"type": "cluster", "instances": [one.url, two.url]}},
            _server_check(one, two),
            _fs_content(two.models_dir),
            _served(one, two),
        )
    srv = mlos(no_fsync=True)
    if kind == "api":
        return Setup(srv.url, {}, _server_check(srv), _fs_content(srv.models_dir), _served(srv))
    conf: dict[str, Any] = {
        "endpoint": srv.url,
        "access_method": kind,
        "storage_path": str(srv.models_dir),
    }
    if kind == "ssh":
        sshd = request.getfixturevalue("sshd")
        conf.update(
            ssh_host=sshd.host,
            ssh_port=sshd.port,
            ssh_user=sshd.user,
            ssh_key=str(sshd.key_path),
            ssh_options=sshd.options,
        )
    return Setup(
        "inst",
        {"inst": conf},
        _server_check(srv),
        _fs_content(srv.models_dir),
        _staged(srv.models_dir),
    )


def _s3_content(client: Any, bucket: str) -> dict[str, str]:
    body = client.get_object(Bucket=bucket, Key="models/hf/killme/v1/manifest.yaml")["Body"]
    return {f.path: f.sha256 for f in Manifest.from_text(body.read()).files}


@pytest.mark.parametrize("kind", ["filesystem", "ssh", "api", "cluster", "shared", "s3"])
def test_kill_9_during_publish_leaves_only_whole_models(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    setup = _setup(kind, request, tmp_path)
    args = ["publish", REF, "--target", setup.target, "-q", "--retries", "1"]
    count = 0

    def new_home() -> Home:
        nonlocal count
        home = make_home(tmp_path, REF, count, WEIGHTS)
        home.write_config(setup.targets)
        count += 1
        return home

    current = new_home()
    calibration = calibrate(current, args, setup.probe(current))
    assert setup.content() == published(current)
    rng = random.Random(f"{kind}-8")
    partial: list[str] = []

    def attempt(trial: int, want: str) -> Kill:
        nonlocal current
        home = new_home()
        proc = start_axon(home, *args)
        kill = kill_on_progress(
            process_victim(proc),
            proc,
            setup.probe(home),
            want,
            rng,
            timeline=calibration,
        )
        where = f"trial {trial}, {kill}"
        seen, problems = setup.check()
        partial.extend(f"{where}: {p}" for p in problems)
        if seen < 1:  # the old version or the new one stays visible
            partial.append(f"{where}: no version visible")
        if setup.content() not in (published(current), published(home)):
            partial.append(f"{where}: neither the old nor the new content")
        current = rerun_replaces(current, home, args, setup.content, where)
        return kill

    kills = kill_trials(TRIALS, ATTEMPTS, attempt)
    counts = tally_kills(kills)
    tally("kill_publish", "phases", counts)
    tally("kill_publish", f"{kind}_phases", counts)
    record("kill_publish", f"{kind}_transfer_kills_at", transfer_points(kills))
    record("kill_publish", f"{kind}_trials", TRIALS)
    record("kill_publish", "partial_models_seen", len(partial), add=True)
    assert partial == [], f"a reader saw {len(partial)} partial/mixed model(s): {partial}"
    missing = [p for p in PHASES if counts[p] == 0]
    assert not missing, f"no kill landed in {missing} in {ATTEMPTS} tries: {kills}"
