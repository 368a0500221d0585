"""Cluster publishing against several real ``mlos-core`` instances on loopback: each
strategy, round-robin persistence across runs, partial failure, all down, fail-fast and
quorum. Rollout control (batches, --atomic) and the status matrix: test_cluster_rollout.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from axon.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_PARTIAL
from axon.publish import PublishOptions, publish
from modelpkg.refs import ModelRef
from tests.fixtures.cluster import (
    Recorder,
    cached_files,
    cluster_of,
    join,
    on_disk,
    registered,
    run_cluster,
    wait_members,
)
from tests.helpers import write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def three(mlos_server: Any) -> list[Any]:
    return [mlos_server(no_fsync=True) for _ in range(3)]


# ---- strategy: all --------------------------------------------------------------------------
def test_all_publishes_every_instance_in_parallel_hashing_once(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    rec = Recorder()
    res = run_cluster(installed_model, "prod", rec)
    assert (res.exit_code, res.succeeded, res.total, res.outcome) == (EXIT_OK, 3, 3, "ok")
    want = cached_files(axon_home, installed_model)
    for server in three:
        assert registered(server, installed_model)
        assert on_disk(server, installed_model) == want
    # the model is validated/hashed once per publish, not once per instance
    assert sum(1 for kind, key in rec.events if kind == "begin" and key == "verify") == 1
    # the live view: exactly one progress line per instance (file tasks folded into it)
    lines = {key for kind, key in rec.events if kind == "begin" and key != "verify"}
    assert lines == {r.target for r in res.results}
    assert {r["state"] for r in res.to_dict()["instances"]} == {"published"}


def test_one_instance_down_is_a_partial_failure_naming_it(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    three[1].kill()
    res = run_cluster(installed_model, "prod")
    assert (res.exit_code, res.succeeded, res.outcome) == (EXIT_PARTIAL, 2, "partial")
    assert registered(three[0], installed_model) and registered(three[2], installed_model)
    [failed] = res.failures
    assert failed.target == three[1].url
    assert failed.error and "127.0.0.1" in json.dumps(failed.error)
    assert "succeeded 2/3" in res.summary()


def test_every_instance_down_is_a_total_failure(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    for server in three:
        server.kill()
    res = run_cluster(installed_model, "prod")
    assert (res.exit_code, res.succeeded, res.outcome) == (EXIT_ALL_FAILED, 0, "failed")
    assert len(res.failures) == 3


def test_fail_fast_cancels_instances_not_started(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    three[0].kill()
    res = run_cluster(installed_model, "prod", max_parallel=1, fail_fast=True)
    states = [res.states[r.target] for r in res.results]
    assert states == ["failed", "cancelled", "cancelled"]
    assert res.exit_code == EXIT_ALL_FAILED
    assert not registered(three[1], installed_model) and not registered(three[2], installed_model)


def test_without_fail_fast_a_failure_does_not_stop_the_others(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    three[0].kill()
    res = run_cluster(installed_model, "prod", max_parallel=1)
    assert [res.states[r.target] for r in res.results] == ["failed", "published", "published"]


@pytest.mark.parametrize(
    ("quorum", "code"), [("2", EXIT_OK), ("60%", EXIT_OK), ("100%", EXIT_PARTIAL)]
)
def test_min_success_decides_when_partial_counts_as_success(
    three: list[Any], installed_model: ModelRef, axon_home: Path, quorum: str, code: int
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    three[2].kill()
    res = run_cluster(installed_model, "prod", min_success=quorum)
    assert res.succeeded == 2 and res.exit_code == code


# ---- strategy: first-available --------------------------------------------------------------
def test_first_available_skips_unhealthy_and_stops_at_the_first_success(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three, strategy="first-available")})
    three[0].kill()
    res = run_cluster(installed_model, "prod")
    assert [res.states[r.target] for r in res.results] == ["unhealthy", "published", "unused"]
    assert res.exit_code == EXIT_OK and res.succeeded == 1
    assert registered(three[1], installed_model)
    assert not registered(three[2], installed_model)
    assert "GET" in str(res.results[0].error) and "/health" in str(res.results[0].error)


def test_strategy_option_overrides_the_config(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three, strategy="all")})
    res = run_cluster(installed_model, "prod", strategy="first-available")
    assert res.strategy == "first-available" and res.succeeded == 1
    assert registered(three[0], installed_model) and not registered(three[1], installed_model)


def test_first_available_with_nobody_healthy_fails_totally(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three, strategy="first-available")})
    for server in three:
        server.kill()
    res = run_cluster(installed_model, "prod")
    assert res.exit_code == EXIT_ALL_FAILED
    assert set(res.states.values()) == {"unhealthy"}


# ---- strategy: round-robin ------------------------------------------------------------------
def _axon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axon", *args], capture_output=True, text=True, timeout=120,
        env=dict(os.environ),
    )  # fmt: skip


def test_round_robin_moves_on_each_publish_and_persists_across_runs(
    three: list[Any], make_model_dir: Any, install_model: Any, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"rr": cluster_of(*three, strategy="round-robin")})
    refs = [install_model(make_model_dir(seed=i), f"hf/tiny-bert@v{i}") for i in range(1, 5)]
    for ref in refs:  # each publish is a separate process: the position lives on disk
        proc = _axon("publish", str(ref), "--target", "rr", "--json", "--retries", "0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    holders = [[i for i, s in enumerate(three) if registered(s, ref)] for ref in refs]
    assert holders == [[0], [1], [2], [0]]
    state = json.loads((axon_home / "state" / "round-robin.json").read_text())
    assert state["clusters"]["rr"]["next"] == 1


def test_round_robin_skips_a_dead_instance_and_continues_after_it(
    three: list[Any], make_model_dir: Any, install_model: Any, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"rr": cluster_of(*three, strategy="round-robin")})
    v1 = install_model(make_model_dir(seed=1), "hf/tiny-bert@v1")
    v2 = install_model(make_model_dir(seed=2), "hf/tiny-bert@v2")
    three[0].kill()
    first = run_cluster(v1, "rr")
    assert first.succeeded == 1 and registered(three[1], v1)
    second = run_cluster(v2, "rr")
    assert registered(three[2], v2) and not registered(three[1], v2)
    assert second.states[three[2].url] == "published"


# ---- the command line -----------------------------------------------------------------------
def test_cli_summary_json_and_status_matrix(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    three[2].kill()
    proc = _axon("publish", str(installed_model), "--target", "prod", "--retries", "0")
    assert proc.returncode == EXIT_PARTIAL, proc.stderr
    assert "succeeded 2/3" in proc.stdout and three[2].url in proc.stdout
    proc = _axon("publish", str(installed_model), "-t", "prod", "--json", "--retries", "0")
    data = json.loads(proc.stdout)
    [cluster] = data["results"]
    assert [i["state"] for i in cluster["instances"]] == ["published", "published", "failed"]
    assert cluster["instances"][2]["error"]["message"]
    assert proc.returncode == EXIT_PARTIAL == data["exit_code"]

    proc = _axon("status", str(installed_model), "--target", "prod")
    assert proc.returncode == EXIT_PARTIAL, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(three[0].url in line and line.count("yes") == 4 for line in lines), proc.stdout
    assert "instances DIFFER" in proc.stdout
    proc = _axon("status", str(installed_model), "--target", "prod", "--json")
    rows = json.loads(proc.stdout)["instances"]
    assert [r["registered"] for r in rows] == [True, True, None]

    proc = _axon("publish", str(installed_model), "-t", "prod", "--min-success", "9")
    assert proc.returncode == 2 and "--min-success 9" in proc.stderr


def test_dry_run_plans_every_member_and_changes_nothing(
    three: list[Any], installed_model: ModelRef, axon_home: Path
) -> None:
    write_config(axon_home, clusters={"prod": cluster_of(*three)})
    opts = PublishOptions(dry_run=True, timeout=5.0)
    result = publish(installed_model, "prod", opts)
    assert result.exit_code == 0 and result.results == []
    assert [p.target for p in result.plans] == [s.url for s in three]
    assert all(p.files_to_send == len(p.files) > 0 for p in result.plans)
    assert not any(registered(s, installed_model) for s in three)


def test_a_stalled_instance_only_costs_its_own_timeout(
    three: list[Any], installed_model: ModelRef, axon_home: Path, tcp_proxy: Any
) -> None:
    import time

    stuck = tcp_proxy(three[2].port)
    stuck.stall(None)  # accepts connections, never forwards a byte
    members = [three[0].url, three[1].url, stuck.url]
    write_config(axon_home, clusters={"prod": {"instances": members}})
    started = time.monotonic()
    res = run_cluster(installed_model, "prod", timeout=2.0)
    elapsed = time.monotonic() - started
    stuck.resume()
    assert [res.states[m] for m in members] == ["published", "published", "failed"]
    assert "ReadTimeout" in json.dumps(res.results[2].error), res.results[2].error
    assert elapsed < 20, (elapsed, [r.to_dict() for r in res.results])
    assert all(r.seconds < elapsed for r in res.results[:2])


def test_static_and_discovered_members_are_merged_once_each(
    mlos_server: Any, etcd_server: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    static = mlos_server(no_fsync=True)  # only in the static list
    both = join(mlos_server, etcd_server, "core-both")  # static list and discovery
    found = join(mlos_server, etcd_server, "core-found")  # discovery only
    wait_members(etcd_server, {"core-both", "core-found"})
    cluster = {"instances": [static.url, both.url], "discovery": etcd_server.discovery_uri}
    write_config(axon_home, clusters={"prod": cluster})
    res = run_cluster(installed_model, "prod")
    assert [r.target for r in res.results] == [static.url, both.url, "core-found"]
    assert res.exit_code == EXIT_OK and res.succeeded == 3
    assert all(registered(s, installed_model) for s in (static, both, found))


def test_ctrl_c_stops_uploads_in_flight_and_a_rerun_resumes(
    mlos_server: Any,
    tcp_proxy: Any,
    make_model_dir: Any,
    install_model: Any,
    axon_home: Path,
) -> None:
    """Ctrl-C during a cluster publish: the instances still receiving stop at their next
    chunk (not when their upload would have finished), nothing is half-visible, exit 130;
    what they received is kept, so the re-run sends less than the whole model again."""
    import signal
    import time

    from tests.fixtures.common import wait_for

    size = 24 * 1024 * 1024
    ref = install_model(make_model_dir(extra={"big.bin": os.urandom(size)}), "hf/slow@v1")
    servers = [mlos_server(no_fsync=True) for _ in range(2)]
    proxies = [tcp_proxy(s.port) for s in servers]
    for proxy in proxies:
        proxy.throttle(4 * 1024 * 1024)  # 24 MiB would take 6 s per instance
    write_config(axon_home, clusters={"slow": {"instances": [p.url for p in proxies]}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "axon", "publish", str(ref), "-t", "slow", "--retries", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    wait_for(lambda: all(p.bytes_up > 2 * 1024 * 1024 for p in proxies), timeout=20, what="uploads")
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _out, err = proc.communicate(timeout=30)
    stopped_after = time.monotonic() - interrupted
    assert proc.returncode == 130, err
    # one 8 MiB chunk at 4 MiB/s is 2 s; finishing the uploads would take 4-5 s more
    assert stopped_after < 4.5, f"took {stopped_after:.1f} s to stop after Ctrl-C"
    assert "axon: aborted" in err
    assert not any(registered(s, ref) for s in servers)
    assert not any((s.models_dir / ref.relpath).exists() for s in servers)
    for proxy in proxies:
        proxy.throttle(None)
    again = _axon("publish", str(ref), "-t", "slow", "--json", "--retries", "0")
    assert again.returncode == 0, again.stderr
    sent = sum(i["bytes_sent"] for i in json.loads(again.stdout)["results"][0]["instances"])
    assert sent < 2 * size, "a re-run after Ctrl-C resumes, it does not start over"
    assert all(registered(s, ref) for s in servers)
