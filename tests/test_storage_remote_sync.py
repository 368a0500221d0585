"""The S3 sync (mlos_core.integrations.s3_sync) in-process: what a sync fetches, skips and
refuses, and when the command line hands the core one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from axon.publish import PublishOptions
from axon.publish.storage import publish_to_storage
from axon.targets import StorageTarget
from mlos_core.cli import model_sources
from mlos_core.core import Core
from mlos_core.integrations.s3_sync import S3Sync
from mlos_core.settings import Settings
from tests.fixtures.models import make_model
from tests.fixtures.s3 import S3Server


def test_sync_fetches_once_and_refuses_corrupt_blobs(tmp_path: Path, s3: S3Server) -> None:
    bucket = s3.bucket()
    url = f"s3://{bucket}/prod"
    storage = StorageTarget("s3", "s3", url, endpoint_url=s3.endpoint_url)
    shared = os.urandom(100_000)
    for version in ("v1", "v2"):
        files = {"w.bin": shared, "c.json": version.encode()}
        model = make_model(tmp_path / version, f"hf/s@{version}", files)
        assert publish_to_storage(model, storage, PublishOptions()).ok
    settings = Settings(
        models_dir=tmp_path / "models",
        models_url=url,
        s3_endpoint_url=s3.endpoint_url,
        durable=False,
    )
    (source,) = model_sources(settings)
    assert isinstance(source, S3Sync)
    core = Core(settings, [source])
    report = source.pull(core)
    assert sorted(report.fetched) == ["hf/s@v1", "hf/s@v2"]
    assert report.bytes_fetched == len(shared) + 2 + 2  # the shared blob fetched once
    assert {e.id for e in core.registry.all()} == {"hf/s@v1", "hf/s@v2"}
    assert (tmp_path / "models/hf/s/v2/w.bin").read_bytes() == shared

    again = source.pull(core)
    assert again.fetched == [] and again.current == 2
    assert again.bytes_fetched == 0

    # v3's blob is replaced in the bucket by other bytes: the instance refuses it.
    bad = make_model(tmp_path / "v3", "hf/s@v3", {"w.bin": b"good bytes"})
    assert publish_to_storage(bad, storage, PublishOptions()).ok
    sha = bad.manifest.files[0].sha256
    s3.client().put_object(Bucket=bucket, Key=f"prod/.blobs/sha256/{sha}", Body=b"evil bytes")
    third = source.pull(core)
    assert "hf/s@v3" in third.failed
    assert "does not match" in third.failed["hf/s@v3"]
    assert core.registry.get("hf/s@v3") is None
    assert not (tmp_path / "models/hf/s/v3").exists()
    assert not core.blobs.has(sha)


def test_no_models_url_means_no_sync(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", durable=False)
    assert model_sources(settings) == []
    assert Core(settings, model_sources(settings)).sources == ()


def test_core_pulls_its_sources_before_it_scans(tmp_path: Path) -> None:
    """startup() and scan() bring in what each source has before registering the models
    dir, so a model a source delivers is registered by that same scan."""
    models = tmp_path / "models"
    pulled: list[int] = []

    class Delivering:  # a source that places one more complete version per pull
        def pull(self, core: Core) -> None:
            version = f"v{len(pulled) + 1}"
            pulled.append(1)
            dest = models / "hf" / "s" / version
            model = make_model(dest, f"hf/s@{version}", {"w.bin": version.encode()})
            (dest / "manifest.yaml").write_text(model.manifest.to_yaml(), encoding="utf-8")

    core = Core(Settings(models_dir=models, durable=False), [Delivering()])
    core.startup()
    assert {e.id for e in core.registry.all()} == {"hf/s@v1"}
    assert core.scan() == (2, 1)  # found v1 and the v2 this scan's pull delivered; 1 new
    assert {e.id for e in core.registry.all()} == {"hf/s@v1", "hf/s@v2"}


def test_a_models_url_without_a_source_is_refused(tmp_path: Path) -> None:
    """Core does not build its own sources: a models URL nobody would pull is an error."""
    settings = Settings(models_dir=tmp_path / "models", models_url="s3://b/p", durable=False)
    with pytest.raises(ValueError, match="no model source"):
        Core(settings)
