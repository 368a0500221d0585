"""``axon status REF --target STORAGE`` and ``axon publish --notify-instance`` against a
shared directory read by a real mlos-core, and against S3 (moto), through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpkg.refs import ModelRef
from tests.fixtures.mlos import ServerFactory
from tests.fixtures.models import InstallModel, MakeModelDir
from tests.fixtures.s3 import S3Server
from tests.helpers import error_lines, run_axon, write_config

pytestmark = pytest.mark.slow


def test_status_of_a_shared_directory(
    installed_model: ModelRef, tmp_path: Path, mlos_server: ServerFactory
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    reader = mlos_server(models_dir=shared)
    ref = str(installed_model)
    absent = run_axon("status", ref, "-t", str(shared), "--notify-instance", reader.url)
    assert absent.code == 3, absent.err  # not "is a storage" (exit 6)
    assert "not present" in absent.out

    quiet = run_axon("publish", ref, "-t", str(shared))
    assert quiet.code == 0, quiet.err
    assert "notified: nobody" in quiet.out and "--notify-instance" in quiet.out
    told = run_axon("publish", ref, "-t", str(shared), "--notify-instance", reader.url)
    assert told.code == 0, told.err
    assert f"{reader.url}: register -> registered" in told.out

    ok = run_axon("status", ref, "-t", str(shared), "--notify-instance", reader.url, "--json")
    assert ok.code == 0, ok.err + ok.out
    data = ok.json()
    assert data["present"] and data["checksums_match"] and data["files_checked"] == 6
    assert data["checked"] == "sizes"
    assert [r["registered"] for r in data["readers"]] == [True]
    human = run_axon("status", ref, "-t", str(shared))
    assert "manifest and sizes match (not re-read; --full-verify hashes them)" in human.out
    assert "checksums match" not in human.out  # nothing was hashed: claim no more
    hashed = run_axon("status", ref, "-t", str(shared), "--full-verify", "--json")
    assert hashed.code == 0 and hashed.json()["checked"] == "sha256", hashed.out + hashed.err

    # A file on the share changed in place (same size): only --full-verify reads it back.
    weights = shared / installed_model.relpath / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"\0" * weights.stat().st_size)
    sizes = run_axon("status", ref, "-t", str(shared))
    assert sizes.code == 0, sizes.out + sizes.err  # sizes still match, and it says only that
    assert "manifest and sizes match (not re-read; --full-verify hashes them)" in sizes.out
    full = run_axon("status", ref, "-t", str(shared), "--full-verify")
    assert full.code == 5, full.out + full.err
    assert "checksums match cache: NO" in full.out
    assert "missing or damaged: model.safetensors" in full.out
    weights.unlink()
    gone = run_axon("status", ref, "-t", str(shared))
    assert gone.code == 5 and "model.safetensors" in gone.out


def test_status_names_readers_that_did_not_register(
    installed_model: ModelRef, tmp_path: Path, mlos_server: ServerFactory, axon_home: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    other = mlos_server()  # reads another models dir: it never registered the model
    write_config(
        axon_home,
        {"team-share": {"type": "network_storage", "storage_path": str(shared),
                        "notify_instances": [other.url]}},
    )  # fmt: skip
    assert run_axon("publish", str(installed_model), "-t", str(shared)).code == 0
    r = run_axon("status", str(installed_model), "-t", "team-share")
    assert r.code == 8, r.out + r.err  # files there and matching, a reader without it
    assert f"reader {other.url}: NOT registered" in r.out


def test_a_reader_that_registered_the_id_from_elsewhere_does_not_count(
    installed_model: ModelRef, tmp_path: Path, mlos_server: ServerFactory
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    reader = mlos_server()  # its own models dir, not the share
    ref = str(installed_model)
    assert run_axon("publish", ref, "-t", reader.url).code == 0  # registered from its own dir
    assert run_axon("publish", ref, "-t", str(shared)).code == 0  # on the share, nobody told
    r = run_axon("status", ref, "-t", str(shared), "--notify-instance", reader.url)
    assert r.code == 8, r.out + r.err  # GET /models/{id} answers 200, but not for this copy
    line = next(x for x in r.out.splitlines() if x.startswith(f"  reader {reader.url}"))
    assert "registered from another path" in line and str(shared) in line
    data = run_axon(
        "status", ref, "-t", str(shared), "--notify-instance", reader.url, "--json"
    ).json()
    assert data["readers"][0]["registered"] is False
    assert data["readers"][0]["other"] == "another path"


def test_status_of_s3(installed_model: ModelRef, s3: S3Server) -> None:
    bucket = s3.bucket()
    url = f"s3://{bucket}/prod"
    env = {"AWS_ENDPOINT_URL": s3.endpoint_url}
    assert run_axon("status", str(installed_model), "-t", url, env=env).code == 3
    assert run_axon("publish", str(installed_model), "-t", url, env=env).code == 0
    r = run_axon("status", str(installed_model), "-t", url, "--json", env=env)
    assert r.code == 0, r.err
    assert r.json()["method"] == "s3" and r.json()["checksums_match"] is True
    assert r.json()["checked"] == "sizes"
    # A blob gone from the bucket: the manifest is there, the bytes are not.
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    blobs = [o["Key"] for o in listed if "/.blobs/sha256/" in o["Key"]]
    client.delete_object(Bucket=bucket, Key=blobs[0])
    broken = run_axon("status", str(installed_model), "-t", url, env=env)
    assert broken.code == 5, broken.out + broken.err
    assert "missing or damaged:" in broken.out


def test_a_reader_serving_another_build_does_not_count(
    installed_model: ModelRef,
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
    s3: S3Server,
    mlos_server: ServerFactory,
) -> None:
    url = f"s3://{s3.bucket()}/prod"
    env = {"AWS_ENDPOINT_URL": s3.endpoint_url}
    reader = mlos_server(models_url=url, s3_endpoint_url=s3.endpoint_url)
    ref = str(installed_model)
    told = run_axon("publish", ref, "-t", url, "--notify-instance", reader.url, env=env)
    assert told.code == 0, told.out + told.err  # the reader pulled build one
    # build two of the same version replaces it in the bucket; the reader is not told
    assert run_axon("uninstall", ref).code == 0
    install_model(make_model_dir(seed=7), ref)
    assert run_axon("publish", ref, "-t", url, "--no-notify", env=env).code == 0
    r = run_axon("status", ref, "-t", url, "--notify-instance", reader.url, "--json", env=env)
    assert r.code == 8, r.out + r.err  # the bucket matches the cache; the reader serves build one
    (state,) = r.json()["readers"]
    assert state["registered"] is False and state["other"] == "another build"
    human = run_axon("status", ref, "-t", url, "--notify-instance", reader.url, env=env)
    assert "registered from another build" in human.out


def test_notify_instance_is_refused_for_instances(installed_model: ModelRef) -> None:
    r = run_axon("publish", str(installed_model), "-t", "127.0.0.1:9", "--notify-instance", "x:1")
    assert r.code == 2 and r.out == ""
    assert "--notify-instance applies to network storage" in error_lines(r.err)[0]


@pytest.mark.parametrize("spec", ["file://", "file://tmp/ra/adhoc"])
def test_publish_to_a_file_url_never_writes_into_the_current_directory(
    installed_model: ModelRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the axon subprocess starts here
    r = run_axon("publish", str(installed_model), "-t", spec)
    assert r.code == 3, r.out + r.err
    assert list(workdir.iterdir()) == []
    assert r.out == "" and "file:///" in error_lines(r.err)[0]
