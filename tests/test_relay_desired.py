"""A publish by relay to a cluster found through etcd: the members (each other's peers
through discovery) pull from each other, and the cluster's desired state is recorded in
etcd with the digest the members show, so that one joining later can catch up from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from axon.errors import EXIT_OK
from axon.mlos_client import MlosClient
from axon.publish import PublishOptions, publish
from axon.publish.cluster import ClusterResult
from axon.publish.desired import read_desired
from axon.targets import InstanceTarget
from modelpkg.refs import ModelRef
from tests.fixtures.cluster import join, registered, wait_members
from tests.fixtures.discovery import EtcdServer
from tests.helpers import write_config

pytestmark = pytest.mark.slow


def test_relay_to_a_discovered_cluster_records_the_desired_state(
    mlos_server: Any, etcd_server: EtcdServer, installed_model: ModelRef, axon_home: Path
) -> None:
    uri = etcd_server.discovery_uri
    write_config(axon_home, clusters={"prod": {"discovery": uri, "storage_type": "api"}})
    servers = [join(mlos_server, etcd_server, f"core-{i}") for i in (1, 2, 3)]
    wait_members(etcd_server, {"core-1", "core-2", "core-3"})
    opts = PublishOptions(retries=0, timeout=20.0, override_timeout=True, relay=True)
    result = publish(installed_model, "prod", opts)
    assert result.exit_code == EXIT_OK
    (cluster,) = result.results
    assert isinstance(cluster, ClusterResult)
    hows = sorted(r.relay["how"] for r in cluster.results if r.relay)
    assert hows == ["pulled", "pulled", "pushed"]
    assert all(registered(s, installed_model) for s in servers)
    records, warnings = read_desired(uri, "prod", 5.0)
    assert warnings == []
    [record] = records
    assert record.model_id == installed_model.id
    # the digest recorded is the one every member shows (what catch-up compares)
    for server in servers:
        with MlosClient.for_target(InstanceTarget(server.url, server.url)) as client:
            _served, manifest = client.manifest(installed_model)
        assert manifest is not None and manifest.digest() == record.manifest_sha256
    assert "desired state recorded: /mlos/clusters/prod/desired/" in cluster.summary()
