"""Publishing to a discovered cluster, end to end: a real etcd, real ``mlos-core serve``
instances that join through it, ``axon publish`` / ``axon targets show`` resolving the members
at run time. A killed instance drops out of the next publish after the TTL; a new one joins it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from axon.errors import EXIT_DISCOVERY
from axon.publish import PublishOptions, publish
from modelpkg.refs import ModelRef
from tests.fixtures.cluster import join, registered, wait_members
from tests.fixtures.common import free_port
from tests.fixtures.discovery import EtcdServer
from tests.helpers import write_config

pytestmark = pytest.mark.slow


def discovered(discovery: str) -> dict[str, Any]:
    """``clusters:`` with one cluster, ``prod``, whose members ``discovery`` finds."""
    return {"prod": {"discovery": discovery, "storage_type": "api"}}


def publish_names(ref: ModelRef) -> dict[str, bool]:
    """Publish to the discovered cluster; -> {member name: ok}."""
    result = publish(ref, "prod", PublishOptions(retries=0, timeout=10.0))
    (cluster,) = result.results
    return {r.target: r.ok for r in cluster.results}


def axon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "axon", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def test_publish_reaches_every_discovered_instance_and_follows_membership(
    etcd_server: EtcdServer,
    mlos_server: Any,
    installed_model: ModelRef,
    make_model_dir: Any,
    install_model: Any,
    axon_home: Path,
) -> None:
    write_config(axon_home, clusters=discovered(etcd_server.discovery_uri))
    servers = {i: join(mlos_server, etcd_server, i) for i in ("core-1", "core-2", "core-3")}
    wait_members(etcd_server, set(servers))

    assert publish_names(installed_model) == {"core-1": True, "core-2": True, "core-3": True}
    assert all(registered(s, installed_model) for s in servers.values())

    servers["core-2"].kill()  # kill -9: it cannot deregister, its lease runs out
    wait_members(etcd_server, {"core-1", "core-3"})
    v2 = install_model(make_model_dir(seed=2), "hf/tiny-bert@v2")
    assert publish_names(v2) == {"core-1": True, "core-3": True}

    servers["core-4"] = join(mlos_server, etcd_server, "core-4")
    wait_members(etcd_server, {"core-1", "core-3", "core-4"})
    v3 = install_model(make_model_dir(seed=3), "hf/tiny-bert@v3")
    assert publish_names(v3) == {"core-1": True, "core-3": True, "core-4": True}
    # v3 came from this publish; v2 core-4 may hold too: it catches up from the cluster's
    # desired state by itself (docs/relay.md)
    assert registered(servers["core-4"], v3)


def test_targets_show_lists_discovered_members_with_health(
    etcd_server: EtcdServer, mlos_server: Any, axon_home: Path
) -> None:
    write_config(axon_home, clusters=discovered(etcd_server.discovery_uri))
    a = join(mlos_server, etcd_server, "core-a")
    b = join(mlos_server, etcd_server, "core-b")
    wait_members(etcd_server, {"core-a", "core-b"})
    shown = axon("targets", "show", "prod", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["discovered"]
    assert [(r["instance_id"], r["endpoint"], r["healthy"]) for r in rows] == [
        ("core-a", a.url, True),
        ("core-b", b.url, True),
    ]
    human = axon("targets", "show", "prod")
    assert human.returncode == 0 and "core-a" in human.stdout and b.url in human.stdout


def test_cli_discovery_failure_exit_code(axon_home: Path, installed_model: ModelRef) -> None:
    dead = f"etcd://127.0.0.1:{free_port()}"
    write_config(axon_home, clusters=discovered(dead))
    shown = axon("targets", "show", "prod")
    assert shown.returncode == EXIT_DISCOVERY
    assert "etcd discovery for cluster 'prod' failed" in shown.stderr
    published = axon("publish", str(installed_model), "--target", "prod")
    assert published.returncode == EXIT_DISCOVERY, published.stderr
    assert "etcd discovery for cluster 'prod' failed" in published.stderr
