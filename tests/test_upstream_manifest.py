"""A model the upstream Go axon installed (manifest with unquoted ``created:``/``updated:``
timestamps, floats, ``size: 0`` and empty sha256, a ``<ns>-<name>-<ver>.axon`` package beside
the files) is published over every transport and reinstalled with every field it wrote kept
in meaning, and without the package file becoming a model file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from axon.errors import EXIT_OK
from axon.publish import publish
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef
from tests.fixtures.mlos import ServerFactory
from tests.fixtures.models import write_model_dir
from tests.fixtures.upstream_entry import place_like_upstream
from tests.helpers import run_axon, write_config

# What yaml.v3 writes for upstream's types.Manifest (4-space indent, time.Time as RFC 3339
# plain scalars, float64 2.0 as 2, omitempty fields left out), after an install of
# `up/tiny-bert` (no version: upstream's cache dir is `latest`, the registry's manifest says
# 1.0.0). It lists what the registry named, with upstream's usual size 0 and sha256 "",
# while the directory holds every file of the package.
UPSTREAM_MANIFEST = """\
apiVersion: v1
kind: Model
metadata:
    name: tiny-bert
    namespace: up
    version: 1.0.0
    description: 'Model from Hugging Face: up/tiny-bert'
    license: Unknown
    created: 0001-01-01T00:00:00Z
    updated: 2026-05-01T10:20:30.123456789+02:00
    tags:
        - nlp
spec:
    framework:
        name: PyTorch
        version: 2.0.0
    format:
        type: pytorch
        execution_format: safetensors
        files:
            - path: model.safetensors
              size: 0
              sha256: ""
    io:
        inputs:
            - name: input_ids
              dtype: int64
              shape:
                - -1
                - -1
              preprocessing:
                type: tokenization
                tokenizer: tokenizer.json
                tokenizer_type: bert
                config:
                    mean: 0.5
                    max_length: 512
        outputs:
            - name: last_hidden_state
              dtype: float32
              shape:
                - -1
                - -1
                - 768
    requirements:
        compute:
            cpu:
                min_cores: 2
                recommended_cores: 4
            memory:
                min_gb: 2
                recommended_gb: 4.5
        storage:
            min_gb: 0.5
            recommended_gb: 1
distribution:
    package:
        url: https://registry.example/up/tiny-bert/1.0.0/up-tiny-bert-1.0.0.axon
        size: 0
        sha256: ""
    registry:
        url: https://registry.example
        namespace: up
"""

CACHE_REF = ModelRef("up", "tiny-bert", "latest")  # the directory upstream installed into
PACKAGE = "up-tiny-bert-latest.axon"
MODEL_FILES = (
    "1_Pooling/config.json",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


def _home() -> Path:
    return Path(os.environ["AXON_HOME"])


def upstream_cache_dir(root: Path) -> Path:
    """An upstream cache entry for ``up/tiny-bert`` (as ``axon install up/tiny-bert`` leaves
    it) under the models dir ``root``; returns the model dir."""
    model = root.joinpath(*CACHE_REF.parts)
    src = write_model_dir(model.parent / ".src")
    model.mkdir(parents=True)
    files = {rel: (src / rel).read_bytes() for rel in MODEL_FILES}
    place_like_upstream(
        model,
        CACHE_REF,
        files,
        UPSTREAM_MANIFEST,
        installed_at="2026-05-01T10:20:31+02:00",
        package=True,  # the package the files came from
    )
    return model


def _plain(text: str) -> Any:
    """What PyYAML itself makes of a manifest's text (timestamps as datetimes)."""
    return yaml.safe_load(text)


def _same_meaning(written: str, *, version: str | None = None) -> None:
    """``written`` (a manifest we wrote) says what UPSTREAM_MANIFEST says: every field
    upstream wrote is there with the same value and YAML type (ours may add fields, such as
    detected execution files), the files now with real sizes and digests. ``version``: the
    one expected, None for any."""
    ours, theirs = _plain(written), _plain(UPSTREAM_MANIFEST)
    files = ours["spec"]["format"].pop("files")
    theirs["spec"]["format"].pop("files")
    assert sorted(f["path"] for f in files) == list(MODEL_FILES)
    assert all(f["size"] > 0 and len(f["sha256"]) == 64 for f in files)
    theirs["metadata"]["version"] = version or ours["metadata"]["version"]
    _holds(ours, theirs, "")
    # the timestamps are YAML timestamps again, written as upstream writes them
    assert "\n  created: 0001-01-01T00:00:00Z\n" in written
    assert "\n  updated: 2026-05-01T10:20:30.123456789+02:00\n" in written


def _holds(ours: Any, theirs: Any, where: str) -> None:
    """Every key of ``theirs`` is in ``ours`` with an equal value of the same type."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), where
        for key, value in theirs.items():
            assert key in ours, f"{where}.{key} is gone"
            _holds(ours[key], value, f"{where}.{key}")
        return
    assert type(ours) is type(theirs) and ours == theirs, (where, ours, theirs)


# ---- the manifest on its own ---------------------------------------------------------------
def test_upstream_timestamps_are_text_json_carries() -> None:
    manifest = Manifest.from_text(UPSTREAM_MANIFEST)
    created = manifest.metadata["created"]
    assert isinstance(created, str) and created == "0001-01-01T00:00:00Z"
    carried = json.loads(json.dumps(manifest.data))  # no default=: plain JSON types only
    assert carried["metadata"]["updated"] == "2026-05-01T10:20:30.123456789+02:00"
    assert json.loads(manifest.as_uploaded("up", "tiny-bert", "latest").to_json())
    # through JSON (what mlos-core receives) and back to YAML: timestamps again
    again = Manifest(carried).to_yaml()
    assert "  created: 0001-01-01T00:00:00Z\n" in again
    assert _plain(again) == _plain(UPSTREAM_MANIFEST)
    assert Manifest(carried).digest() == manifest.digest()


def test_datetimes_from_a_callers_own_parse_become_rfc3339_text() -> None:
    manifest = Manifest(yaml.safe_load(UPSTREAM_MANIFEST))
    assert manifest.metadata["created"] == "0001-01-01T00:00:00Z"
    assert manifest.metadata["updated"] == "2026-05-01T10:20:30.123456+02:00"
    assert "created: 0001-01-01T00:00:00Z" in manifest.to_yaml()
    json.dumps(manifest.data)


# ---- publish over every transport ---------------------------------------------------------
TRANSPORTS = ["api", "filesystem", "ssh", "storage-dir", "s3"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_publish_an_upstream_installed_model(
    transport: str, request: pytest.FixtureRequest, mlos_server: ServerFactory, tmp_path: Path
) -> None:
    upstream_cache_dir(_home() / "cache" / "models")
    srv = mlos_server(no_fsync=True)
    target, read_back = _target(transport, request, srv, tmp_path)
    result = publish(CACHE_REF, target)
    assert result.ok, result.to_dict()
    written = read_back(CACHE_REF)
    _same_meaning(written)
    stored = _plain(written)["spec"]["format"]["files"]
    assert sorted(f["path"] for f in stored) == list(MODEL_FILES)  # not the package


def _target(
    transport: str, request: pytest.FixtureRequest, srv: Any, tmp_path: Path
) -> tuple[str, Any]:
    """(the --target to give, a function reading the manifest the target stored)."""

    def on_disk(root: Path) -> Any:
        return lambda ref: (root / ref.relpath / "manifest.yaml").read_text()

    if transport == "api":
        return srv.url, on_disk(srv.models_dir)
    if transport == "filesystem":
        target = {
            "endpoint": srv.url,
            "access_method": "filesystem",
            "storage_path": str(srv.models_dir),
        }
        write_config(_home(), {"core": target})
        return "core", on_disk(srv.models_dir)
    if transport == "ssh":
        sshd = request.getfixturevalue("sshd")
        write_config(_home(), {"core": sshd.config_target(srv.url, srv.models_dir)})
        return "core", on_disk(srv.models_dir)
    if transport == "storage-dir":
        shared = tmp_path / "shared"
        shared.mkdir()
        return str(shared), on_disk(shared)
    s3 = request.getfixturevalue("s3")
    bucket = "upstream-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    s3.client().create_bucket(Bucket=bucket)
    storage = {
        "type": "network_storage",
        "storage_type": "s3",
        "storage_path": f"s3://{bucket}/models",
        "endpoint_url": s3.endpoint_url,
    }
    write_config(_home(), {"bucket": storage})

    def from_s3(ref: ModelRef) -> str:
        got = s3.client().get_object(Bucket=bucket, Key=f"models/{ref.relpath}/manifest.yaml")
        return str(got["Body"].read().decode())

    return "bucket", from_s3


# ---- the cache entry itself ---------------------------------------------------------------
def test_verify_an_upstream_entry_checks_what_it_can() -> None:
    model = upstream_cache_dir(_home() / "cache" / "models")
    run = run_axon("verify", str(CACHE_REF))
    assert run.code == EXIT_OK, run.err
    assert "6 files present, written by the upstream axon: 6 of them without" in run.out
    report = run_axon("verify", str(CACHE_REF), "--json").json()
    assert report["upstream"] and report["extra"] == [] and len(report["unchecked"]) == 6
    assert (model / PACKAGE).is_file()  # upstream's package: not a file of the model
    (model / "model.safetensors").unlink()  # the one its manifest lists
    gone = run_axon("verify", str(CACHE_REF), "--json")
    assert gone.code == 5 and gone.json()["missing"] == ["model.safetensors"]
    assert (model / "manifest.yaml").read_text() == UPSTREAM_MANIFEST  # left as upstream's


def test_list_and_info_count_an_upstream_entrys_files() -> None:
    model = upstream_cache_dir(_home() / "cache" / "models")
    size = sum((model / rel).stat().st_size for rel in MODEL_FILES)
    listed = run_axon("list", "--json")
    assert listed.code == EXIT_OK, listed.err
    (entry,) = listed.json()["models"]
    assert (entry["ref"], entry["files"], entry["size"]) == (str(CACHE_REF), 6, size)
    info = run_axon("info", str(CACHE_REF))
    assert info.code == EXIT_OK, info.err
    assert "in 6 files" in info.out and "1_Pooling/config.json" in info.out
    assert PACKAGE not in info.out


def test_an_entry_of_ours_still_has_extra_files(make_model_dir: Any, install_model: Any) -> None:
    ref = install_model(make_model_dir(), "hf/tiny-bert@v1")
    stray = _home() / "cache" / "models" / ref.relpath / "notes.txt"
    stray.write_text("not in the manifest")
    run = run_axon("verify", str(ref), "--json")
    assert run.code == 5 and run.json()["extra"] == ["notes.txt"]


# ---- reinstalling an upstream cache dir ----------------------------------------------------
@pytest.mark.parametrize("as_ref", [None, "up/tiny-bert@v2"])
def test_reinstall_leaves_the_upstream_package_behind(tmp_path: Path, as_ref: str | None) -> None:
    source = upstream_cache_dir(tmp_path / "upstream" / "models")
    args = ["install", str(source), "--json"] + (["--as", as_ref] if as_ref else [])
    run = run_axon(*args)
    assert run.code == EXIT_OK, run.err
    got = run.json()
    assert got["files"] == len(MODEL_FILES)
    model = Path(got["path"])
    assert sorted(p.name for p in model.iterdir()) == sorted(
        {f.split("/")[0] for f in MODEL_FILES} | {"manifest.yaml", ".axon_metadata.json"}
    )
    expected = ModelRef.parse(as_ref).version if as_ref else "1.0.0"
    _same_meaning((model / "manifest.yaml").read_text(), version=expected)
    verify = run_axon("verify", got["ref"])
    assert verify.code == EXIT_OK, verify.err


def test_an_archive_the_manifest_lists_is_a_model_file(tmp_path: Path) -> None:
    """A file named like upstream's package that the source's manifest lists is the model's."""
    source = upstream_cache_dir(tmp_path / "upstream" / "models")
    manifest = Manifest.load(source)
    digest = hashlib.sha256((source / PACKAGE).read_bytes()).hexdigest()
    size = (source / PACKAGE).stat().st_size
    from modelpkg.manifest import FileEntry

    listed = [*manifest.files, FileEntry(PACKAGE, size, digest)]
    (source / "manifest.yaml").write_text(manifest.with_files(listed).to_yaml())
    run = run_axon("install", str(source), "--json")
    assert run.code == EXIT_OK, run.err
    assert (Path(run.json()["path"]) / PACKAGE).is_file()


def test_axon_archive_of_an_upstream_dir_installs(tmp_path: Path) -> None:
    """The package file itself (a tar.gz of the files) is an install source."""
    source = upstream_cache_dir(tmp_path / "upstream" / "models")
    archive = tmp_path / PACKAGE
    archive.write_bytes((source / PACKAGE).read_bytes())
    run = run_axon("install", str(archive), "--as", "up/tiny-bert@pkg", "--json")
    assert run.code == EXIT_OK, run.err
    assert run.json()["files"] == len(MODEL_FILES)
