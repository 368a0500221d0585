"""kill -9 of ``axon publish`` at random moments, to every kind of target.

For each kind (filesystem, SSH, API, cluster, shared directory, S3) the model alternates
between two contents (homes a and b, same reference). Each trial starts a publish of the
other content, kills it with SIGKILL after a random delay, then a reader checker asserts
that what a reader sees is whole (every visible version matches its manifest: old or new,
never a mix, never a partial one), and a re-run of the same publish completes and leaves
exactly that content.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.stress.checkers import check_fs_root, check_registered, check_s3, tree_digest
from tests.stress.figures import record, scale
from tests.stress.harness import Home, MiB, kill_at_random, make_homes, run_axon, timed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TRIALS = scale(1, 20)
WEIGHTS = scale(1 * MiB, 12 * MiB)
REF = "hf/killme@v1"


@dataclass
class Setup:
    target: str
    targets: dict[str, Any]
    check: Callable[[], tuple[int, list[str]]]
    content: Callable[[], dict[str, str]]  # what the final location holds now


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


def _setup(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    mlos = request.getfixturevalue("mlos_server")
    if kind == "shared":
        shared = tmp_path / "shared"
        shared.mkdir()
        return Setup(str(shared), {}, lambda: check_fs_root(shared), _fs_content(shared))
    if kind == "s3":
        s3 = request.getfixturevalue("s3")
        bucket = s3.bucket()
        client = s3.client()
        conf = {
            "type": "network_storage",
            "storage_type": "s3",
            "storage_path": f"s3://{bucket}/models",
            "endpoint_url": s3.endpoint_url,
        }
        return Setup(
            "s3t",
            {"s3t": conf},
            lambda: check_s3(client, bucket, "models"),
            lambda: _s3_content(client, bucket),
        )
    if kind == "cluster":
        one, two = mlos(no_fsync=True), mlos(no_fsync=True)
        conf = {"type": "cluster", "instances": [one.url, two.url]}
        return Setup("c", {"c": conf}, _server_check(one, two), _fs_content(two.models_dir))
    srv = mlos(no_fsync=True)
    if kind == "api":
        return Setup(srv.url, {}, _server_check(srv), _fs_content(srv.models_dir))
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
    return Setup("inst", {"inst": conf}, _server_check(srv), _fs_content(srv.models_dir))


def _s3_content(client: Any, bucket: str) -> dict[str, str]:
    from modelpkg.manifest import Manifest

    body = client.get_object(Bucket=bucket, Key="models/hf/killme/v1/manifest.yaml")["Body"]
    return {f.path: f.sha256 for f in Manifest.from_text(body.read()).files}


@pytest.mark.parametrize("kind", ["filesystem", "ssh", "api", "cluster", "shared", "s3"])
def test_kill_9_during_publish_leaves_only_whole_models(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    a, b = make_homes(tmp_path, REF, WEIGHTS)
    setup = _setup(kind, request, tmp_path)
    for home in (a, b):
        home.write_config(setup.targets)
    args = ["publish", REF, "--target", setup.target, "-q", "--retries", "1"]
    took, first = timed(a, *args)
    assert first.returncode == 0, first.stderr
    assert setup.content() == _expected(a, kind)
    rng = random.Random(f"{kind}-8")
    partial = 0
    for trial in range(TRIALS):
        home = (b, a)[trial % 2]
        kill_at_random(home, args, took, rng)
        seen, problems = setup.check()
        partial += bool(problems)
        assert problems == [], f"trial {trial}: a reader sees a partial/mixed model: {problems}"
        assert seen >= 1  # the previous (or the new) version stays visible
        rerun = run_axon(home, *args)
        assert rerun.returncode == 0, f"trial {trial}: re-run failed: {rerun.stderr}"
        assert setup.content() == _expected(home, kind)
    assert setup.check()[1] == []
    record("kill_publish", f"{kind}_trials", TRIALS)
    record("kill_publish", "partial_models_seen", partial, add=True)


def _expected(home: Home, kind: str) -> dict[str, str]:
    content = {k: v for k, v in home.content().items() if not k.startswith(".axon")}
    return content
