"""mlos-core takes files another tool placed in a model's directory (the upstream Go axon's
publish copies its cache dir there) into its blob store when an upload needs their bytes:
hashed first, never taken at a manifest's word, never through a symbolic link.

The placed directories are written in the shape the binary leaves them
(:mod:`tests.fixtures.upstream_entry`; tests/interop checks that shape against the real binary).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelpkg.refs import ModelRef
from tests.fixtures.mlos import ALPHA, TOKENS, manifest_for, upload_resumable
from tests.fixtures.upstream_entry import place_like_upstream

REF = ModelRef.parse("alpha/placed@v1")


def model_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "bert"}',
        "model.safetensors": os.urandom(64 * 1024),
        "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    }


def open_upload(url: str, files: dict[str, bytes], **kw: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/v1/uploads",
        json={"model_id": REF.id, "manifest": manifest_for(REF.id, files)},
        timeout=30,
        **kw,
    )
    r.raise_for_status()
    answer: dict[str, Any] = r.json()
    return answer


def test_an_upload_does_not_ask_for_bytes_placed_in_the_models_dir(
    mlos_server: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    files = model_files()
    place_like_upstream(models / REF.relpath, REF, files)
    srv = mlos_server.start(models_dir=models)
    opened = open_upload(srv.url, files)
    assert opened["needed"] == [] and opened["have"] == sorted(files)
    answer = upload_resumable(srv.url, REF.id, files)
    assert answer["opened"]["needed"] == []
    final = models / REF.relpath
    on_disk = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert on_disk == {*files, "manifest.yaml"}  # ours now: upstream's bookkeeping is gone
    assert all((final / p).read_bytes() == b for p, b in files.items())
    for data in files.values():
        sha = hashlib.sha256(data).hexdigest()
        assert (models / ".mlos/blobs/sha256" / sha[:2] / sha).read_bytes() == data


def test_placed_bytes_are_hashed_not_trusted(mlos_server: Any, tmp_path: Path) -> None:
    """A placed file of the right size but other bytes, and a symbolic link to the right
    bytes, are both asked for; the placed manifest claims the right sha256s, in vain."""
    models = tmp_path / "models"
    files = model_files()
    final = models / REF.relpath
    placed = {**files, "model.safetensors": os.urandom(len(files["model.safetensors"]))}
    place_like_upstream(final, REF, placed, manifest=yaml.safe_dump(manifest_for(REF.id, files)))
    (final / "config.json").unlink()
    (tmp_path / "elsewhere.json").write_bytes(files["config.json"])
    (final / "config.json").symlink_to(tmp_path / "elsewhere.json")
    srv = mlos_server.start(models_dir=models)
    opened = open_upload(srv.url, files)
    assert sorted(n["paths"][0] for n in opened["needed"]) == ["config.json", "model.safetensors"]
    assert opened["have"] == ["tokenizer/vocab.txt"]
    upload_resumable(srv.url, REF.id, files)
    assert all((final / p).read_bytes() == b for p, b in files.items())
    assert not (final / "config.json").is_symlink()


def test_with_tenants_placed_bytes_count_as_sent_by_the_namespace_owner(
    mlos_server: Any, tmp_path: Path
) -> None:
    """With tokens, the tenant that owns the model's namespace gets the placed bytes (they
    lie in its own model's directory) and may commit without sending them."""
    models = tmp_path / "models"
    files = model_files()
    place_like_upstream(models / REF.relpath, REF, files)
    srv = mlos_server.start(models_dir=models, tokens=TOKENS)
    answer = upload_resumable(srv.url, REF.id, files, headers=ALPHA)
    assert answer["opened"]["needed"] == [] and answer["status"] == "success"
