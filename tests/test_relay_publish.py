"""``axon publish --target CLUSTER`` with relay, on real ``mlos-core`` processes that pull from
each other: the publisher sends the model once, the members pull it from members that have
it, every member ends bit-exact, and each member's line says where its bytes came from."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from axon.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from axon.publish.results import ABORTED, FAILED, PUBLISHED
from modelpkg.refs import ModelRef
from tests.fixtures.cluster import Recorder, registered, run_cluster
from tests.fixtures.relay import relay_config, tree_of
from tests.helpers import run_axon

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


@pytest.fixture
def big_model(install_model: Any, make_model_dir: Any) -> ModelRef:
    """A model of 4 MiB (weights) plus the small files."""
    ref: ModelRef = install_model(make_model_dir(weights_size=4 * MiB), "hf/relay-bert@v1")
    return ref


def how(res: Any, name: str) -> dict[str, Any]:
    item = next(r for r in res.results if r.target == name)
    assert item.relay is not None, f"{name} has no relay record"
    return dict(item.relay)


def test_relay_to_five_is_bit_exact_and_the_publisher_sends_once(
    peered: Any, big_model: ModelRef, axon_home: Path
) -> None:
    servers = peered(5)
    names = relay_config(axon_home, servers, relay={"fanout": 1})
    res = run_cluster(big_model, "prod")
    assert res.exit_code == EXIT_OK, res.summary()
    assert all(res.states[n] == PUBLISHED for n in names)
    cached = tree_of_cache(axon_home, big_model)
    for server in servers:
        assert tree_of(server, big_model) == cached
        assert registered(server, big_model)
    total = sum(s for s in cached_sizes(axon_home, big_model))
    assert res.publisher_bytes == total  # one copy left the publisher, not five
    hows = [how(res, n) for n in names]
    assert [h["how"] for h in hows].count("pushed") == 1
    assert [h["how"] for h in hows].count("pulled") == 4
    # fanout 1: each source serves one puller at a time, so the tree has several sources
    assert len({h["source"] for h in hows if h["how"] == "pulled"}) >= 2
    text = res.summary()
    assert "pushed (seed)" in text
    for h in hows[1:]:
        assert f"pulled from {h['source']}" in text
    assert "(all, relay)" in text


def test_a_member_that_cannot_pull_gets_a_direct_push_and_the_report_says_so(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    servers = peered(3, lone={2})  # core-2 has no peers: it cannot pull
    names = relay_config(axon_home, servers, relay=True)
    res = run_cluster(installed_model, "prod")
    assert res.exit_code == EXIT_OK, res.summary()
    assert how(res, names[2])["how"] == "pushed"
    assert "direct push: it has no peers" in res.summary()
    assert how(res, names[1])["how"] == "pulled"
    for server in servers:
        assert tree_of(server, installed_model) == tree_of_cache(axon_home, installed_model)


def test_a_source_killed_mid_relay_its_puller_switches_and_finishes(
    peered: Any, tcp_proxy: Any, big_model: ModelRef, axon_home: Path
) -> None:
    from tests.fixtures.common import free_port

    ports = [free_port() for _ in range(4)]
    slow = tcp_proxy(ports[0])  # core-0 as its peers reach it: slowly
    slow.throttle(1 * MiB)
    servers = peered(4, ports=ports, advertise={0: slow.url})
    names = relay_config(axon_home, servers, relay={"seeds": 2, "fanout": 1})
    killed = threading.Event()
    victim: list[str] = []

    class KillSource(Recorder):
        """Once a member pulling from core-0 got bytes, kill -9 core-0 (and lose what the
        network still held for it)."""

        def begin(self, key: str, description: str, total: int | None = None) -> None:
            super().begin(key, description, total)
            if f"(pull from {names[0]})" in description:
                victim.append(key)

        def advance(self, key: str, nbytes: int) -> None:
            if key in victim and not killed.is_set():
                killed.set()
                servers[0].kill()
                slow.drop_all()

    res = run_cluster(big_model, "prod", KillSource())
    assert killed.is_set(), "nobody pulled from core-0"
    assert res.exit_code == EXIT_OK, res.summary()
    (name,) = victim
    record = how(res, name)
    assert record["how"] == "pulled" and record["source"] not in (names[0], None), record
    assert [t["source"] for t in record["tried"]] == [names[0]], record
    assert f"{name}: pulled from {record['source']} (after {names[0]} failed)" in res.summary()
    for server in servers[1:]:
        assert tree_of(server, big_model) == tree_of_cache(axon_home, big_model)


def test_atomic_relay_stages_by_pull_and_switches_all_or_none(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    servers = peered(3)
    names = relay_config(axon_home, servers, relay=True)
    res = run_cluster(installed_model, "prod", atomic=True)
    assert res.exit_code == EXIT_OK, res.summary()
    assert [how(res, n)["how"] for n in names] == ["pushed", "pulled", "pulled"]
    for server in servers:
        assert registered(server, installed_model)
        assert tree_of(server, installed_model) == tree_of_cache(axon_home, installed_model)


def test_atomic_relay_where_one_cannot_stage_switches_nobody(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    # core-2 takes nothing (a 1 KiB upload limit): it cannot stage, by pull or by push
    servers = peered(3, flags_for={2: {"max_upload_size": 1024}})
    names = relay_config(axon_home, servers, relay=True)
    res = run_cluster(installed_model, "prod", atomic=True)
    assert res.exit_code == EXIT_ALL_FAILED, res.summary()
    assert res.states[names[2]] == FAILED
    assert {res.states[names[0]], res.states[names[1]]} == {ABORTED}
    for server in servers:
        assert not registered(server, installed_model)


def test_no_relay_forces_the_direct_push(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    servers = peered(2)
    names = relay_config(axon_home, servers, relay=True)
    res = run_cluster(installed_model, "prod", relay=False)
    assert res.exit_code == EXIT_OK and not res.relay
    assert all(how_or_none(res, n) is None for n in names)
    assert res.publisher_bytes == 2 * sum(cached_sizes(axon_home, installed_model))


def test_cli_relay_report_and_option_errors(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    servers = peered(2)
    relay_config(axon_home, servers)  # relay not configured: --relay turns it on
    run = run_axon("publish", str(installed_model), "--target", "prod", "--relay")
    assert run.code == EXIT_OK, run.err
    assert "pushed (seed)" in run.out and "pulled from core-0" in run.out
    run = run_axon(
        "publish", str(installed_model), "--target", "prod", "--relay", "--strategy",
        "first-available",
    )  # fmt: skip
    assert run.code == EXIT_USAGE and "--relay needs strategy 'all'" in run.err
    run = run_axon("publish", str(installed_model), "--target", "prod", "--relay", "--dry-run")
    assert run.code == EXIT_OK
    assert "relay: has it" in run.out  # both hold it after the first publish


# ---- helpers ------------------------------------------------------------------------------
def how_or_none(res: Any, name: str) -> dict[str, Any] | None:
    item = next(r for r in res.results if r.target == name)
    return item.relay  # type: ignore[no-any-return]


def tree_of_cache(axon_home: Path, ref: ModelRef) -> dict[str, str]:
    import hashlib

    from axon.cache import Cache

    cached = Cache.from_config().get(ref)
    return {
        f.path: hashlib.sha256((cached.path / f.path).read_bytes()).hexdigest()
        for f in cached.manifest.files
    }


def cached_sizes(axon_home: Path, ref: ModelRef) -> list[int]:
    from axon.cache import Cache

    cached = Cache.from_config().get(ref)
    return [(cached.path / f.path).stat().st_size for f in cached.manifest.files]


def test_ctrl_c_cancels_the_pulls_and_a_rerun_resumes_them(
    peered: Any, tcp_proxy: Any, install_model: Any, make_model_dir: Any, axon_home: Path
) -> None:
    """Ctrl-C while a member pulls: exit 130 at once, the pull is cancelled on the member
    (nothing visible there), and the next publish resumes the pull from what it kept."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.fixtures.common import free_port, wait_for

    ports = [free_port() for _ in range(2)]
    slow = tcp_proxy(ports[0])  # core-0 as core-1 reaches it: 2 MiB/s
    slow.throttle(2 * MiB)
    servers = peered(2, ports=ports, advertise={0: slow.url})
    relay_config(axon_home, servers, relay=True)
    big_model = install_model(make_model_dir(weights_size=16 * MiB), "hf/cut-bert@v1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "axon", "publish", str(big_model), "-t", "prod", "--retries", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    wait_for(lambda: slow.bytes_down > 9 * MiB, timeout=30, what="core-1 pulling")
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - interrupted < 4.0
    assert not registered(servers[1], big_model)

    def idle() -> bool:
        relay = httpx.get(f"{servers[1].url}/health", timeout=5).json().get("relay", {})
        return bool(relay.get("pulls_running") == 0 and relay.get("pulls_queued") == 0)

    wait_for(idle, timeout=10, what="the pull on core-1 ended")
    metrics = httpx.get(f"{servers[1].url}/metrics", timeout=5).text
    assert 'mlos_relay_pulls_total{origin="request",result="cancelled"} 1' in metrics
    assert not registered(servers[1], big_model)
    kept = slow.bytes_down
    slow.throttle(None)
    again = run_axon("publish", str(big_model), "-t", "prod", "--json", "--retries", "0")
    assert again.code == EXIT_OK, again.err
    [member] = [
        i for i in json.loads(again.out)["results"][0]["instances"] if i["target"] == "core-1"
    ]
    assert member["relay"]["how"] == "pulled"
    assert member["relay"]["bytes"] < 16 * MiB - 4 * MiB, "the pull resumed, not started over"
    assert kept > 9 * MiB
    assert tree_of(servers[1], big_model) == tree_of_cache(axon_home, big_model)


def test_batches_pull_from_the_members_of_earlier_batches(
    peered: Any, big_model: ModelRef, axon_home: Path
) -> None:
    servers = peered(4)
    names = relay_config(axon_home, servers, relay=True)
    res = run_cluster(big_model, "prod", batch_size=2)
    assert res.exit_code == EXIT_OK, res.summary()
    assert res.batches == [names[:2], names[2:]]
    assert [how(res, n)["how"] for n in names] == ["pushed", "pulled", "pulled", "pulled"]
    assert res.publisher_bytes == sum(cached_sizes(axon_home, big_model))  # one copy
    for server in servers:
        assert tree_of(server, big_model) == tree_of_cache(axon_home, big_model)


def test_pullers_start_while_the_seed_still_receives(
    peered: Any, tcp_proxy: Any, big_model: ModelRef, axon_home: Path
) -> None:
    """Cut-through: the publisher's link to the seed is slow (a proxy at 1 MiB/s; the
    instances reach each other directly), and the members pull from the seed while it is
    still receiving: their pulls begin before the seed's push ends, and end right after it."""
    from tests.helpers import write_config

    servers = peered(3)
    slow = tcp_proxy(servers[0].port)  # only the publisher goes through it
    slow.throttle(1 * MiB)
    names = ["core-0", "core-1", "core-2"]
    urls = [slow.url, servers[1].url, servers[2].url]
    targets = {n: {"endpoint": u, "storage_type": "api"} for n, u in zip(names, urls, strict=True)}
    write_config(axon_home, targets, clusters={"prod": {"instances": names, "relay": True}})
    recorder = Recorder()
    res = run_cluster(big_model, "prod", recorder)
    assert res.exit_code == EXIT_OK, res.summary()
    assert [how(res, n)["how"] for n in names] == ["pushed", "pulled", "pulled"]
    events = recorder.events
    seed_end = next(
        i for i, (kind, key) in enumerate(events) if kind == "end" and key.startswith("core-0:")
    )
    for name in names[1:]:
        begun = events.index(("begin", name))
        assert begun < seed_end, f"{name} began pulling only after the seed had everything"
    assert res.publisher_bytes == sum(cached_sizes(axon_home, big_model))
    for server in servers:
        assert tree_of(server, big_model) == tree_of_cache(axon_home, big_model)


def test_a_member_that_cannot_pull_is_the_seed_and_the_dry_run_says_what_happens(
    peered: Any, big_model: ModelRef, axon_home: Path
) -> None:
    """core-0 has no peers (it cannot pull), core-1 pulls from core-0: the publisher sends
    the model once, to core-0 (a seed), and core-1 pulls it; the dry run says the same."""
    from tests.fixtures.common import free_port

    ports = [free_port(), free_port()]
    peer_0 = {"peer": [f"http://127.0.0.1:{ports[0]}"]}
    servers = peered(2, ports=ports, lone={0}, flags_for={1: peer_0})
    names = relay_config(axon_home, servers, relay=True)
    run = run_axon("publish", str(big_model), "--target", "prod", "--dry-run")
    assert run.code == EXIT_OK, run.err
    planned = {n: next(t for t in run.out.splitlines() if f"-> {n} (" in t) for n in names}
    assert "relay: pushed (seed; it has no peers" in planned["core-0"], run.out
    assert "relay: would pull from core-0" in planned["core-1"], run.out
    assert "would send" not in planned["core-1"], run.out  # bytes from a member, not axon
    res = run_cluster(big_model, "prod")
    assert res.exit_code == EXIT_OK, res.summary()
    assert how(res, "core-0")["how"] == "pushed"
    assert how(res, "core-1")["how"] == "pulled"
    assert how(res, "core-1")["source"] == "core-0"
    assert "pushed (seed; it has no peers" in res.summary()
    assert res.publisher_bytes == sum(cached_sizes(axon_home, big_model))  # one copy
    for server in servers:
        assert tree_of(server, big_model) == tree_of_cache(axon_home, big_model)


def test_min_success_on_a_relayed_publish(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    """A member that is down fails; the others get the model by relay, and --min-success
    says whether that is enough (exit 0) or not (exit 9)."""
    from tests.fixtures.common import free_port
    from tests.helpers import write_config

    servers = peered(2)
    names = ["core-0", "core-1", "core-down"]
    urls = [servers[0].url, servers[1].url, f"http://127.0.0.1:{free_port()}"]
    targets = {n: {"endpoint": u, "storage_type": "api"} for n, u in zip(names, urls, strict=True)}
    write_config(axon_home, targets, clusters={"prod": {"instances": names, "relay": True}})
    res = run_cluster(installed_model, "prod", min_success="2")
    assert res.exit_code == EXIT_OK, res.summary()
    assert res.states["core-down"] == FAILED
    assert sorted(how(res, n)["how"] for n in names[:2]) == ["pulled", "pushed"]
    for server in servers:
        assert tree_of(server, installed_model) == tree_of_cache(axon_home, installed_model)
    res = run_cluster(installed_model, "prod", min_success="100%")
    assert res.exit_code == EXIT_PARTIAL, res.summary()


def test_relay_with_tenants_and_the_peer_token(
    peered: Any, install_model: Any, make_model_dir: Any, axon_home: Path, tmp_path: Path,
    monkeypatch: Any,
) -> None:  # fmt: skip
    """With tokens and the peer token on every member, a tenant's relayed publish reaches
    every member (the pullers read, with the peer token, for that tenant: what the seed
    received from it, as it lands), and the publisher sends one copy."""
    import yaml

    from tests.fixtures.mlos import TOKENS
    from tests.helpers import write_config

    monkeypatch.setenv("MLOS_PEER_TOKEN", "peer-secret-0123456789")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump(TOKENS))
    servers = peered(3, tokens=str(tokens), peer_token_env="MLOS_PEER_TOKEN")
    ref = install_model(make_model_dir(weights_size=4 * MiB), "alpha/relay-bert@v1")
    names = [f"core-{i}" for i in range(3)]
    targets = {
        n: {"endpoint": s.url, "storage_type": "api", "token": "alpha-token"}
        for n, s in zip(names, servers, strict=True)
    }
    write_config(axon_home, targets, clusters={"prod": {"instances": names, "relay": True}})
    res = run_cluster(ref, "prod")
    assert res.exit_code == EXIT_OK, res.summary()
    assert sorted(how(res, n)["how"] for n in names) == ["pulled", "pulled", "pushed"]
    assert res.publisher_bytes == sum(cached_sizes(axon_home, ref))
    for server in servers:
        assert tree_of(server, ref) == tree_of_cache(axon_home, ref)
