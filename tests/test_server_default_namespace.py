"""``mlos-core serve --default-namespace NS``: a model id written without a namespace
(``federated-model@v1.0``, as axon's users type it) means ``NS/federated-model@v1.0`` in every
URL path and request body the server reads, and a tenant's namespace rules apply to the
resolved name. Over HTTP, with real mlos-core processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS, ServerFactory, manifest_for, upload_resumable

FILES = {"weights.bin": b"w" * 3000, "config.json": b'{"model_type": "bert"}'}


def _open(srv: Any, model_id: str, full_id: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model_id": model_id, "manifest": manifest_for(full_id, FILES)}
    return httpx.post(f"{srv.url}/v1/uploads", json=body, headers=headers, timeout=30)


def test_bare_ids_resolve_to_the_configured_namespace(mlos_server: ServerFactory) -> None:
    srv = mlos_server(tokens=TOKENS, default_namespace="alpha")
    stats = httpx.get(f"{srv.url}/stats", timeout=10).json()
    assert stats["default_namespace"] == "alpha"  # a curl user can ask which it is

    # upload open: the bare id is alpha's, so alpha may write it and bravo may not
    refused = _open(srv, "m@v1", "alpha/m@v1", BRAVO)
    assert refused.status_code == 403, refused.text
    assert "'alpha'" in refused.text  # the namespace it resolved to is named
    opened = _open(srv, "m@v1", "alpha/m@v1", ALPHA)
    assert opened.status_code == 201, opened.text
    httpx.delete(f"{srv.url}/v1/uploads/{opened.json()['upload_id']}", headers=ALPHA)
    upload_resumable(srv.url, "alpha/m@v1", FILES, headers=ALPHA)

    # /models/{id} and /v1/models/{id}: the bare id finds alpha/m@v1
    got = httpx.get(f"{srv.url}/models/m@v1", timeout=10)
    assert got.status_code == 200, got.text
    assert "alpha/m@v1" in got.text
    record = httpx.get(f"{srv.url}/v1/models/m@v1", timeout=10)
    assert record.status_code == 200, record.text
    assert "alpha/m@v1" in record.text
    manifest = httpx.get(f"{srv.url}/v1/models/m@v1/manifest", timeout=10)
    assert manifest.status_code == 200, manifest.text
    assert yaml.safe_load(manifest.text)["metadata"]["namespace"] == "alpha"
    # the built-in default is no longer what a bare id means on this server
    assert httpx.get(f"{srv.url}/models/local/m@v1", timeout=10).status_code == 404

    # register: a bare id names alpha's model dir; bravo may not register alpha's models
    d = srv.models_dir / "alpha" / "reg" / "v1"
    d.mkdir(parents=True)
    for rel, data in FILES.items():
        (d / rel).write_bytes(data)
    (d / "manifest.yaml").write_text(yaml.safe_dump(manifest_for("alpha/reg@v1", FILES)))
    url = f"{srv.url}/models/register"
    denied = httpx.post(url, json={"model_id": "reg@v1"}, headers=BRAVO, timeout=30)
    assert denied.status_code == 403, denied.text
    done = httpx.post(url, json={"model_id": "reg@v1"}, headers=ALPHA, timeout=30)
    assert done.status_code == 200, done.text
    assert httpx.get(f"{srv.url}/models/alpha/reg@v1", timeout=10).status_code == 200

    # the one-request multipart upload reads its model_id field the same way
    one = httpx.post(
        f"{srv.url}/models/upload",
        data={
            "model_id": "one@v1",
            "manifest": yaml.safe_dump(manifest_for("alpha/one@v1", FILES)),
        },
        files=[("model_files", (rel, data)) for rel, data in FILES.items()],
        headers=ALPHA,
        timeout=30,
    )
    assert one.status_code == 201, one.text
    assert (srv.models_dir / "alpha" / "one" / "v1" / "weights.bin").exists()

    # DELETE /models/{id} with a bare id removes alpha's model (and only alpha may)
    assert httpx.delete(f"{srv.url}/models/one@v1", headers=BRAVO).status_code == 403
    assert httpx.delete(f"{srv.url}/models/one@v1", headers=ALPHA).status_code == 200
    assert httpx.get(f"{srv.url}/models/alpha/one@v1", timeout=10).status_code == 404


def test_without_the_option_a_bare_id_is_local(mlos_server: ServerFactory) -> None:
    srv = mlos_server()
    upload_resumable(srv.url, "local/m@v1", FILES)
    got = httpx.get(f"{srv.url}/models/m@v1", timeout=10)
    assert got.status_code == 200 and "local/m@v1" in got.text, got.text


def test_a_default_namespace_that_is_no_namespace_is_refused(tmp_path: Path) -> None:
    for bad in ("../up", "a/b", ".hidden", "-x", ""):
        proc = subprocess.run(
            [sys.executable, "-m", "mlos_core", "serve", "--models-dir", str(tmp_path),
             "--port", "1", "--default-namespace", bad],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "--default-namespace" in proc.stderr and "is not a namespace" in proc.stderr
        assert "Traceback" not in proc.stderr
