"""``mlos federated evaluate`` on a discovered cluster: participants that registered in a real
etcd, found the way ``axon publish`` finds them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures.cluster import TTL, wait_members
from tests.fixtures.discovery import EtcdServer
from tests.fixtures.onnx_models import linear_onnx, onnx_or_skip, upload, write_dataset
from tests.helpers import write_config

pytestmark = pytest.mark.slow

MODEL = "fl/federated-model@v1.0"
TARGET = ("--target", "prod", "--json")


def test_discovered_participants_are_evaluated(
    etcd_server: EtcdServer, mlos_server: Any, axon_home: Path, tmp_path: Path
) -> None:
    onnx_or_skip()
    model = linear_onnx(np.eye(4, 3), np.zeros(3))
    sizes = {"p-1": 12, "p-2": 30, "p-3": 18}
    rng = np.random.default_rng(5)
    for name, n in sizes.items():
        x = rng.normal(size=(n, 4)).astype(np.float32)
        labels = np.argmax(x[:, :3], axis=1)  # every example right
        write_dataset(tmp_path / name, "fl/federated-model", {"x": x, "labels": labels})
        srv = mlos_server(
            cluster="prod",
            discovery=etcd_server.discovery_uri,
            discovery_ttl=TTL,
            instance_id=name,
            datasets_dir=tmp_path / name,
            inference_threads=1,
        )
        assert upload(srv.url, MODEL, {"model.onnx": model}).status_code == 201
    wait_members(etcd_server, set(sizes))
    write_config(axon_home, clusters={"prod": {"discovery": etcd_server.discovery_uri}})

    proc = subprocess.run(
        [sys.executable, "-m", "axon.cli.mlos_main", "federated", "evaluate", MODEL, *TARGET],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    parts = {p["name"]: p["examples"] for p in result["participants"]}
    assert parts == sizes
    aggregate = result["aggregate"]
    assert (aggregate["participants"], aggregate["examples"]) == (3, 60)
    assert aggregate["metrics"]["accuracy"] == 1.0
