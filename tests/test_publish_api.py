"""``axon publish`` through the upload API of a real ``mlos-core`` (subprocess on loopback):
fresh, unchanged, changed-file-only, resume after a cut, retries then failure, bad inputs,
--dry-run, --json, register and status."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from axon.errors import (
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TRANSPORT,
)
from axon.publish import PublishOptions, publish
from modelpkg.refs import ModelRef
from tests.fixtures.common import free_port
from tests.helpers import error_lines, run_axon, write_config

MiB = 1024 * 1024
FAST = {"retries": 2, "backoff": 0.05, "max_backoff": 0.1}


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _registered(url: str, ref: ModelRef) -> bool:
    quoted = ref.id.replace("/", "%2F").replace("@", "%40")
    return httpx.get(f"{url}/models/{quoted}", timeout=5).status_code == 200


def test_fresh_then_unchanged_publish(mlos_server, installed_model: ModelRef) -> None:
    srv = mlos_server(no_fsync=True)
    first = publish(installed_model, srv.url)
    assert first.ok and first.exit_code == EXIT_OK
    (r,) = first.results
    assert r.method == "api" and r.registered and r.notified
    assert r.files_sent >= 3 and r.files_skipped == 0
    assert r.bytes_sent > 0
    published = _files(srv.models_dir / installed_model.relpath)
    cached = _files(Path(os.environ["AXON_HOME"]) / "cache" / "models" / installed_model.relpath)
    assert {k: v for k, v in published.items() if k != "manifest.yaml"} == {
        k: v for k, v in cached.items() if k not in ("manifest.yaml", ".axon_metadata.json")
    }
    assert _registered(srv.url, installed_model)

    again = publish(installed_model, srv.url)
    (r2,) = again.results
    assert again.ok and r2.bytes_sent == 0 and r2.files_sent == 0
    assert r2.files_skipped == r.files_sent + r.files_skipped


def test_only_the_changed_file_moves(
    mlos_server, make_model_dir, install_model, installed_model: ModelRef
) -> None:
    srv = mlos_server(no_fsync=True)
    assert publish(installed_model, srv.url).ok
    source = make_model_dir("changed")
    (source / "config.json").write_text('{"model_type": "bert", "hidden_size": 2}\n')
    v2 = install_model(source, "hf/tiny-bert@v2")
    result = publish(v2, srv.url)
    (r,) = result.results
    assert result.ok
    assert r.files_sent == 1  # config.json; weights and tokenizer are deduplicated
    assert r.bytes_sent == (source / "config.json").stat().st_size
    assert (srv.models_dir / v2.relpath / "config.json").read_text().endswith("2}\n")


LINK = 32 * MiB  # bytes/s: slower than the server takes them in


def assert_resumed(sent: int, source: Path, cut: int) -> None:
    """After one cut, a resume sends the model once plus what was lost in flight; a restart
    from zero would send all ``cut`` bytes again. (A reset drops what sat unread in the
    server's socket buffer: the tests throttle the link so the server keeps up.)"""
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    again = sent - total
    assert again <= cut // 4, f"{again} bytes sent again after a cut at {cut}"


def test_resume_after_the_connection_is_cut(
    mlos_server, tcp_proxy, make_model_dir, install_model
) -> None:
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    source = make_model_dir("big", weights_size=6 * MiB)
    ref = install_model(source, "hf/big@v1")
    proxy.cut_after(3 * MiB, mode="reset")
    proxy.throttle(LINK)
    result = publish(ref, proxy.url, PublishOptions(**FAST))
    (r,) = result.results
    assert result.ok, r.error
    assert proxy.cuts == 1 and r.attempts == 2
    assert_resumed(proxy.bytes_up, source, cut=3 * MiB)
    on_server = _files(srv.models_dir / ref.relpath)
    assert {k: v for k, v in on_server.items() if k != "manifest.yaml"} == _files(source)


def test_retries_then_a_clear_failure(mlos_server, tcp_proxy, installed_model) -> None:
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    proxy.refuse = True
    write_config(
        Path(os.environ["AXON_HOME"]),
        {"flaky": {"endpoint": proxy.url, "access_method": "api"}},
    )
    result = publish(installed_model, "flaky", PublishOptions(**FAST))
    (r,) = result.results
    assert not result.ok and result.exit_code == EXIT_TRANSPORT
    assert r.attempts == 3
    assert r.error is not None and r.error["target"] == "flaky"
    assert "gave up after 3 attempts" in r.error["message"]
    assert not (srv.models_dir / installed_model.relpath).exists()


# ---- the CLI: bad inputs, one line naming the target, the documented exit code -----------
def test_model_not_in_cache(mlos_server) -> None:
    srv = mlos_server(no_fsync=True)
    run = run_axon("publish", "hf/nothing@v9", "--target", srv.url)
    assert run.code == EXIT_NOT_FOUND
    (line,) = error_lines(run.err)
    assert "hf/nothing@v9" in line


def test_unreachable_host(installed_model) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = run_axon("publish", str(installed_model), "--target", url, "--retries", "0")
    assert run.code == EXIT_TRANSPORT
    (line,) = error_lines(run.err)
    assert url in line and "cannot connect" in line


def test_refused_token(mlos_server, installed_model) -> None:
    tokens = {"tenants": {"acme": {"namespaces": ["hf"], "tokens": ["good-token"]}}}
    srv = mlos_server(tokens=tokens, no_fsync=True)
    home = Path(os.environ["AXON_HOME"])
    write_config(home, {"prod": {"endpoint": srv.url, "access_method": "api", "token": "bad"}})
    run = run_axon("publish", str(installed_model), "--target", "prod")
    assert run.code == EXIT_TRANSPORT
    (line,) = error_lines(run.err)
    assert line.startswith("axon: error: prod:") and "401" in line and "token" in line
    write_config(
        home, {"prod": {"endpoint": srv.url, "access_method": "api", "token_env": "PROD_TOKEN"}}
    )
    ok = run_axon("publish", str(installed_model), "-t", "prod", env={"PROD_TOKEN": "good-token"})
    assert ok.code == EXIT_OK, ok.err


def test_a_model_over_the_servers_upload_limit(mlos_server, installed_model) -> None:
    srv = mlos_server(max_upload_size="1K", no_fsync=True)
    run = run_axon("publish", str(installed_model), "--target", srv.url)
    assert run.code == EXIT_TRANSPORT
    (line,) = error_lines(run.err)
    assert srv.url in line and "413" in line


def test_dry_run_changes_nothing(mlos_server, installed_model) -> None:
    srv = mlos_server(no_fsync=True)
    before = _files(srv.models_dir)
    run = run_axon("publish", str(installed_model), "--target", srv.url, "--dry-run")
    assert run.code == EXIT_OK, run.err
    assert "would send" in run.out and "config.json" in run.out
    assert _files(srv.models_dir) == before
    assert not _registered(srv.url, installed_model)
    as_json = run_axon("publish", str(installed_model), "-t", srv.url, "--dry-run", "--json")
    (plan,) = as_json.json()["plans"]
    assert plan["files_to_send"] == len(plan["files"]) and plan["bytes_to_send"] > 0


def test_json_result_shape(mlos_server, installed_model) -> None:
    srv = mlos_server(no_fsync=True)
    run = run_axon("publish", str(installed_model), "--target", srv.url, "--json")
    assert run.code == EXIT_OK, run.err
    data = run.json()
    assert data["ok"] is True and data["model_id"] == "hf/tiny-bert@v1"
    (r,) = data["results"]
    for key in ("target", "method", "path", "files_sent", "files_skipped", "bytes_sent"):
        assert key in r
    assert r["notified"] is True and r["error"] is None and r["method"] == "api"
    assert r["path"] == str(srv.models_dir / "hf" / "tiny-bert" / "v1")
    failed = run_axon("publish", "hf/absent@v1", "--target", srv.url, "--json")
    assert failed.code == EXIT_NOT_FOUND
    assert failed.json()["error"]["type"] == "ModelNotFoundError"


def test_status_and_register(mlos_server, installed_model) -> None:
    srv = mlos_server(no_fsync=True)
    absent = run_axon("status", str(installed_model), "--target", srv.url, "--json")
    assert absent.code == EXIT_NOT_FOUND
    assert absent.json()["present"] is False and absent.json()["registered"] is False
    writes = [
        line
        for line in httpx.get(f"{srv.url}/metrics", timeout=5).text.splitlines()
        if line.startswith("mlos_http_requests_total") and 'method="GET"' not in line
    ]
    assert writes == [], "status must only read (no upload opened and dropped)"
    assert run_axon("publish", str(installed_model), "-t", srv.url, "-q").code == EXIT_OK
    st = run_axon("status", str(installed_model), "--target", srv.url, "--json")
    assert st.code == EXIT_OK, st.err
    data = st.json()
    assert data["present"] and data["checksums_match"] and data["registered"]
    human = run_axon("status", str(installed_model), "--target", srv.url)
    assert "checksums match cache: yes" in human.out and "registered: yes" in human.out

    # upstream-compatible register: MLOS_CORE_ENDPOINT names the instance
    reg = run_axon("register", str(installed_model), env={"MLOS_CORE_ENDPOINT": srv.url})
    assert reg.code == EXIT_OK, reg.err
    assert "registered hf/tiny-bert@v1" in reg.out
    gone = run_axon("register", "hf/never-published@v1", "--target", srv.url)
    assert gone.code == EXIT_NOT_FOUND  # nothing was published: no "not notified" here
    (line,) = error_lines(gone.err)
    assert "has no files of hf/never-published@v1 to register" in line
    assert "axon publish hf/never-published@v1" in line


@pytest.mark.parametrize("spec", ["hf/tiny-bert@v1"])
def test_publish_progress_is_silent_in_json(mlos_server, installed_model, spec: str) -> None:
    srv = mlos_server(no_fsync=True)
    run = run_axon("publish", spec, "--target", srv.url, "--json")
    assert run.code == EXIT_OK and run.err == ""


def test_validate_stops_a_tampered_model_before_anything_is_sent(
    mlos_server, installed_model
) -> None:
    srv = mlos_server(no_fsync=True)
    cached = Path(os.environ["AXON_HOME"]) / "cache" / "models" / installed_model.relpath
    with open(cached / "config.json", "a") as fh:
        fh.write(" ")  # bit rot in the cache
    run = run_axon("publish", str(installed_model), "--target", srv.url)
    assert run.code == EXIT_INTEGRITY
    (line,) = error_lines(run.err)
    assert "config.json" in line and "axon verify" in line
    assert not (srv.models_dir / installed_model.relpath).exists()
    assert httpx.get(f"{srv.url}/models", timeout=5).json()["total"] == 0


def test_a_stalled_connection_times_out_and_is_retried(
    mlos_server, tcp_proxy, installed_model
) -> None:
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    proxy.stall(2.5)
    options = PublishOptions(timeout=0.5, override_timeout=True, retries=6, backoff=0.3)
    result = publish(installed_model, proxy.url, options)
    (r,) = result.results
    assert result.ok, r.error
    assert r.attempts >= 2  # the first attempt hit the 0.5 s timeout
    assert _registered(srv.url, installed_model)


def test_a_cache_file_vanishing_mid_publish_is_a_clear_failure(
    mlos_server, installed_model
) -> None:
    srv = mlos_server(no_fsync=True)
    cached = Path(os.environ["AXON_HOME"]) / "cache" / "models" / installed_model.relpath
    (cached / "config.json").unlink()  # --no-validate trusts the manifest, so this shows late
    result = publish(installed_model, srv.url, PublishOptions(validate=False, **FAST))
    (r,) = result.results
    assert not result.ok and result.exit_code == EXIT_TRANSPORT
    assert r.error is not None and "config.json" in r.error["message"]
    assert "axon verify hf/tiny-bert@v1" in r.error["hint"]
    assert not (srv.models_dir / installed_model.relpath).exists()


def test_empty_and_duplicate_files(mlos_server, make_model_dir, install_model) -> None:
    srv = mlos_server(no_fsync=True)
    blob = os.urandom(100_000)
    source = make_model_dir("odd", extra={"empty.txt": b"", "a.bin": blob, "copy/a.bin": blob})
    ref = install_model(source, "hf/odd@v1")
    result = publish(ref, srv.url)
    (r,) = result.results
    assert result.ok, r.error
    final = srv.models_dir / ref.relpath
    assert (final / "empty.txt").read_bytes() == b""
    assert (final / "copy" / "a.bin").read_bytes() == blob
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert r.bytes_sent == total - len(blob)  # the duplicate content went once


def test_a_bare_host_port_target_means_its_api(mlos_server, installed_model) -> None:
    srv = mlos_server(no_fsync=True)
    run = run_axon("publish", str(installed_model), "--target", f"127.0.0.1:{srv.port}", "--json")
    assert run.code == EXIT_OK, run.err
    (r,) = run.json()["results"]
    assert r["method"] == "api" and r["target"] == f"127.0.0.1:{srv.port}"
    assert _registered(srv.url, installed_model)


def test_the_httpx_streaming_path_too(
    mlos_server, tcp_proxy, make_model_dir, install_model, monkeypatch
) -> None:
    """https endpoints and proxied http stream through httpx instead of sendfile."""
    import axon.transports.api as api

    monkeypatch.setattr(api, "_direct", lambda endpoint: False)
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    source = make_model_dir("streamed", weights_size=6 * MiB)
    ref = install_model(source, "hf/streamed@v1")
    proxy.cut_after(3 * MiB)
    proxy.throttle(LINK)
    result = publish(ref, proxy.url, PublishOptions(**FAST))
    (r,) = result.results
    assert result.ok, r.error
    assert proxy.cuts == 1 and r.attempts == 2
    assert_resumed(proxy.bytes_up, source, cut=3 * MiB)
    on_server = _files(srv.models_dir / ref.relpath)
    assert {k: v for k, v in on_server.items() if k != "manifest.yaml"} == _files(source)


def test_a_manifest_with_yaml_dates_publishes_and_the_commit_names_it(
    mlos_server, installed_model
) -> None:
    """YAML reads ``created: 2024-01-01`` as a date: it goes out as text, and the commit's
    ``manifest_sha256`` is the digest of the manifest as sent (the server's copy)."""
    import datetime

    import yaml

    from modelpkg.manifest import Manifest

    srv = mlos_server(no_fsync=True)
    cached = Path(os.environ["AXON_HOME"]) / "cache" / "models" / installed_model.relpath
    text = (cached / "manifest.yaml").read_text()
    data = yaml.safe_load(text)
    data["metadata"]["created"] = datetime.date(2024, 1, 1)  # written as a YAML date
    (cached / "manifest.yaml").write_text(yaml.safe_dump(data))
    result = publish(installed_model, srv.url, PublishOptions(**FAST))
    (r,) = result.results
    assert result.ok, r.error
    served = Manifest.load(srv.models_dir / installed_model.relpath)
    assert str(served.metadata["created"]) == "2024-01-01"
    sent = Manifest.load(cached).as_uploaded("hf", "tiny-bert", "v1")
    assert served.as_uploaded("hf", "tiny-bert", "v1").digest() == sent.digest()
