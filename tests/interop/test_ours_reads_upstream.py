"""Our axon on cache entries the upstream Go axon wrote (with the binary itself: it installs
from a registry on loopback): ``list``, ``info``, ``verify`` and ``publish`` to every
transport (a directory, SSH, an mlos-core's API, S3).

Two entries: one whose registry listed every file with its size and sha256 (``all``), and
one listed as upstream's Hugging Face adapter lists them (``first``: one file, size 0, no
sha256) while the directory holds the whole package.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpkg.refs import ModelRef
from tests.fixtures.models import model_files
from tests.helpers import run_axon
from tests.interop.conftest import SharedConfig, UpstreamInstall

LISTED = ["all", "first"]
#: upstream's "unknown" time, written unquoted: a YAML timestamp
ZERO_TIME = dt.datetime(1, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(params=LISTED)
def entry(
    request: pytest.FixtureRequest, upstream_install: UpstreamInstall, tmp_path: Path
) -> tuple[ModelRef, dict[str, bytes], Path]:
    """(ref, its files, its cache dir) installed by the upstream binary."""
    ref = ModelRef.parse(f"acme/tiny-{request.param}@v1")
    files = model_files(tmp_path)
    return ref, files, upstream_install(ref, files, listed=request.param)


def as_time(value: Any) -> dt.datetime:
    """A manifest's time as written by either tool: a YAML timestamp or RFC 3339 text."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def check_published(manifest_text: str, ref: ModelRef, files: dict[str, bytes]) -> None:
    """The manifest a publish wrote: every model file with its real size and sha256 (no
    upstream bookkeeping), and upstream's fields unchanged in meaning."""
    doc = yaml.safe_load(manifest_text)
    listed = {f["path"]: (f["size"], f["sha256"]) for f in doc["spec"]["format"]["files"]}
    assert listed == {p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()}
    meta = doc["metadata"]
    assert (meta["namespace"], meta["name"], meta["version"]) == (
        ref.namespace,
        ref.name,
        ref.version,
    )
    assert meta["description"] == "served on loopback" and meta["license"] == "Apache-2.0"
    assert meta["tags"] == ["interop"]
    assert as_time(meta["created"]) == ZERO_TIME and as_time(meta["updated"]) == ZERO_TIME
    assert doc["spec"]["framework"] == {"name": "PyTorch", "version": "2.1.0"}
    assert doc["spec"]["format"]["execution_format"] == "safetensors"  # upstream set it


def test_the_binary_writes_the_shapes_the_other_tests_copy(
    entry: tuple[ModelRef, dict[str, bytes], Path],
) -> None:
    """What tests/fixtures/upstream_entry.py copies, checked against the binary: the package
    file and metadata beside the files, unquoted zero timestamps, 4-space indentation."""
    ref, files, path = entry
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert names == set(files) | {"manifest.yaml", ".axon_metadata.json", ref.archive_name}
    text = (path / "manifest.yaml").read_text()
    assert "\n    created: 0001-01-01T00:00:00Z\n" in text
    meta = json.loads((path / ".axon_metadata.json").read_text())
    assert {k: meta[k] for k in ("namespace", "name", "version")} == {
        "namespace": ref.namespace,
        "name": ref.name,
        "version": ref.version,
    }
    as_time(meta["installed_at"])


def test_list_info_verify_an_upstream_entry(
    entry: tuple[ModelRef, dict[str, bytes], Path],
) -> None:
    ref, files, path = entry
    listed = run_axon("list", "--json")
    assert listed.code == 0, listed.err
    (model,) = [m for m in listed.json()["models"] if m["ref"] == str(ref)]
    assert model["path"] == str(path)
    assert (model["files"], model["size"]) == (len(files), sum(map(len, files.values())))
    info = run_axon("info", str(ref))
    assert info.code == 0, info.err
    for rel in files:
        assert rel in info.out
    assert ref.archive_name not in info.out
    verify = run_axon("verify", str(ref))
    assert verify.code == 0, verify.out + verify.err


def test_publish_an_upstream_entry_to_a_directory(
    entry: tuple[ModelRef, dict[str, bytes], Path], tmp_path: Path
) -> None:
    ref, files, _path = entry
    shared = tmp_path / "shared"
    shared.mkdir()
    run = run_axon("publish", str(ref), "-t", str(shared), "--json")
    assert run.code == 0, run.err
    final = shared / ref.relpath
    check_published((final / "manifest.yaml").read_text(), ref, files)
    on_disk = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {"manifest.yaml"}
    assert all((final / p).read_bytes() == b for p, b in files.items())


def test_publish_an_upstream_entry_over_ssh(
    entry: tuple[ModelRef, dict[str, bytes], Path],
    sshd: Any,
    shared_config: SharedConfig,
    tmp_path: Path,
) -> None:
    ref, files, _path = entry
    models = tmp_path / "ssh-models"
    models.mkdir()
    shared_config({"remote": sshd.config_target("http://127.0.0.1:9", models)})
    run = run_axon("publish", str(ref), "-t", "remote", "--no-notify", "--json")
    assert run.code == 0, run.err
    final = models / ref.relpath
    check_published((final / "manifest.yaml").read_text(), ref, files)
    assert all((final / p).read_bytes() == b for p, b in files.items())


def test_publish_an_upstream_entry_through_the_api(
    entry: tuple[ModelRef, dict[str, bytes], Path], mlos_server: Any
) -> None:
    ref, files, _path = entry
    srv = mlos_server.start()
    run = run_axon("publish", str(ref), "-t", srv.url, "--json")
    assert run.code == 0, run.out + run.err
    final = srv.models_dir / ref.relpath
    check_published((final / "manifest.yaml").read_text(), ref, files)
    assert all((final / p).read_bytes() == b for p, b in files.items())


def test_publish_an_upstream_entry_to_s3(
    entry: tuple[ModelRef, dict[str, bytes], Path], s3: Any
) -> None:
    ref, files, _path = entry
    bucket = s3.bucket()
    run = run_axon(
        "publish",
        str(ref),
        "-t",
        f"s3://{bucket}/m",
        "--json",
        env={"AWS_ENDPOINT_URL": s3.endpoint_url},
    )
    assert run.code == 0, run.out + run.err
    client = s3.client()
    body = client.get_object(Bucket=bucket, Key=f"m/{ref.relpath}/manifest.yaml")["Body"].read()
    check_published(body.decode(), ref, files)
    for data in files.values():
        key = f"m/.blobs/sha256/{hashlib.sha256(data).hexdigest()}"
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_our_install_of_an_upstream_cache_dir_takes_the_model_files_only(
    entry: tuple[ModelRef, dict[str, bytes], Path], tmp_path: Path
) -> None:
    """``axon install DIR`` of a directory upstream's cache holds: the model files, not its
    ``.axon`` package or ``.axon_metadata.json``; named from its manifest or with --as."""
    ref, files, path = entry
    copy = ModelRef.parse(f"{ref.namespace}/copy-of-{ref.name}@v2")
    run = run_axon("install", str(path), "--as", str(copy), "--json")
    assert run.code == 0, run.out + run.err
    shown = run_axon("info", str(copy), "--json")
    assert shown.code == 0, shown.err
    verify = run_axon("verify", str(copy))
    assert verify.code == 0, verify.out + verify.err
    installed = Path(shown.json()["path"])
    names = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    assert names - {"manifest.yaml", ".axon_metadata.json"} == set(files)
