"""Fast tests of the publish pieces that need no server: the transport registry, retry
classification, result exit codes, the register payload and the rich progress view."""

from __future__ import annotations

import io
import threading

import pytest

import axon.transports as transports
from axon.errors import (
    EXIT_ALL_FAILED,
    EXIT_NOT_NOTIFIED,
    EXIT_PARTIAL,
    AuthenticationError,
    ConfigError,
    NoSpaceError,
    RemoteError,
    TargetUnreachableError,
)
from axon.mlos_client import register_payload
from axon.publish import InstanceResult, PublishOptions, PublishResult
from axon.publish.instance import is_transient
from axon.targets import InstanceTarget
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.refs import ModelRef


def _target(method: str) -> InstanceTarget:
    return InstanceTarget(name="t1", endpoint="http://127.0.0.1:9", access_method=method)


def test_registry_builds_the_api_transport_lazily() -> None:
    from axon.transports.api import ApiTransport

    t = transports.transport_for(_target("api"))
    try:
        assert isinstance(t, ApiTransport) and t.describe() == "http://127.0.0.1:9"
    finally:
        t.close()
    assert set(transports.TRANSPORTS) >= {"filesystem", "nfs", "ssh", "api", "s3"}
    with pytest.raises(TypeError):
        transports.TRANSPORTS["x"] = transports.TRANSPORTS["api"]  # type: ignore[index]


def test_unknown_method_and_missing_extra_are_clear() -> None:
    with pytest.raises(ConfigError) as err:
        transports.transport_for(_target("carrier-pigeon"))
    assert "carrier-pigeon" in str(err.value) and "api" in str(err.value)
    transports.register_transport("ftp", "axon_no_such_module:FtpTransport", extra="ftp")
    try:
        with pytest.raises(ConfigError) as err:
            transports.transport_for(_target("ftp"))
        assert "pip install 'axon-publish[ftp]'" in str(err.value)
        assert err.value.target == "t1"
    finally:
        transports._REGISTRY.pop("ftp")


def test_public_names() -> None:
    import axon.publish

    for name in axon.publish.__all__:
        assert hasattr(axon.publish, name), name
    assert "transport_for" in transports.__all__


def test_what_is_retried() -> None:
    assert is_transient(TargetUnreachableError("cut"))
    assert is_transient(RemoteError("boom", status=503))
    assert not is_transient(RemoteError("bad manifest", status=400))
    assert not is_transient(AuthenticationError("no", status=401))
    assert not is_transient(NoSpaceError("full", status=507))
    explicit = RemoteError("conflict", status=409)
    explicit.retryable = True
    assert is_transient(explicit)


def _result(ok: bool, code: int = 0) -> InstanceResult:
    return InstanceResult(target="t", method="api", location="x", path=None, ok=ok, exit_code=code)


def test_exit_codes_of_a_result() -> None:
    assert PublishResult("a/b@c", "t", results=[_result(True)]).exit_code == 0
    one = PublishResult("a/b@c", "t", results=[_result(False, EXIT_NOT_NOTIFIED)])
    assert one.exit_code == EXIT_NOT_NOTIFIED and not one.ok
    two = PublishResult("a/b@c", "t", results=[_result(True), _result(False, 7)])
    assert two.exit_code == EXIT_PARTIAL
    none = PublishResult("a/b@c", "t", results=[_result(False, 7), _result(False, 7)])
    assert none.exit_code == EXIT_ALL_FAILED
    data = one.to_dict()
    assert data["ok"] is False and data["results"][0]["exit_code"] == EXIT_NOT_NOTIFIED


def test_options_defaults_match_the_cli() -> None:
    from axon.cli.publish_cmds import build_options, publish_cmd

    params = publish_cmd.make_context("publish", ["hf/x@v1"]).params
    for shown_only in ("ref", "target", "as_json", "quiet"):
        del params[shown_only]
    # `axon publish REF` with no options runs with the library's defaults, field for field
    assert build_options(**params) == PublishOptions()


def test_register_payload_is_upstream_shaped() -> None:
    manifest = Manifest.new(
        namespace="hf",
        name="bert",
        version="v1",
        files=[FileEntry("w.bin", 1, "0" * 64)],
        framework="PyTorch",
        execution_format="safetensors",
        description="tiny",
    )
    payload = register_payload(ModelRef.parse("hf/bert@v1"), "/srv/models/hf/bert/v1/", manifest)
    assert payload == {
        "model_id": "hf/bert@v1",
        "name": "bert",
        "framework": "PyTorch",
        "execution_format": "safetensors",
        "description": "tiny",
        "path": "/srv/models/hf/bert/v1",
        "manifest_path": "/srv/models/hf/bert/v1/manifest.yaml",
    }
    assert "path" not in register_payload(ModelRef.parse("hf/bert@v1"), None)


def test_rich_progress_from_many_threads() -> None:
    from rich.console import Console

    from axon.cli.progress_view import RichProgress

    out = io.StringIO()
    with RichProgress(Console(file=out, force_terminal=True, width=120)) as sink:

        def worker(i: int) -> None:
            key = f"inst:file{i}.bin"
            sink.begin(key, f"file{i}.bin", 1000)
            for _ in range(10):
                sink.advance(key, 100)
            sink.end(key, ok=i != 3, note="cut" if i == 3 else "")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sink.message("retrying in 1.0 s")
        tasks = {t.description: t for t in sink._bars.tasks}
    assert len(tasks) == 6
    assert tasks["file0.bin [ok]"].completed == 1000
    assert "file3.bin [FAILED: cut]" in tasks
    assert "retrying in 1.0 s" in out.getvalue()


def test_direct_puts_respect_every_proxy_variable_httpx_honours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blob PUT may bypass httpx only where no proxy applies: ALL_PROXY counts too."""
    from axon.transports.api import _direct

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert _direct("http://10.0.0.7:8080")  # only decides; nothing is contacted
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:3128")
    assert not _direct("http://10.0.0.7:8080")
    assert _direct("http://127.0.0.1:8080")  # loopback never goes through a proxy
    assert not _direct("https://10.0.0.7:8443")
