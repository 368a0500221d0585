"""mlos-core instances that read network storage: two on one shared directory, and
instances pulling from S3 (--models-url), notified by publish_to_storage."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from axon.publish import PublishOptions
from axon.publish.storage import publish_to_storage
from axon.targets import InstanceTarget, StorageTarget
from modelpkg.manifest import MANIFEST_NAME
from tests.fixtures.mlos import ServerFactory
from tests.fixtures.models import make_model
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.slow


def instance(name: str, url: str, storage_path: str | None = None) -> InstanceTarget:
    return InstanceTarget(
        name=name, endpoint=url, access_method="api", storage_path=storage_path, timeout=10.0
    )


def model_ids(url: str) -> set[str]:
    body = httpx.get(f"{url}/models", timeout=10).json()
    return {m["id"] for m in body["models"]}


def test_shared_directory_two_instances(tmp_path: Path, mlos_server: ServerFactory) -> None:
    shared = tmp_path / "shared-models"
    shared.mkdir()
    one, two = mlos_server(models_dir=shared), mlos_server(models_dir=shared)
    model = make_model(tmp_path / "m", "hf/shared@v1", {"w.bin": os.urandom(300_000), "c": b"{}"})
    storage = StorageTarget(
        name="shared",
        storage_type="filesystem",
        location=str(shared),
        notify_instances=[instance("one", one.url), instance("two", two.url)],
    )
    result = publish_to_storage(model, storage, PublishOptions(retries=0))
    assert result.ok, result.to_dict()
    assert [n.registered for n in result.instances] == [True, True]
    assert result.location == str(shared / "hf/shared/v1")
    assert (shared / "hf/shared/v1" / MANIFEST_NAME).is_file()
    for srv in (one, two):
        assert "hf/shared@v1" in model_ids(srv.url)
    # No staging leftovers next to the model: an instance scanning the share sees none.
    assert [p.name for p in (shared / "hf/shared").iterdir()] == ["v1"]


def test_shared_directory_scan_registers_only_complete(
    tmp_path: Path, mlos_server: ServerFactory
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    srv = mlos_server(models_dir=shared)
    model = make_model(tmp_path / "m", "hf/ok@v1", {"a.bin": b"a" * 100})
    storage = StorageTarget(name="s", storage_type="filesystem", location=shared.as_uri())
    assert publish_to_storage(model, storage, PublishOptions()).ok
    # A half-copied model (what a naive cp would leave): manifest there, a file missing.
    half = shared / "hf/half/v1"
    half.mkdir(parents=True)
    (half / MANIFEST_NAME).write_text((shared / "hf/ok/v1" / MANIFEST_NAME).read_text())
    httpx.post(f"{srv.url}/models/scan", timeout=10).raise_for_status()
    assert model_ids(srv.url) == {"hf/ok@v1"}


def test_notify_failure_is_reported_per_instance(
    tmp_path: Path, mlos_server: ServerFactory
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    up = mlos_server(models_dir=shared)
    model = make_model(tmp_path / "m", "hf/n@v1", {"a": b"a"})
    down = instance("down", "http://127.0.0.1:9")  # nothing listens on the discard port
    storage = StorageTarget(
        name="s",
        storage_type="filesystem",
        location=str(shared),
        notify_instances=[instance("up", up.url), down],
    )
    result = publish_to_storage(model, storage, PublishOptions(retries=0))
    assert result.published and not result.ok
    assert result.exit_code == 8  # published, not every instance told
    ok, bad = result.instances
    assert ok.ok and ok.registered
    assert not bad.ok and bad.error is not None and bad.error["target"] == "down"
    data = result.to_dict()
    assert [i["ok"] for i in data["instances"]] == [True, False]


def test_instances_pull_from_s3(tmp_path: Path, s3: S3Server, mlos_server: ServerFactory) -> None:
    bucket = s3.bucket()
    url = f"s3://{bucket}/prod"
    flags = {"models_url": url, "s3_endpoint_url": s3.endpoint_url, "s3_region": s3.region}
    first = make_model(tmp_path / "a", "hf/pull@v1", {"w.bin": os.urandom(2_000_000), "c": b"1"})
    storage = StorageTarget(
        name="s3", storage_type="s3", location=url, endpoint_url=s3.endpoint_url
    )
    assert publish_to_storage(first, storage, PublishOptions()).ok
    # An instance started after the publish fetches it at start-up.
    early = mlos_server(**flags)
    assert model_ids(early.url) == {"hf/pull@v1"}
    got = early.models_dir / "hf/pull/v1/w.bin"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == next(
        f.sha256 for f in first.manifest.files if f.path == "w.bin"
    )
    # A new version is pulled when axon notifies (POST /models/scan) both instances.
    late = mlos_server(**flags)
    second = make_model(tmp_path / "b", "hf/pull@v2", {"w.bin": os.urandom(1000), "c": b"1"})
    storage.notify_instances = [instance("early", early.url), instance("late", late.url)]
    result = publish_to_storage(second, storage, PublishOptions())
    assert result.ok, result.to_dict()
    assert [(n.action, n.registered) for n in result.instances] == [("scan", True)] * 2
    for srv in (early, late):
        assert model_ids(srv.url) == {"hf/pull@v1", "hf/pull@v2"}
        assert (srv.models_dir / "hf/pull/v2/c").read_bytes() == b"1"


def test_s3_notify_fails_when_instance_does_not_read_s3(
    tmp_path: Path, s3: S3Server, mlos_server: ServerFactory
) -> None:
    bucket = s3.bucket()
    plain = mlos_server()  # no --models-url: a scan cannot find the model
    model = make_model(tmp_path / "a", "hf/x@v1", {"a": b"a"})
    storage = StorageTarget(
        name="s3",
        storage_type="s3",
        location=f"s3://{bucket}/p",
        endpoint_url=s3.endpoint_url,
        notify_instances=[instance("plain", plain.url)],
    )
    result = publish_to_storage(model, storage, PublishOptions())
    assert result.published and not result.ok
    assert "--models-url" in result.instances[0].error["hint"]  # type: ignore[index]


def test_instance_starts_when_s3_is_unreachable(
    tmp_path: Path, s3: S3Server, mlos_server: ServerFactory
) -> None:
    from tests.fixtures.common import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    srv = mlos_server(models_url="s3://nowhere/prod", s3_endpoint_url=dead)
    assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
    assert httpx.post(f"{srv.url}/models/scan", timeout=60).status_code == 200
    assert "sync from s3://nowhere/prod" in srv.log()
