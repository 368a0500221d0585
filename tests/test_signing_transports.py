"""model.sig travels with the model on the other ways in: SSH, a shared directory an instance
reads, and an S3 bucket an instance syncs from; each instance checks it before the model is
visible, and a refused one leaves the previous version as it was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from axon.cache import Cache
from axon.errors import EXIT_INTEGRITY, EXIT_OK
from axon.publish import PublishOptions, prepare_model
from axon.publish.storage import publish_to_storage
from axon.signing import sign_model
from axon.targets import InstanceTarget, StorageTarget
from mlos_core.cli import model_sources
from mlos_core.core import Core
from mlos_core.settings import Settings
from modelpkg.refs import ModelRef
from modelpkg.signing import SIGNATURE_NAME
from tests.fixtures.s3 import S3Server
from tests.fixtures.signing import KeyPair, make_key, trusted_dir
from tests.helpers import run_axon, write_config


def _home() -> Path:
    return Path(os.environ["AXON_HOME"])


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: make_key(tmp_path / "keys", name) for name in ("alice", "mallory")}


@pytest.fixture
def trusted(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    return trusted_dir(tmp_path / "trusted", keys["alice"])


def _signer(url: str, ref: ModelRef) -> dict[str, str] | None:
    quoted = ref.id.replace("/", "%2F").replace("@", "%40")
    r = httpx.get(f"{url}/v1/models/{quoted}", timeout=5)
    return r.json()["signer"] if r.status_code == 200 else None


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_ssh_publish_carries_and_is_checked(
    sshd, mlos_server, trusted: Path, keys: dict[str, KeyPair], installed_model: ModelRef
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    write_config(_home(), {"remote": sshd.config_target(srv.url, srv.models_dir)})
    final = srv.models_dir / installed_model.relpath
    unsigned = run_axon("publish", str(installed_model), "-t", "remote", "--json")
    assert unsigned.code == EXIT_INTEGRITY
    assert unsigned.json()["results"][0]["bytes_sent"] == 0
    assert not final.exists()
    cache = Cache.from_config()
    sign_model(cache, installed_model, key=keys["alice"].private)
    ok = run_axon("publish", str(installed_model), "-t", "remote", "--json")
    assert ok.code == EXIT_OK, ok.err
    assert (final / SIGNATURE_NAME).read_bytes() == (
        cache.path_for(installed_model) / SIGNATURE_NAME
    ).read_bytes()
    assert (_signer(srv.url, installed_model) or {})["trusted_as"] == "alice.pub"
    before = _digests(final)
    sign_model(cache, installed_model, key=keys["mallory"].private)
    refused = run_axon("publish", str(installed_model), "-t", "remote")
    assert refused.code == EXIT_INTEGRITY and "not trusted" in refused.err
    assert _digests(final) == before  # checked before a byte was copied


def test_shared_directory_readers_check_what_they_are_told_of(
    mlos_server, trusted: Path, keys: dict[str, KeyPair], installed_model: ModelRef, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    srv = mlos_server(models_dir=shared, no_fsync=True, trusted_keys=trusted)
    reader = InstanceTarget(name="reader", endpoint=srv.url, access_method="filesystem",
                            storage_path=str(shared))  # fmt: skip
    storage = StorageTarget("shared", "directory", str(shared), notify_instances=[reader])
    cache = Cache.from_config()
    sign_model(cache, installed_model, key=keys["alice"].private)
    result = publish_to_storage(prepare_model(cache, installed_model), storage, PublishOptions())
    assert result.ok, result.to_dict()
    assert (shared / installed_model.relpath / SIGNATURE_NAME).is_file()
    assert (_signer(srv.url, installed_model) or {})["trusted_as"] == "alice.pub"
    # a writer with only the shared directory puts a model signed by another key there: the
    # instance refuses to register it, and stops serving what it no longer can vouch for
    sign_model(cache, installed_model, key=keys["mallory"].private)
    rogue = publish_to_storage(prepare_model(cache, installed_model), storage, PublishOptions())
    assert not rogue.ok
    assert "not trusted" in str(rogue.to_dict())
    assert _signer(srv.url, installed_model) is None
    ids = {m["id"] for m in httpx.get(f"{srv.url}/models", timeout=5).json()["models"]}
    assert str(installed_model) not in ids


def test_s3_sync_takes_only_signed_models(
    tmp_path: Path, s3: S3Server, trusted: Path, keys: dict[str, KeyPair], make_model_dir,
    install_model,
) -> None:  # fmt: skip
    bucket = s3.bucket()
    url = f"s3://{bucket}/prod"
    storage = StorageTarget("s3", "s3", url, endpoint_url=s3.endpoint_url)
    cache = Cache.from_config()
    refs = {}
    for name, key in (("good", "alice"), ("rogue", "mallory"), ("plain", None)):
        ref = install_model(make_model_dir(name), f"hf/{name}@v1")
        if key is not None:
            sign_model(cache, ref, key=keys[key].private)
        assert publish_to_storage(prepare_model(cache, ref), storage, PublishOptions()).ok
        refs[name] = ref
    settings = Settings(
        models_dir=tmp_path / "models",
        models_url=url,
        s3_endpoint_url=s3.endpoint_url,
        trusted_keys=trusted,
        durable=False,
    )
    (source,) = model_sources(settings)
    core = Core(settings, [source])
    report = source.pull(core)  # type: ignore[attr-defined]
    assert report.fetched == ["hf/good@v1"]
    assert "untrusted" in report.failed["hf/rogue@v1"] or "not trusted" in str(report.failed)
    assert "has no model.sig" in report.failed["hf/plain@v1"]
    entry = core.registry.get("hf/good@v1")
    assert entry is not None and (entry.signer or {})["trusted_as"] == "alice.pub"
    assert core.registry.get("hf/rogue@v1") is None
    assert not (tmp_path / "models/hf/rogue/v1").exists()
    assert not (tmp_path / "models/hf/plain/v1").exists()
    assert core.metrics.signature_refusals == {
        ("s3", "untrusted_signer"): 1,
        ("s3", "signature_required"): 1,
    }


def test_cluster_publish_each_member_checks(
    mlos_server, trusted: Path, keys: dict[str, KeyPair], installed_model: ModelRef
) -> None:
    strict = mlos_server(no_fsync=True, trusted_keys=trusted)
    open_ = mlos_server(no_fsync=True)  # takes anything
    write_config(_home(), {}, clusters={"c": {"instances": [strict.url, open_.url]}})
    unsigned = run_axon("publish", str(installed_model), "-t", "c", "--json")
    assert unsigned.code == 9, unsigned.err  # some members took it, not all
    (cluster,) = unsigned.json()["results"]
    results = {r["target"]: r for r in cluster["instances"]}
    assert results[strict.url]["exit_code"] == EXIT_INTEGRITY
    assert results[strict.url]["error"]["code"] == "signature_required"
    assert results[strict.url]["bytes_sent"] == 0
    assert results[open_.url]["ok"]
    sign_model(Cache.from_config(), installed_model, key=keys["alice"].private)
    signed = run_axon("publish", str(installed_model), "-t", "c", "--json")
    assert signed.code == EXIT_OK, signed.err
    assert (_signer(strict.url, installed_model) or {})["trusted_as"] == "alice.pub"
    assert _signer(open_.url, installed_model) is None  # its namespace needs no signature
