"""A model pulled from a peer (docs/relay.md) is checked like an upload: model.sig comes with
the other blobs, and an instance that takes only signed models refuses an unsigned or
untrusted pull before anything is visible."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelpkg import signing
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.signing import SIGNATURE_NAME
from tests.fixtures.mlos import manifest_for
from tests.fixtures.signing import KeyPair, make_key, trusted_dir

FILES = {"weights.bin": b"\x07" * 5000, "config.json": b'{"b": 2}\n'}


def _signed(files: dict[str, bytes], key: KeyPair) -> dict[str, bytes]:
    entries = [FileEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()]
    return {
        **files,
        SIGNATURE_NAME: signing.sign(entries, "m", signing.load_private_key(key.private)),
    }


def _upload(url: str, model_id: str, files: dict[str, bytes]) -> dict[str, Any]:
    by_sha = {hashlib.sha256(b).hexdigest(): b for b in files.values()}
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/uploads", json={"model_id": model_id,
                                        "manifest": manifest_for(model_id, files)})  # fmt: skip
        r.raise_for_status()
        opened = r.json()
        for need in opened["needed"]:
            c.put(f"/v1/uploads/{opened['upload_id']}/blobs/{need['sha256']}",
                  content=by_sha[need["sha256"]]).raise_for_status()  # fmt: skip
        r = c.post(f"/v1/uploads/{opened['upload_id']}/commit")
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer


def _pull(url: str, source: str, model_id: str, digest: str) -> dict[str, Any]:
    """Start a pull and wait until it is final; the status (or the refusal at start)."""
    r = httpx.post(
        f"{url}/v1/pulls",
        json={"model_id": model_id, "manifest_sha256": digest, "sources": [source]},
        timeout=30,
    )
    if r.status_code not in (200, 202):
        return {"state": "refused", "status_code": r.status_code, **r.json()}
    job: dict[str, Any] = r.json()
    deadline = time.monotonic() + 60
    while job.get("pull_id") and job["state"] not in ("committed", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        job = httpx.get(f"{url}/v1/pulls/{job['pull_id']}?wait=5", timeout=30).json()
    return job


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: make_key(tmp_path / "keys", name) for name in ("alice", "mallory")}


def test_pulls_are_checked_like_uploads(peered, tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    trusted = trusted_dir(tmp_path / "trusted", keys["alice"])
    # core-0 takes anything; core-1 takes only what alice signed
    source, puller = peered(2, flags_for={1: {"trusted_keys": trusted}})

    cases = {
        "hf/good@v1": _signed(FILES, keys["alice"]),
        "hf/rogue@v1": _signed(FILES, keys["mallory"]),
        "hf/plain@v1": FILES,
    }
    for model_id, files in cases.items():
        _upload(source.url, model_id, files)

    good = _pull(puller.url, source.url, "hf/good@v1", _digest(source.url, "hf/good@v1"))
    assert good["state"] == "committed", good
    record = httpx.get(f"{puller.url}/v1/models/hf%2Fgood%40v1", timeout=5).json()
    assert record["signer"]["trusted_as"] == "alice.pub"
    assert (puller.models_dir / "hf/good/v1" / SIGNATURE_NAME).is_file()

    rogue = _pull(puller.url, source.url, "hf/rogue@v1", _digest(source.url, "hf/rogue@v1"))
    assert rogue["state"] in ("failed", "refused"), rogue
    assert rogue["code"] == signing.UNTRUSTED, rogue
    plain = _pull(puller.url, source.url, "hf/plain@v1", _digest(source.url, "hf/plain@v1"))
    assert plain["state"] in ("failed", "refused"), plain
    assert plain["code"] == signing.REQUIRED, plain
    for refused in ("rogue", "plain"):
        assert not (puller.models_dir / "hf" / refused / "v1").exists()
        r = httpx.get(f"{puller.url}/v1/models/hf%2F{refused}%40v1", timeout=5)
        assert r.status_code == 404


def _digest(url: str, model_id: str) -> str:
    quoted = model_id.replace("/", "%2F").replace("@", "%40")
    text = httpx.get(f"{url}/v1/models/{quoted}/manifest", timeout=5).text
    return Manifest.from_text(text).digest()
