"""mlos-core's MLOS Core API (docs/compatibility.md) over real HTTP against the real server
process."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.fixtures.common import wait_for
from tests.fixtures.mlos import manifest_for, upload_resumable

FILES = {"weights.bin": b"w" * 1000, "config.json": b'{"a": 1}', "tok/vocab.txt": b"a\nb\n"}


def write_model(root: Path, model_path: str, files: dict[str, bytes]) -> Path:
    d = root / model_path
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    ns, name, version = model_path.split("/")[0], "/".join(model_path.split("/")[1:-1]), ""
    version = model_path.split("/")[-1]
    (d / "manifest.yaml").write_text(yaml.safe_dump(manifest_for(f"{ns}/{name}@{version}", files)))
    return d


def test_health_stats_metrics_openapi(mlos_server):
    srv = mlos_server(instance_id="core-a")
    health = httpx.get(f"{srv.url}/health").json()
    assert health["status"] == "healthy" and health["service"] == "mlos-core"
    assert health["version"] and health["timestamp"].endswith("Z")
    stats = httpx.get(f"{srv.url}/stats").json()
    assert stats["status"] == "success" and stats["instance_id"] == "core-a"
    metrics = httpx.get(f"{srv.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "mlos_models 0" in metrics.text and "mlos_upload_bytes_total" in metrics.text
    assert httpx.get(f"{srv.url}/models/ns/none@v1").status_code == 404
    upload_resumable(srv.url, "ns/m@v1", FILES)
    text = httpx.get(f"{srv.url}/metrics").text
    assert 'mlos_errors_total{status="404"} 1' in text and "mlos_models 1" in text
    assert f"mlos_upload_bytes_total {sum(len(b) for b in FILES.values())}" in text
    assert httpx.get(f"{srv.url}/stats").json()["models"] == 1
    doc = httpx.get(f"{srv.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/uploads" in doc["paths"]
    assert "/models/upload" in doc["paths"]
    # one log line per request, with method, path and status
    assert '"GET /stats" 200' in srv.log()


def test_startup_scan_registers_complete_models_only(mlos_server, tmp_path):
    models = tmp_path / "models"
    write_model(models, "hf/bert/v1", FILES)
    write_model(models, "hf/google/flan-t5/latest", FILES)
    broken = write_model(models, "hf/broken/v1", FILES)
    (broken / "weights.bin").unlink()  # incomplete: never registered
    srv = mlos_server(models_dir=models)
    listing = httpx.get(f"{srv.url}/models").json()
    assert listing["status"] == "success"
    assert {m["id"] for m in listing["models"]} == {"hf/bert@v1", "hf/google/flan-t5@latest"}
    assert listing["total"] == 2
    # a model copied in later appears after POST /models/scan (what upstream publish calls)
    write_model(models, "hf/late/v2", FILES)
    scan = httpx.post(f"{srv.url}/models/scan").json()
    assert scan["status"] == "success" and scan["new"] == 1
    assert httpx.get(f"{srv.url}/models/hf%2Flate%40v2").status_code == 200


def test_register_upstream_payloads_and_ids(mlos_server, tmp_path):
    # outside the models dir: only under a root the operator names (as upstream's cache)
    d = write_model(tmp_path / "elsewhere", "ns/m/v1", FILES)
    srv = mlos_server(register_root=tmp_path / "elsewhere")
    r = httpx.post(
        f"{srv.url}/models/register",
        json={"model_id": "ns/m@v1", "name": "m", "framework": "pytorch", "path": str(d)},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["model_id"] == "ns/m@v1"
    assert body["inference_endpoint"] == "/models/ns/m@v1/inference"
    # older callers send model_path; registering again is still a success
    again = httpx.post(
        f"{srv.url}/models/register", json={"model_id": "ns/m@v1", "model_path": str(d)}
    )
    assert again.status_code == 200 and "already registered" in again.json()["message"]
    # percent-encoded and raw ids reach the same model
    for path in ("/models/ns%2Fm%40v1", "/models/ns/m@v1"):
        got = httpx.get(srv.url + path)
        assert got.status_code == 200 and got.json()["id"] == "ns/m@v1"
    # both ids reach the model's inference, which refuses a format without a runtime here
    # (weights.bin: PyTorch); ONNX models run: tests/test_inference.py
    for path in ("/models/ns%2Fm%40v1/inference", "/models/ns/m@v1/inference?include_outputs=1"):
        inf = httpx.post(srv.url + path, json={"input_ids": [[1, 2, 3]]})
        assert inf.status_code == 501 and inf.json()["code"] == "format_not_supported", inf.text
        assert "ns/m@v1" in inf.json()["message"] and "ONNX" in inf.json()["message"]
    # the registration survives a restart (kept in .mlos/registry.json)
    srv.restart()
    assert httpx.get(f"{srv.url}/models/ns/m@v1").status_code == 200
    # the model's own directory in the models dir needs no root (what axon sends after a copy)
    write_model(srv.models_dir, "ns/local/v1", FILES)
    for body in ({}, {"path": str(srv.models_dir / "ns" / "local" / "v1")}):
        r = httpx.post(f"{srv.url}/models/register", json={"model_id": "ns/local@v1", **body})
        assert r.status_code == 200, r.text


def test_register_errors(mlos_server, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    srv = mlos_server()
    r = httpx.post(f"{srv.url}/models/register", json={"name": "no id"})
    assert r.status_code == 400 and r.json()["status"] == "error"
    # missing, and outside every root: one answer, naming no path of the server
    answers = []
    for path in (tmp_path / "nope", write_model(tmp_path / "elsewhere", "ns/m/v1", FILES)):
        r = httpx.post(
            f"{srv.url}/models/register", json={"model_id": "ns/m@v1", "path": str(path)}
        )
        assert r.status_code == 404 and r.json()["code"] == "path_not_found", r.text
        assert str(tmp_path) not in r.text
        answers.append(r.json())
    assert answers[0] == answers[1]
    r = httpx.post(f"{srv.url}/models/register", content=b"{not json")
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    assert httpx.get(f"{srv.url}/models/ns/unknown@v1").status_code == 404
    assert httpx.post(f"{srv.url}/models/ns/unknown@v1/inference", json={}).status_code == 404
    assert httpx.delete(f"{srv.url}/models/ns/unknown@v1").status_code == 404
    for bad in ("/models/..%2Fetc%40v1", "/models/ns/%00x@v1", "/models/" + "a" * 600 + "/b"):
        r = httpx.get(srv.url + bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["status"] == "error" and r.json()["message"]


def test_delete_removes_files_and_registration(mlos_server):
    srv = mlos_server()
    upload_resumable(srv.url, "ns/gone@v1", FILES)
    model_dir = srv.models_dir / "ns" / "gone" / "v1"
    assert (model_dir / "weights.bin").read_bytes() == FILES["weights.bin"]
    r = httpx.delete(f"{srv.url}/models/ns%2Fgone%40v1")
    assert r.status_code == 200 and r.json()["status"] == "success"
    assert not model_dir.exists()
    assert httpx.get(f"{srv.url}/models/ns/gone@v1").status_code == 404
    # unreferenced blobs are garbage-collected
    sha = hashlib.sha256(FILES["weights.bin"]).hexdigest()
    assert not (srv.models_dir / ".mlos" / "blobs" / "sha256" / sha[:2] / sha).exists()


def test_multipart_upload_with_curl(mlos_server, tmp_path):
    srv = mlos_server()
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x" * 5000)
    (src / "config.json").write_text("{}")
    # an upstream-style manifest: sizes 0, empty sha256 -> filled in by the server
    (src / "manifest.yaml").write_text(
        "apiVersion: v1\nkind: Model\nmetadata: {name: m, namespace: ns, version: v1}\n"
        "spec:\n  format:\n    files:\n      - {path: w.bin, size: 0, sha256: ''}\n"
        "      - {path: sub/config.json}\n"
    )
    out = subprocess.run(
        [
            "curl", "-sS", "-F", "model_id=ns/m@v1", "-F", f"manifest=@{src / 'manifest.yaml'}",
            "-F", f"model_files=@{src / 'w.bin'};filename=w.bin",
            "-F", f"model_files=@{src / 'config.json'};filename=sub/config.json",
            "-w", "\n%{http_code}", f"{srv.url}/models/upload",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    body, code = out.stdout.rsplit("\n", 1)
    assert code == "201", body
    d = srv.models_dir / "ns" / "m" / "v1"
    assert (d / "sub" / "config.json").read_text() == "{}"
    written = yaml.safe_load((d / "manifest.yaml").read_text())
    sizes = {f["path"]: f["size"] for f in written["spec"]["format"]["files"]}
    assert sizes == {"w.bin": 5000, "sub/config.json": 2}
    assert httpx.get(f"{srv.url}/models/ns/m@v1").status_code == 200


def test_cli_help_and_loud_warning_for_public_bind(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mlos_core", "serve", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--max-upload-size" in out.stdout and "--tokens" in out.stdout
    from mlos_core.cli import bind_warning

    assert bind_warning("127.0.0.1", None) is None and bind_warning("::1", None) is None
    assert bind_warning("0.0.0.0", tmp_path / "tokens.yaml") is None
    warning = bind_warning("0.0.0.0", None)
    assert warning is not None and "WITHOUT --tokens" in warning


def test_bad_tokens_file_refuses_to_start(tmp_path):
    bad = tmp_path / "tokens.yaml"
    bad.write_text("tenants: {acme: {namespaces: [acme]}}\n")  # no tokens
    out = subprocess.run(
        [sys.executable, "-m", "mlos_core", "serve", "--port", "1", "--tokens", str(bad),
         "--models-dir", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and "has no tokens" in out.stderr


TENANTS = {
    "tenants": {
        "acme": {"tokens": ["tok-acme"], "namespaces": ["acme"]},
        "a-only": {"tokens": ["tok-a"], "namespaces": ["a"]},
        "ops": {"tokens": ["tok-ops"], "namespaces": ["*"]},
    }
}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_blob_head_needs_the_same_tenant_as_get(mlos_server):
    srv = mlos_server(tokens=TENANTS)
    opened = upload_resumable(
        srv.url, "acme/m@v1", FILES, headers=_bearer("tok-acme"), commit=False
    )
    need = hashlib.sha256(b"never sent").hexdigest()
    manifest = {
        "model_id": "acme/m@v2",
        "manifest": yaml.safe_dump(
            {"spec": {"format": {"files": [{"path": "x", "size": 10, "sha256": need}]}}}
        ),
    }
    uid = httpx.post(f"{srv.url}/v1/uploads", json=manifest, headers=_bearer("tok-acme")).json()[
        "upload_id"
    ]
    blob = f"{srv.url}/v1/uploads/{uid}/blobs/{need}"
    for headers, status in (
        ({}, 401),
        (_bearer("tok-wrong"), 401),
        (_bearer("tok-a"), 403),
        (_bearer("tok-acme"), 200),
        (_bearer("tok-ops"), 200),
    ):
        head = httpx.head(blob, headers=headers)
        get = httpx.get(f"{srv.url}/v1/uploads/{uid}", headers=headers)
        assert (head.status_code, get.status_code) == (status, status), headers
        assert ("upload-offset" in head.headers) == (status == 200)
    assert opened["upload_id"] != uid


def test_scan_needs_a_tenant_allowed_every_namespace(mlos_server):
    srv = mlos_server(tokens=TENANTS)
    write_model(srv.models_dir, "b/late/v1", FILES)  # another namespace's model, copied in
    for headers, status in (({}, 401), (_bearer("tok-a"), 403), (_bearer("tok-acme"), 403)):
        r = httpx.post(f"{srv.url}/models/scan", headers=headers)
        assert r.status_code == status, r.text
        assert httpx.get(f"{srv.url}/models/b/late@v1").status_code == 404
    assert "a-only" in httpx.post(f"{srv.url}/models/scan", headers=_bearer("tok-a")).text
    r = httpx.post(f"{srv.url}/models/scan", headers=_bearer("tok-ops"))
    assert r.status_code == 200 and r.json()["new"] == 1
    assert httpx.get(f"{srv.url}/models/b/late@v1").status_code == 200


def _raw_multipart(filename: bytes) -> tuple[bytes, str]:
    b = b"win-boundary-3"
    manifest = json.dumps({"spec": {"format": {"files": []}}}).encode()
    body = b"".join([
        b'--%s\r\nContent-Disposition: form-data; name="model_id"\r\n\r\nns/win@v1\r\n' % b,
        b'--%s\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n%s\r\n' % (b, manifest),
        b'--%s\r\nContent-Disposition: form-data; name="model_files"; filename="%s"\r\n'
        b"\r\nevil\r\n" % (b, filename),
        b"--%s--\r\n" % b,
    ])  # fmt: skip
    return body, f"multipart/form-data; boundary={b.decode()}"


def test_multipart_windows_paths_are_refused_not_cut_to_their_last_segment(mlos_server):
    srv = mlos_server()
    # as a browser sends them (no escaping) and as curl does (backslashes escaped)
    for name in (b"C:\\evil", b"C:\\\\evil", b"\\\\server\\share\\evil", b"a\\..\\evil"):
        body, ctype = _raw_multipart(name)
        r = httpx.post(f"{srv.url}/models/upload", content=body, headers={"content-type": ctype})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_path"), (name, r.text)
        assert "backslash" in r.json()["message"]
    assert httpx.get(f"{srv.url}/models").json()["total"] == 0
    assert not (srv.models_dir / "ns").exists()
    # a quote escaped the way curl does it is part of the name, as sent
    body, ctype = _raw_multipart(b'say \\"hi\\".txt')
    r = httpx.post(f"{srv.url}/models/upload", content=body, headers={"content-type": ctype})
    assert r.status_code == 201, r.text
    assert (srv.models_dir / "ns" / "win" / "v1" / 'say "hi".txt').read_bytes() == b"evil"


def test_a_client_gone_mid_body_is_no_internal_error(mlos_server):
    """A JSON body cut off by the client (or by the server's slow-body limits) is a client
    that went away: logged as such (499), not as an internal error with a traceback."""
    srv = mlos_server()
    for path in ("/models/register", "/v1/uploads"):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            sock.sendall(head.encode() + b"Content-Length: 1000\r\n\r\n" + b'{"model_id": ')
        wait_for(lambda p=path: f'"POST {p}" 499' in srv.log(), timeout=10, what="the 499 line")
    log = srv.log()
    assert "internal error" not in log and "Traceback" not in log
    assert httpx.get(f"{srv.url}/health").status_code == 200
