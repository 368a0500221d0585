"""Network faults between axon and mlos-core, through the loopback fault proxy
(tests/fixtures/proxy.py): a connection cut after N bytes, a stalled link, a slow link. A
publish either resumes and completes, or fails with a clear per-instance error, and never
runs past its timeouts. Readers never see a partial model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.fixtures.mlos import ServerFactory
from tests.fixtures.proxy import ProxyFactory
from tests.stress.checkers import check_fs_root, check_registered
from tests.stress.figures import record, scale
from tests.stress.harness import Home, MiB, make_homes, run_axon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REF = "hf/net@v1"
SIZE = scale(3 * MiB, 12 * MiB)
RESEND_SLACK = 256 * 1024  # per cut: request heads and bytes in flight when it was cut
LINK = 32 * MiB  # bytes/s through the proxy in the cut trials


def _whole(srv: object) -> None:
    models_dir = srv.models_dir  # type: ignore[attr-defined]
    _n, problems = check_fs_root(models_dir)
    problems += check_registered(srv.url, models_dir)  # type: ignore[attr-defined]
    assert problems == []


def _publish(home: Home, target: str, *extra: str) -> tuple[float, int, dict[str, object]]:
    started = time.monotonic()
    done = run_axon(home, "publish", REF, "-t", target, "--json", *extra, timeout=300)
    took = time.monotonic() - started
    try:
        body = json.loads(done.stdout)
    except ValueError:
        body = {"raw": done.stdout + done.stderr}
    return took, done.returncode, body


def test_cut_connections_resume(
    mlos_server: ServerFactory, tcp_proxy: ProxyFactory, tmp_path: Path
) -> None:
    a, _b = make_homes(tmp_path, REF, SIZE)
    trials = scale(1, 10)
    worst, slowest = 0, 0.0
    cut_points = [SIZE // 3, SIZE // 2, 3 * RESEND_SLACK, SIZE - 4096, 2 * SIZE // 3]
    for trial in range(trials):
        # a new server each trial: one that held the model would need none of its bytes
        srv = mlos_server(no_fsync=True)
        proxy = tcp_proxy(srv.port)
        cut = cut_points[trial % len(cut_points)]
        proxy.cut_after(cut, times=2, mode=("close", "reset")[trial % 2])
        proxy.throttle(LINK)  # the server keeps up: a reset loses little of what was sent
        started = time.monotonic()
        done = run_axon(a, "publish", REF, "-t", proxy.url, "-q", "--retries", "5", timeout=300)
        assert done.returncode == 0, done.stderr
        took = time.monotonic() - started
        # a connection resumed after a cut past the middle carries less than the cut point:
        # the second cut only happens for the early ones
        sent, cuts = proxy.bytes_up, proxy.cuts
        assert 1 <= cuts <= 2, f"trial {trial}: the proxy cut {cuts} connections at {cut}"
        # Resuming sends what remained after each cut, plus requests and what was in flight
        # at the cut; starting again from zero would re-send each cut point's bytes.
        resent = sent - SIZE
        worst = max(worst, resent)
        assert resent <= cuts * RESEND_SLACK, (
            f"trial {trial}: resume re-sent {resent} bytes after {cuts} cuts at {cut} "
            f"(at most {RESEND_SLACK} per cut)"
        )
        assert took < 120, f"trial {trial}: a publish cut at {cut} ({cuts} cuts) took {took:.0f} s"
        slowest = max(slowest, took)
        _whole(srv)
        srv.stop()
    record("network_faults", "cut_trials", trials)
    record("network_faults", "resent_bytes_after_the_cuts_max", worst)
    record("network_faults", "cut_trial_seconds_max", round(slowest, 1))


def test_stalled_link_fails_within_timeout_with_clear_error(
    mlos_server: ServerFactory, tcp_proxy: ProxyFactory, tmp_path: Path
) -> None:
    a, _b = make_homes(tmp_path, REF, SIZE)
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    proxy.cut_after(SIZE // 2)  # first connection dies half-way...
    proxy.stall(None)  # ...and the link then hangs for good
    timeout, retries = 2.0, 1
    took, code, body = _publish(a, proxy.url, "--timeout", str(timeout), "--retries", str(retries))
    assert code != 0
    # every attempt may wait a few timeouts (connect, read) plus back-off: bounded, not hung
    bound = (retries + 1) * 4 * timeout + 20
    assert took < bound, f"publish hung {took:.1f} s (bound {bound})"
    (result,) = body["results"]  # type: ignore[index]
    assert result["ok"] is False and result["error"]["message"]
    error = result["error"]
    assert result["target"] == proxy.url and error["target"] == proxy.url  # the stalled instance
    assert "did not answer in time" in error["message"], error
    assert "re-running resumes" in error["hint"], error
    proxy.resume()
    _whole(srv)
    record("network_faults", "stall_seconds_to_fail", round(took, 1))


def test_slow_link_completes(
    mlos_server: ServerFactory, tcp_proxy: ProxyFactory, tmp_path: Path
) -> None:
    a, _b = make_homes(tmp_path, REF, SIZE)
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    rate = SIZE / 3  # three seconds of transfer
    proxy.throttle(rate)
    took, code, body = _publish(a, proxy.url, "--timeout", "10")
    assert code == 0, body
    assert took >= 2.0  # it really went through the slow link
    _whole(srv)
    record("network_faults", "slow_link_bytes_per_s", int(rate))


def test_cluster_with_one_stalled_instance_is_a_clear_partial_failure(
    mlos_server: ServerFactory, tcp_proxy: ProxyFactory, tmp_path: Path
) -> None:
    a, _b = make_homes(tmp_path, REF, SIZE)
    good, bad = mlos_server(no_fsync=True), mlos_server(no_fsync=True)
    proxy = tcp_proxy(bad.port)
    proxy.stall(None)
    a.write_config({}, clusters={"c": {"instances": [good.url, proxy.url]}})
    took, code, body = _publish(a, "c", "--timeout", "2", "--retries", "1")
    assert code == 9, body  # EXIT_PARTIAL: some instances failed
    (cluster,) = body["results"]  # type: ignore[index]
    by_target = {m["target"]: m for m in cluster["instances"]}
    assert by_target[good.url]["ok"] is True and by_target[good.url]["registered"] is True
    failed = by_target[proxy.url]
    assert failed["ok"] is False and failed["exit_code"] == 7 and failed["state"] == "failed"
    assert "did not answer in time" in failed["error"]["message"], failed
    assert took < 60
    proxy.resume()
    for srv in (good, bad):
        _whole(srv)
    assert (good.models_dir / "hf/net/v1/manifest.yaml").is_file()
    assert not (bad.models_dir / "hf/net/v1").exists()
    record("network_faults", "cluster_partial_trials", 1)
