"""Shared-filesystem and NFS storage targets (written through a local directory), dry runs,
and ``axon publish --target s3://...`` end to end through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from axon.cache import Cache
from axon.publish import PreparedModel, PublishOptions
from axon.publish.storage import publish_to_storage
from axon.targets import StorageTarget
from modelpkg.manifest import MANIFEST_NAME
from modelpkg.refs import ModelRef
from tests.fixtures.models import make_model
from tests.fixtures.s3 import S3Server, keys


def test_nfs_target_through_mount_path(tmp_path: Path) -> None:
    """No NFS client in this kernel: a local directory stands in for the mount."""
    mount = tmp_path / "mnt-mlos-repo"
    mount.mkdir()
    model = make_model(tmp_path / "m", "hf/n@v1", {"w.bin": b"w" * 5000, "sub/c.json": b"{}"})
    storage = StorageTarget(
        name="repo", storage_type="nfs", location="nfs://mlos-repo/models", mount_path=str(mount)
    )
    result = publish_to_storage(model, storage, PublishOptions())
    assert result.ok, result.to_dict()
    assert result.method == "nfs"
    assert (mount / "hf/n/v1/sub/c.json").read_bytes() == b"{}"
    assert (mount / "hf/n/v1" / MANIFEST_NAME).is_file()
    again = publish_to_storage(model, storage, PublishOptions())
    assert again.ok and again.bytes_sent == 0


def test_nfs_not_mounted_is_a_clear_error(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", "hf/n@v1", {"a": b"a"})
    storage = StorageTarget(name="repo", storage_type="nfs", location="nfs://nas-h5/exports/m")
    result = publish_to_storage(model, storage, PublishOptions())
    assert not result.ok and result.error is not None
    assert result.error["type"] == "TargetUnreachableError"
    assert "not mounted" in result.error["message"]
    assert "mount_path" in result.error["hint"] and "nas-h5:/exports/m" in result.error["hint"]
    assert result.exit_code == 7


@pytest.mark.parametrize(
    ("storage_type", "location", "scheme", "method", "writes_to"),
    [
        ("filesystem", "{dir}", "file", "filesystem", "{dir}"),
        ("nfs", "nfs://mlos-repo/models", "nfs", "nfs", "nfs://{dir}"),
        ("s3", "s3://bucket/prefix", "s3", "s3", "s3://bucket/prefix"),
    ],
)
def test_storage_targets_pick_their_transport_by_scheme(
    tmp_path: Path, storage_type: str, location: str, scheme: str, method: str, writes_to: str
) -> None:
    """The one registry builds storage transports too (no boto3 call until first use)."""
    from axon.transports import TRANSPORTS, storage_transport_for

    storage = StorageTarget(
        name="repo",
        storage_type=storage_type,
        location=location.format(dir=tmp_path),
        mount_path=str(tmp_path) if scheme == "nfs" else None,
    )
    assert storage.scheme == scheme and scheme in TRANSPORTS
    with storage_transport_for(storage, {"max_concurrency": 2}) as transport:
        assert transport.method == method
        assert transport.describe() == writes_to.format(dir=tmp_path)


def test_builders_refuse_targets_their_transport_cannot_reach(tmp_path: Path) -> None:
    """S3 is network storage, never an instance's access method; SSH writes no storage."""
    from axon.errors import ConfigError
    from axon.targets import InstanceTarget
    from axon.transports import transport_class, transport_for

    instance = InstanceTarget(name="i1", endpoint="http://127.0.0.1:9", access_method="s3")
    with pytest.raises(ConfigError) as err:
        transport_for(instance)
    assert err.value.target == "i1" and "'s3'" in str(err.value)
    storage = StorageTarget(name="repo", storage_type="filesystem", location=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        transport_class("ssh").from_storage(storage)
    assert err.value.target == "repo" and "file://" in str(err.value)


def test_dry_run_changes_nothing(tmp_path: Path, s3: S3Server) -> None:
    bucket = s3.bucket()
    model = make_model(tmp_path / "m", "hf/d@v1", {"a": b"a" * 10, "b": b"b" * 20})
    storage = StorageTarget(
        name="s3", storage_type="s3", location=f"s3://{bucket}/p", endpoint_url=s3.endpoint_url
    )
    dry = publish_to_storage(model, storage, PublishOptions(dry_run=True))
    assert dry.plans is not None and dry.plans[0].bytes_to_send == 30
    assert keys(s3, bucket) == []
    assert publish_to_storage(model, storage, PublishOptions()).ok
    again = publish_to_storage(model, storage, PublishOptions(dry_run=True))
    assert again.plans is not None and again.plans[0].unchanged
    assert again.plans[0].bytes_to_send == 0

    shared = tmp_path / "shared"
    shared.mkdir()
    fs = StorageTarget(name="fs", storage_type="filesystem", location=str(shared))
    plan = publish_to_storage(model, fs, PublishOptions(dry_run=True))
    assert plan.plans is not None and plan.plans[0].files_to_send == 2
    assert list(shared.iterdir()) == []


@pytest.mark.slow
def test_cli_publish_to_s3_url(
    tmp_path: Path, s3: S3Server, make_model_dir: object, install_model: object
) -> None:
    ref = install_model(make_model_dir(), "hf/cli-s3@v1")  # type: ignore[operator]
    bucket = s3.bucket()
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint_url}  # boto3 reads it
    out = subprocess.run(
        [sys.executable, "-m", "axon", "publish", str(ref), "-t", f"s3://{bucket}/m", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    result = json.loads(out.stdout)["results"][0]
    assert result["ok"] and result["method"] == "s3"
    assert f"m/hf/cli-s3/v1/{MANIFEST_NAME}" in keys(s3, bucket)


def test_cache_file_vanishing_mid_publish_is_a_clean_failure(
    installed_model: ModelRef, axon_home: Path, tmp_path: Path
) -> None:
    # regression: an OSError reading the cache escaped as an "unexpected error" (exit 1)
    cache = Cache.from_config()
    model = cache.get(installed_model)
    manifest = cache.checked_manifest(installed_model)
    prepared = PreparedModel(installed_model, manifest, model.path, manifest.total_size)
    shared = tmp_path / "shared"
    shared.mkdir()
    biggest = max(manifest.files, key=lambda f: f.size)
    (model.path / biggest.path).unlink()  # gone after validation, before the copy
    storage = StorageTarget(name=str(shared), storage_type="filesystem", location=str(shared))
    result = publish_to_storage(prepared, storage, PublishOptions(retries=0))
    assert not result.published and result.error is not None
    assert result.error["exit_code"] == 7 and biggest.path in result.error["message"]
    assert not (shared / installed_model.relpath).exists()
