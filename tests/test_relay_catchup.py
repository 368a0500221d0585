"""Catch-up (docs/relay.md): members of a discovered cluster pull what its desired state lists,
from healthy peers, after joining, a kill -9 and restart, or losing a model. Real etcd."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import httpx
import pytest

from axon.errors import EXIT_OK, EXIT_USAGE
from modelpkg.desired import DesiredModel, desired_key
from tests.fixtures.common import wait_for
from tests.fixtures.mlos import ALPHA, TOKENS, upload_resumable
from tests.helpers import run_axon, write_config

MiB = 1024 * 1024

pytestmark = pytest.mark.slow
V1 = {"weights.bin": os.urandom(6 * MiB), "config.json": b'{"v": 1}'}
V2 = {"weights.bin": os.urandom(3 * MiB), "config.json": b'{"v": 2}'}


def put_desired(etcd: Any, model_id: str, digest: str) -> None:
    record = DesiredModel.now(model_id, digest)
    body = {
        "key": base64.b64encode(desired_key("prod", model_id).encode()).decode(),
        "value": base64.b64encode(record.to_json().encode()).decode(),
    }
    httpx.post(f"{etcd.url}/v3/kv/put", json=body, timeout=10).raise_for_status()


def member(mlos_server: Any, etcd: Any, name: str, **flags: Any) -> Any:
    return mlos_server(
        cluster="prod",
        discovery=etcd.discovery_uri,
        discovery_ttl=3,
        instance_id=name,
        no_fsync=True,
        catch_up_interval=1,
        **flags,
    )


def files_of(srv: Any, model_id: str) -> dict[str, bytes]:
    ns, rest = model_id.split("/", 1)
    name, version = rest.split("@")
    root = srv.models_dir / ns / name / version
    if not root.is_dir():
        return {}
    out = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out.pop("manifest.yaml", None)
    return out


def catch_up(srv: Any) -> dict[str, Any]:
    report: dict[str, Any] = httpx.get(f"{srv.url}/health", timeout=10).json()["relay"]
    catch: dict[str, Any] = report.get("catch_up", {})
    return catch


def wait_holds(srv: Any, model_id: str, files: dict[str, bytes], timeout: float = 60) -> None:
    wait_for(lambda: files_of(srv, model_id) == files, timeout=timeout, what=f"{model_id} held")
    wait_for(lambda: not catch_up(srv)["catching_up"], timeout=timeout, what="caught up")


def test_members_catch_up_after_join_kill_restart_and_loss(mlos_server, etcd_server):
    etcd = etcd_server
    core1 = member(mlos_server, etcd, "core-1")
    core2 = member(mlos_server, etcd, "core-2")
    digest1 = upload_resumable(core1.url, "hf/m@v1", V1)["manifest_sha256"]
    put_desired(etcd, "hf/m@v1", digest1)
    wait_holds(core2, "hf/m@v1", V1)
    report = catch_up(core2)
    assert report["desired"] == 1 and report["current"] == 1 and report["lagging"] == []
    assert report["error"] is None

    # a member that joins later holds every model without anyone publishing again
    core3 = member(mlos_server, etcd, "core-3")
    wait_holds(core3, "hf/m@v1", V1)

    # kill -9, a publish it misses, restart: it catches up from its peers
    core2.kill()
    digest2 = upload_resumable(core1.url, "hf/m@v2", V2)["manifest_sha256"]
    put_desired(etcd, "hf/m@v2", digest2)
    wait_holds(core3, "hf/m@v2", V2)
    core2.start()
    wait_holds(core2, "hf/m@v2", V2)
    assert files_of(core2, "hf/m@v1") == V1
    metrics = httpx.get(f"{core2.url}/metrics").text
    assert 'mlos_relay_pulls_total{origin="catch-up",result="committed"} 1' in metrics
    assert "mlos_relay_desired_models 2" in metrics and "mlos_relay_lagging_models 0" in metrics
    assert "mlos_relay_catching_up 0" in metrics

    # a model lost (deleted here) comes back
    assert httpx.delete(f"{core3.url}/models/hf/m@v1").status_code == 200
    wait_holds(core3, "hf/m@v1", V1)

    # a later direct publish of another build is left alone, and said to diverge
    direct = {"weights.bin": b"direct", "config.json": b'{"v": 9}'}
    upload_resumable(core3.url, "hf/m@v2", direct)
    wait_for(lambda: catch_up(core3)["diverged"] == ["hf/m@v2"], timeout=30, what="diverged")
    assert files_of(core3, "hf/m@v2") == direct


def test_catch_up_reports_a_lagging_model_no_peer_holds(mlos_server, etcd_server):
    etcd = etcd_server
    core1 = member(mlos_server, etcd, "core-1")
    put_desired(etcd, "hf/ghost@v1", "a" * 64)

    def lagging() -> bool:
        report = catch_up(core1)
        pulls = report.get("pulls", [])
        return report["lagging"] == ["hf/ghost@v1"] and any(
            p["state"] == "failed" and p["code"] == "no_source" for p in pulls
        )

    wait_for(lagging, timeout=30, what="a failed catch-up pull reported")
    health = httpx.get(f"{core1.url}/health").json()
    assert health["status"] == "healthy" and health["relay"]["catching_up"] is True
    assert "mlos_relay_lagging_models 1" in httpx.get(f"{core1.url}/metrics").text


def test_accept_from_admits_another_clusters_members_as_sources(mlos_server, etcd_server):
    etcd = etcd_server
    staging = mlos_server(
        cluster="staging", discovery=etcd.discovery_uri, instance_id="stage-1", no_fsync=True
    )
    prod = member(mlos_server, etcd, "prod-1", accept_from=["staging"])
    lone = member(mlos_server, etcd, "prod-2")
    digest = upload_resumable(staging.url, "hf/m@v1", V1)["manifest_sha256"]
    body = {"model_id": "hf/m@v1", "manifest_sha256": digest, "sources": [staging.url]}
    refused = httpx.post(f"{lone.url}/v1/pulls", json=body)
    assert refused.status_code == 403 and refused.json()["code"] == "not_a_peer"
    info = httpx.get(f"{prod.url}/v1/relay").json()
    assert staging.url in info["peers"] and lone.url in info["peers"]
    assert prod.url not in info["peers"] and info["accept_from"] == ["staging"]
    started = httpx.post(f"{prod.url}/v1/pulls", json=body)
    assert started.status_code == 202, started.text
    pull_id = started.json()["pull_id"]
    wait_for(
        lambda: httpx.get(f"{prod.url}/v1/pulls/{pull_id}").json()["state"] == "committed",
        timeout=60,
        what="the promotion pull",
    )
    assert files_of(prod, "hf/m@v1") == V1


def test_a_desired_model_no_tenant_owns_is_reported_unowned(mlos_server, etcd_server):
    etcd = etcd_server
    core1 = member(mlos_server, etcd, "core-1", tokens=TOKENS)
    put_desired(etcd, "zulu/m@v1", "b" * 64)
    wait_for(lambda: catch_up(core1)["unowned"] == ["zulu/m@v1"], timeout=30, what="unowned")
    report = catch_up(core1)
    assert report["lagging"] == ["zulu/m@v1"] and report["pulls"] == []


def test_sync_forget_removes_a_model_from_the_desired_state(mlos_server, etcd_server, axon_home):
    """A model deleted from a member comes back by catch-up while the desired state lists
    it; after `axon sync CLUSTER REF --forget` it does not, and the members keep the rest."""
    etcd = etcd_server
    core1 = member(mlos_server, etcd, "core-1")
    core2 = member(mlos_server, etcd, "core-2")
    digest = upload_resumable(core1.url, "hf/m@v1", V2)["manifest_sha256"]
    put_desired(etcd, "hf/m@v1", digest)
    wait_holds(core2, "hf/m@v1", V2)
    discovered = {"discovery": etcd.discovery_uri, "storage_type": "api"}
    write_config(axon_home, clusters={"prod": discovered})

    run = run_axon("sync", "prod", "hf/m@v1", "--forget")
    assert run.code == EXIT_OK, run.err
    key = desired_key("prod", "hf/m@v1")
    assert f"hf/m@v1: removed from the desired state of prod: {key} (build {digest[:12]}" in run.out
    assert "DELETE <member>/models/hf/m@v1" in run.out
    wait_for(lambda: catch_up(core2)["desired"] == 0, timeout=30, what="desired state re-read")
    assert httpx.delete(f"{core2.url}/models/hf/m@v1").status_code == 200
    time.sleep(4)  # several catch-up rounds (--catch-up-interval 1)
    assert files_of(core2, "hf/m@v1") == {}
    assert not catch_up(core2)["catching_up"]
    assert files_of(core1, "hf/m@v1") == V2  # the members keep what they hold

    run = run_axon("sync", "prod", "hf/m@v1", "--forget", "--json")
    assert run.code == EXIT_OK, run.err
    assert json.loads(run.out)["removed"] is None
    run = run_axon("sync", "prod", "--forget")
    assert run.code == EXIT_USAGE and "--forget needs the REF" in run.err
    targets = {"c1": {"endpoint": core1.url, "storage_type": "api"}}
    write_config(axon_home, targets, clusters={"static": {"instances": ["c1"]}})
    run = run_axon("sync", "static", "hf/m@v1", "--forget")
    assert run.code != EXIT_OK and "only a cluster discovered through etcd has one" in run.err


def test_health_shows_a_catch_up_while_it_runs_with_tokens_and_the_peer_token(
    mlos_server, etcd_server, tcp_proxy, monkeypatch
):
    """With tenants and the peer token, a catch-up pulls for the owner of the model's
    namespace, and the source serves it what that owner holds; while it runs, /health says
    catching_up with the bytes so far (the source is reached through a slow proxy)."""
    monkeypatch.setenv("MLOS_PEER_TOKEN", "peer-secret-0123456789")
    shared = {"tokens": TOKENS, "peer_token_env": "MLOS_PEER_TOKEN"}
    source = mlos_server(no_fsync=True, **shared)
    slow = tcp_proxy(source.port)
    slow.throttle(1 * MiB)
    core2 = member(mlos_server, etcd_server, "core-2", peer=[slow.url], **shared)
    digest = upload_resumable(source.url, "alpha/m@v1", V1, headers=ALPHA)["manifest_sha256"]
    put_desired(etcd_server, "alpha/m@v1", digest)

    seen: dict[str, Any] = {}

    def running() -> bool:
        relay: dict[str, Any] = httpx.get(f"{core2.url}/health", timeout=10).json()["relay"]
        if relay["catching_up"] and relay["pull_bytes_done"] > 0 and relay["catch_up"]["pulls"]:
            seen.update(relay)
            return True
        return False

    wait_for(running, timeout=30, what="a catch-up pull under way")
    assert seen["catch_up"]["lagging"] == ["alpha/m@v1"]
    assert 0 < seen["pull_bytes_done"] < seen["pull_bytes_total"] == sum(map(len, V1.values()))
    [pull] = seen["catch_up"]["pulls"]
    assert pull["state"] == "running" and 0 < pull["bytes_done"] <= pull["bytes_total"]
    assert pull["source"] == slow.url
    metrics = httpx.get(f"{core2.url}/metrics").text
    assert "mlos_relay_catching_up 1" in metrics and "mlos_relay_lagging_models 1" in metrics
    slow.throttle(None)
    wait_holds(core2, "alpha/m@v1", V1)
