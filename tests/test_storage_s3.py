"""Publishing to S3 against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from axon.errors import (
    AuthenticationError,
    BucketNotFoundError,
    TargetUnreachableError,
    TransportError,
)
from axon.publish import PreparedModel, PublishOptions
from axon.publish.storage import StorageResult, publish_to_storage
from axon.targets import StorageTarget
from axon.transports.s3 import S3Transport
from modelpkg.layout import S3_BLOBS as BLOBS
from modelpkg.refs import ModelRef
from modelpkg.s3 import S3Store
from tests.fixtures.common import free_port
from tests.fixtures.models import make_model
from tests.fixtures.s3 import S3Server, keys

MiB = 1024 * 1024
SMALL = {"multipart_threshold": 5 * MiB, "part_size": 5 * MiB, "max_concurrency": 3}


def publish(
    model: PreparedModel, s3: S3Server, bucket: str, *, prefix: str = "models", **opts: Any
) -> StorageResult:
    storage = StorageTarget(
        "shared-s3", "s3", f"s3://{bucket}/{prefix}", endpoint_url=s3.endpoint_url
    )
    options = PublishOptions(retries=opts.pop("retries", 1), backoff=0.05, s3=SMALL)
    return publish_to_storage(model, storage, options)


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.bucket()


def test_layout_blobs_then_manifest(tmp_path: Path, s3: S3Server, bucket: str) -> None:
    model = make_model(
        tmp_path / "m", "hf/tiny@v1", {"config.json": b"{}", "sub/w.bin": b"w" * 1000, "dup": b"{}"}
    )
    result = publish(model, s3, bucket)
    assert result.ok, result.to_dict()
    assert result.location == f"s3://{bucket}/models/hf/tiny/v1"
    shas = sorted({f.sha256 for f in model.manifest.files})
    assert keys(s3, bucket) == sorted(
        [f"models/{BLOBS}/{sha}" for sha in shas] + ["models/hf/tiny/v1/manifest.yaml"]
    )
    assert result.files_sent == 3 and result.bytes_sent == 1002  # "dup" shares config's blob
    store = S3Store(bucket, "models", endpoint_url=s3.endpoint_url)
    assert store.list_models() == [model.ref]
    assert store.read_manifest(model.ref) == model.manifest
    entry = next(f for f in model.manifest.files if f.path == "sub/w.bin")
    store.download_blob(entry, tmp_path / "w.bin")
    assert (tmp_path / "w.bin").read_bytes() == b"w" * 1000


def test_multipart_large_file(tmp_path: Path, s3: S3Server, bucket: str) -> None:
    big = os.urandom(12 * MiB + 123)  # 3 parts of 5 MiB at most
    model = make_model(tmp_path / "m", "hf/big@v1", {"big.bin": big, "c.json": b"{}"})
    result = publish(model, s3, bucket)
    assert result.ok, result.to_dict()
    sha = hashlib.sha256(big).hexdigest()
    head = s3.client().head_object(Bucket=bucket, Key=f"models/{BLOBS}/{sha}")
    assert head["ContentLength"] == len(big)
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # a 3-part multipart upload
    body = s3.client().get_object(Bucket=bucket, Key=f"models/{BLOBS}/{sha}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
    assert result.bytes_sent == len(big) + 2


def test_multipart_refuses_file_changed_since_hashing(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    model = make_model(tmp_path / "m", "hf/big@v1", {"big.bin": os.urandom(11 * MiB)})
    (tmp_path / "m" / "big.bin").write_bytes(os.urandom(11 * MiB))  # changed after hashing
    result = publish(model, s3, bucket)
    assert not result.ok
    assert result.error is not None and result.error["type"] == "IntegrityError"
    assert keys(s3, bucket) == []  # no blob, no manifest
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_dedupe_republish_and_shared_files(tmp_path: Path, s3: S3Server, bucket: str) -> None:
    shared = os.urandom(6 * MiB)
    first = make_model(tmp_path / "a", "hf/a@v1", {"w.bin": shared, "cfg.json": b'{"a": 1}'})
    assert publish(first, s3, bucket).bytes_sent == len(shared) + 8
    again = publish(first, s3, bucket)
    assert again.ok and again.bytes_sent == 0 and again.files_sent == 0
    second = make_model(tmp_path / "b", "hf/b@v1", {"w.bin": shared, "cfg.json": b'{"b": 22}'})
    result = publish(second, s3, bucket)
    assert result.ok
    assert result.bytes_sent == 9  # only the new config
    assert result.files_sent == 1 and result.files_skipped == 1


def test_reader_never_sees_partial_version(tmp_path: Path, s3: S3Server, bucket: str) -> None:
    """A reader polling during publishes: a listed version always has all its blobs, and a
    reader of v1 keeps working while v1 is re-published with new content."""
    files = {f"f{i}.bin": os.urandom(200_000) for i in range(12)}
    files["big.bin"] = os.urandom(11 * MiB)
    model = make_model(tmp_path / "m", "hf/cp@v1", files)
    store = S3Store(bucket, "models", endpoint_url=s3.endpoint_url)
    stop = threading.Event()
    observations: list[tuple[int, list[str]]] = []

    def reader() -> None:
        while not stop.is_set():
            for ref in store.list_models():
                manifest = store.read_manifest(ref)
                assert manifest is not None
                missing = [f.path for f in manifest.files if not store.has_blob(f)]
                observations.append((len(manifest.files), missing))

    thread = threading.Thread(target=reader)
    errors: list[BaseException] = []
    thread.start()
    try:
        assert publish(model, s3, bucket).ok
        files2 = {**files, "big.bin": os.urandom(11 * MiB)}  # v1 again, new content
        model2 = make_model(tmp_path / "m2", "hf/cp@v1", files2)
        old = next(f for f in model.manifest.files if f.path == "big.bin")
        assert publish(model2, s3, bucket).ok
        store.download_blob(old, tmp_path / "old.bin")  # the previous version still readable
        assert (tmp_path / "old.bin").read_bytes() == files["big.bin"]
    except BaseException as exc:  # pragma: no cover - reported below
        errors.append(exc)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert observations, "the reader saw the committed version at least once"
    assert all(not missing for _, missing in observations), observations
    assert {n for n, _ in observations} == {13}


def test_missing_bucket(tmp_path: Path, s3: S3Server) -> None:
    model = make_model(tmp_path / "m", "hf/x@v1", {"a": b"a"})
    result = publish(model, s3, "no-such-bucket-axon")
    assert not result.ok and result.error is not None
    assert result.error["type"] == BucketNotFoundError.__name__
    assert "no-such-bucket-axon" in result.error["message"]
    assert "aws s3 mb s3://no-such-bucket-axon" in result.error["hint"]
    assert result.exit_code == 7


def test_wrong_credentials(
    tmp_path: Path, s3_auth_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_auth_server.bucket()
    model = make_model(tmp_path / "m", "hf/x@v1", {"a": b"a"})
    assert publish(model, s3_auth_server, bucket).ok  # the right key works
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    model2 = make_model(tmp_path / "m2", "hf/x@v2", {"a": b"b"})
    result = publish(model2, s3_auth_server, bucket)
    assert not result.ok and result.error is not None
    assert result.error["type"] == AuthenticationError.__name__, result.error
    assert "AWS_SECRET_ACCESS_KEY" in result.error["hint"]
    assert result.attempts == 1  # refused credentials are not retried


def test_endpoint_unreachable(tmp_path: Path, s3: S3Server) -> None:
    model = make_model(tmp_path / "m", "hf/x@v1", {"a": b"a"})
    storage = StorageTarget(
        "dead", "s3", "s3://b/p", endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    result = publish_to_storage(model, storage, PublishOptions(retries=0))
    assert result.error is not None
    assert result.error["type"] == TargetUnreachableError.__name__
    assert "127.0.0.1" in result.error["message"]


def test_fetch_manifest_absent_and_url_errors(s3: S3Server, bucket: str) -> None:
    from axon.errors import ConfigError

    t = S3Transport(f"s3://{bucket}", endpoint_url=s3.endpoint_url)
    assert t.fetch_manifest(ModelRef.parse("a/b@c")) is None
    assert t.store.manifest_key(ModelRef.parse("a/b/c@v")) == "a/b/c/v/manifest.yaml"
    with pytest.raises(ConfigError):
        S3Transport("http://not-s3/x")


@pytest.mark.parametrize("algorithm", ["SHA256", "MD5"])
def test_part_checksum_setting(tmp_path: Path, s3: S3Server, algorithm: str) -> None:
    big = os.urandom(6 * MiB)
    model = make_model(tmp_path / "m", "hf/ck@v1", {"big.bin": big})
    storage = StorageTarget("s", "s3", f"s3://{s3.bucket()}/m", endpoint_url=s3.endpoint_url)
    tuning = {**SMALL, "part_checksum": algorithm}
    result = publish_to_storage(model, storage, PublishOptions(retries=0, s3=tuning))
    if algorithm == "MD5":  # not an S3 part checksum: refused before anything is sent
        assert result.error is not None and result.error["type"] == "ConfigError"
        assert "CRC32 or SHA256" in result.error["hint"]
    else:
        assert result.ok and result.bytes_sent == len(big)


def _s3_calls(transport: S3Transport) -> list[str]:
    """The S3 operations ``transport`` sends from now on (botocore's own event hook)."""
    calls: list[str] = []
    transport.store.client.meta.events.register(
        "before-call.s3", lambda model, **_kw: calls.append(model.name)
    )
    return calls


def test_unchanged_republish_neither_asks_for_blobs_nor_rewrites_the_manifest(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    model = make_model(tmp_path / "m", "hf/same@v1", {"w.bin": b"w" * 5000, "c.json": b"{}"})
    assert publish(model, s3, bucket).ok
    with S3Transport(f"s3://{bucket}/models", endpoint_url=s3.endpoint_url) as transport:
        calls = _s3_calls(transport)
        session = transport.open(model.ref, model.manifest)
        assert session.unchanged and session.needed == []
        session.commit()
    assert "PutObject" not in calls and "HeadObject" not in calls, calls


def test_a_blob_removed_between_open_and_commit_stops_the_commit(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    """Blobs found at open are asked again before the manifest goes up (another client may
    have removed one); blobs sent in the session are not (their upload was verified)."""
    shared = b"s" * 4000
    first = make_model(tmp_path / "a", "hf/m@v1", {"w.bin": shared})
    assert publish(first, s3, bucket).ok
    second = make_model(tmp_path / "b", "hf/m@v2", {"w.bin": shared, "new.json": b'{"n": 1}'})
    with S3Transport(f"s3://{bucket}/models", endpoint_url=s3.endpoint_url) as transport:
        session = transport.open(second.ref, second.manifest)
        assert [e.path for e in session.needed] == ["new.json"]
        for entry in session.needed:
            session.send(entry, second.source(entry))
        shared_sha = hashlib.sha256(shared).hexdigest()
        s3.client().delete_object(Bucket=bucket, Key=f"models/{BLOBS}/{shared_sha}")
        calls = _s3_calls(transport)
        with pytest.raises(TransportError) as info:
            session.commit()
        assert "w.bin" in str(info.value)
        assert calls.count("HeadObject") == 1  # only the blob found at open
    assert S3Store(bucket, "models", endpoint_url=s3.endpoint_url).read_manifest(second.ref) is None
