"""Blobs brought in by a request that has not linked them into a version yet (a one-shot
upload, an S3 sync) are pinned: deleting another model meanwhile must not collect them."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from mlos_core.core import Core
from mlos_core.settings import Settings
from modelpkg.refs import ModelRef


def _orphan_blob(core: Core, tmp_path: Path, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    tmp = tmp_path / "blob.tmp"
    tmp.write_bytes(data)
    core.blobs.adopt(tmp, sha)  # in the store, linked by no version yet
    return sha


def test_pinned_blob_survives_gc_and_unpinned_one_is_collected(tmp_path: Path) -> None:
    core = Core(Settings(models_dir=tmp_path / "models", durable=False))
    core.startup()
    sha = _orphan_blob(core, tmp_path, b"in flight")
    core.pin([sha])
    core.pin([sha])  # counted: two requests sharing the blob
    core.blobs.gc(core.protected_blobs())
    assert core.blobs.path(sha).exists()
    core.unpin([sha])
    core.blobs.gc(core.protected_blobs())
    assert core.blobs.path(sha).exists(), "still pinned by the second request"
    core.unpin([sha])
    core.blobs.gc(core.protected_blobs())
    assert not core.blobs.path(sha).exists()


def test_deleting_a_model_spares_blobs_of_an_upload_in_flight(tmp_path: Path) -> None:
    core = Core(Settings(models_dir=tmp_path / "models", durable=False))
    core.startup()
    ref = ModelRef.parse("ns/old@v1")
    (core.models_dir / ref.relpath).mkdir(parents=True)
    sha = _orphan_blob(core, tmp_path, b"uploading")
    core.pin([sha])
    asyncio.run(core.delete_model(ref))  # runs garbage collection
    assert core.blobs.path(sha).exists()


def test_a_blob_pinned_while_gc_scans_is_kept(tmp_path: Path) -> None:
    """The pin set is read once before the scan; a blob an upload pins during the scan is
    asked about again, under the pin lock, right before it would be removed."""
    core = Core(Settings(models_dir=tmp_path / "models", durable=False))
    core.startup()
    sha = _orphan_blob(core, tmp_path, b"found already there by an upload")
    protected = core.protected_blobs()  # taken before the upload pins it
    assert sha not in protected
    core.pin([sha])  # the upload pins the blob while the scan runs
    core.gc_blobs(protected)
    assert core.blobs.path(sha).exists()
    core.unpin([sha])
    core.gc_blobs(core.protected_blobs())
    assert not core.blobs.path(sha).exists()
