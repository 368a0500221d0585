"""Hostile requests to a real mlos-core: traversal and injection in model ids, manifest paths
and multipart file names, odd sizes and offsets, malformed bodies; and tenant isolation on
every write endpoint. Each answer must be a 4xx (never 5xx), the server must keep serving,
and nothing may change outside (or, for refusals, inside) the models directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.fixtures.mlos import ServerFactory, manifest_for, upload_resumable
from tests.stress.checkers import check_fs_root, tree_digest
from tests.stress.figures import record
from tests.stress.harness import billion_laughs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

BAD_IDS = [
    "../../etc/passwd@v1",
    "ns/../../x@v1",
    "ns/..@v1",
    "ns/x@..",
    "ns/x@../../y",
    "/abs/x@v1",
    "ns//x@v1",
    "ns/x@",
    "ns/x@a@b",
    "ns\\..\\x@v1",
    "ns/x\x00y@v1",
    "ns/.hidden@v1",
    ".mlos/staging@v1",
    "ns/-rf@v1",
    "ns/x@v1;rm -rf /",
    "ns/x%2F..%2F..@v1",
    "ns/x\n@v1",
    "ns/" + "a" * 600 + "@v1",
    "ns/x@.",
    "@v1",  # no name ("ns" alone is a bare name: the default namespace's, docs/server.md)
    "",
    "ns/x/../../..@v1",
    "ns/\u202ex@v1",
]
BAD_PATHS = [
    "../evil.bin",
    "/etc/evil",
    "a/../../evil",
    "a/./b",
    "a//b",
    "a\\..\\evil",
    "",
    ".",
    "..",
    "x\x00y",
    "x\ny",
    "manifest.yaml",
    "a" * 2000,
    "../" * 20 + "tmp/evil",
]
SIZES: list[Any] = [-1, -(2**63), 2**63, 10**30, "12", 1.5, None, True, [], {}]
OFFSETS = ["-1", "abc", "1e3", "+5", str(2**70), "0x10", "99999999999"]


def raw_multipart(model_id: bytes, manifest: bytes, filename: bytes, data: bytes) -> Any:
    """A multipart body with the file name exactly as given (httpx would escape it)."""
    b = b"hostile-boundary-8"
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="model_id"\r\n\r\n%s\r\n' % (b, model_id),
        b'--%s\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n%s\r\n' % (b, manifest),
        b'--%s\r\nContent-Disposition: form-data; name="model_files"; filename="%s"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n%s\r\n" % (b, filename, data),
        b"--%s--\r\n" % b,
    ]
    return b"".join(parts), f"multipart/form-data; boundary={b.decode()}"


def _outside_digest(jail: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(jail).items() if not k.startswith("models/")}


@pytest.fixture
def jailed(mlos_server: ServerFactory, tmp_path: Path) -> Any:
    jail = tmp_path / "jail"
    (jail / "sentinel").mkdir(parents=True)
    (jail / "sentinel" / "keep.txt").write_text("must not change")
    srv = mlos_server(models_dir=jail / "models", no_fsync=True)
    srv.jail = jail
    return srv


def _assert_4xx(r: httpx.Response, what: str) -> None:
    record("hostile_input", "http_requests", 1, add=True)
    # 507 insufficient_storage is a deliberate refusal (a declared size that cannot fit)
    if r.status_code >= 500 and r.status_code != 507:
        record("hostile_input", "http_5xx_seen", 1, add=True)
    assert 400 <= r.status_code < 500 or r.status_code == 507, (
        f"{what}: {r.status_code} {r.text[:300]}"
    )
    body = r.json() if r.content and r.request.method != "HEAD" else {"status": "error"}
    assert body.get("status") == "error", f"{what}: {body}"


def test_traversal_and_injection_corpus(jailed: Any) -> None:
    url, jail = jailed.url, jailed.jail
    before = _outside_digest(jail)
    files = {"w.bin": b"w" * 64}
    with httpx.Client(base_url=url, timeout=30) as c:
        for bad in BAD_IDS:
            body = {"model_id": bad, "manifest": manifest_for("ns/x@v1", files)}
            _assert_4xx(c.post("/v1/uploads", json=body), f"open {bad!r}")
            _assert_4xx(c.post("/models/register", json={"model_id": bad}), f"register {bad!r}")
            form = {"model_id": bad, "manifest": json.dumps(manifest_for("ns/x@v1", files))}
            r = c.post("/models/upload", data=form, files=[("model_files", ("w.bin", b"w"))])
            _assert_4xx(r, f"multipart {bad!r}")
            if bad and "\x00" not in bad and "\n" not in bad:
                q = quote(bad, safe="")
                for method in ("GET", "DELETE"):
                    r = c.request(method, f"/models/{q}")
                    _assert_4xx(r, f"{method} /models/{bad!r}")
                _assert_4xx(c.post(f"/v1/models/{q}/rollback"), f"rollback {bad!r}")
        for bad in BAD_PATHS:
            m = manifest_for("ns/x@v1", files)
            m["spec"]["format"]["files"][0]["path"] = bad
            _assert_4xx(c.post("/v1/uploads", json={"model_id": "ns/x@v1", "manifest": m}), bad)
            manifest = json.dumps(manifest_for("ns/x@v1", files)).encode()
            body, ctype = raw_multipart(b"ns/x@v1", manifest, bad.encode(), b"w" * 64)
            r = c.post("/models/upload", content=body, headers={"content-type": ctype})
            _assert_4xx(r, f"multipart filename {bad!r}")
        for size in SIZES:
            m = manifest_for("ns/x@v1", files)
            m["spec"]["format"]["files"][0]["size"] = size
            _assert_4xx(c.post("/v1/uploads", json={"model_id": "ns/x@v1", "manifest": m}), size)
    assert _outside_digest(jail) == before
    assert check_fs_root(jail / "models") == (0, [])
    assert httpx.get(f"{url}/models").json()["total"] == 0


def test_malformed_bodies_offsets_and_bombs(jailed: Any) -> None:
    url, jail = jailed.url, jailed.jail
    before = _outside_digest(jail)
    files = {"w.bin": os.urandom(1000)}
    sha = hashlib.sha256(files["w.bin"]).hexdigest()
    with httpx.Client(base_url=url, timeout=60) as c:
        for raw in [b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b"[" * 100_000, b"{}" * 3]:
            _assert_4xx(c.post("/v1/uploads", content=raw), f"body {raw[:20]!r}")
            _assert_4xx(c.post("/models/register", content=raw), f"register {raw[:20]!r}")
        for manifest in ["a: [", "- 1\n- 2", "{", "\t\x00", billion_laughs(), 7, [], "null"]:
            body = {"model_id": "ns/x@v1", "manifest": manifest}
            _assert_4xx(c.post("/v1/uploads", json=body), f"manifest {str(manifest)[:30]!r}")
            if isinstance(manifest, str):
                form = {"model_id": "ns/x@v1", "manifest": manifest}
                r = c.post("/models/upload", data=form, files=[("model_files", ("w.bin", b"w"))])
                _assert_4xx(r, f"multipart manifest {manifest[:30]!r}")
        deep = b'{"model_id": "ns/x@v1", "manifest": {"spec": ' + b"[" * 900 + b"]" * 900 + b"}}"
        _assert_4xx(c.post("/v1/uploads", content=deep), "manifest nested 900 deep")
        r = c.post("/models/upload", content=b"--x\r\n\r\n", headers={"content-type": "text/x"})
        _assert_4xx(r, "not multipart")
        r = c.post(
            "/models/upload",
            content=b"garbage" * 100,
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        _assert_4xx(r, "garbage multipart")
        opened = upload_resumable(url, "ns/x@v1", files, commit=False)
        uid = opened["upload_id"]
        for off in OFFSETS:
            r = c.put(
                f"/v1/uploads/{uid}/blobs/{sha}", content=b"w", headers={"Upload-Offset": off}
            )
            _assert_4xx(r, f"offset {off!r}")
        too_long = files["w.bin"] + b"extra"
        _assert_4xx(c.put(f"/v1/uploads/{uid}/blobs/{sha}", content=too_long), "longer body")
        _assert_4xx(c.put(f"/v1/uploads/{uid}/blobs/{'0' * 64}", content=b"x"), "unknown blob")
        _assert_4xx(c.put(f"/v1/uploads/{uid}/blobs/../../x", content=b"x"), "blob traversal")
        _assert_4xx(c.put(f"/v1/uploads/..%2F..%2Fx/blobs/{sha}", content=b"x"), "upload id")
        fresh = {"w.bin": os.urandom(1000)}
        body = {"model_id": "ns/y@v1", "manifest": manifest_for("ns/y@v1", fresh)}
        opened2 = c.post("/v1/uploads", json=body).json()
        uid2, sha2 = opened2["upload_id"], opened2["needed"][0]["sha256"]
        _assert_4xx(c.put(f"/v1/uploads/{uid2}/blobs/{sha2}", content=os.urandom(1000)), "sum")
        _assert_4xx(c.post(f"/v1/uploads/{uid2}/commit"), "commit without blobs")
        assert c.delete(f"/v1/uploads/{uid}").status_code == 200
        assert c.get("/health").status_code == 200
    assert _outside_digest(jail) == before
    assert check_fs_root(jail / "models") == (0, [])


def test_symlinks_and_hard_links_in_model_dirs(tmp_path: Path, install_model: Any) -> None:
    """A model dir being installed may not smuggle links to files outside it: a link leading
    out of it is refused by name, a link inside it and a hard link are copied (content, not
    link), so nothing in the cache points outside it; a symlinked directory is refused."""
    from axon.errors import SourceError

    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "w.bin").symlink_to(secret)
    with pytest.raises(SourceError, match="outside the model directory"):
        install_model(src, "ln/files@v1")
    (src / "w.bin").unlink()
    (src / "w.bin").symlink_to(src / "config.json")  # a link inside the model dir
    os.link(secret, src / "hard.bin")
    ref = install_model(src, "ln/files@v1")
    model_dir = Path(os.environ["AXON_HOME"]) / "cache" / "models" / ref.relpath
    for p in model_dir.rglob("*"):
        assert not p.is_symlink()
        assert p.stat().st_ino != secret.stat().st_ino
    (model_dir / "hard.bin").write_text("changed")  # writing the cache never reaches the secret
    assert secret.read_text() == "outside"
    linked = tmp_path / "src2"
    linked.mkdir()
    (linked / "config.json").write_text("{}")
    (linked / "sub").symlink_to(tmp_path)
    with pytest.raises(SourceError, match="symlinked director"):
        install_model(linked, "ln/dirs@v1")
    record("hostile_input", "link_cases", 4, add=True)


TOKENS = {
    "tenants": {
        "acme": {"tokens": ["tok-acme"], "namespaces": ["acme"]},
        "beta": {"tokens": ["tok-beta"], "namespaces": ["beta"]},
    }
}
CALLERS = {
    "no token": {},
    "wrong token": {"Authorization": "Bearer tok-wrong"},
    "not bearer": {"Authorization": "Basic tok-acme"},
    "other tenant": {"Authorization": "Bearer tok-beta"},
}


def _state(srv: Any, uid: str) -> Any:
    acme = {"Authorization": "Bearer tok-acme"}
    upload = httpx.get(f"{srv.url}/v1/uploads/{uid}", headers=acme, timeout=10).json()
    upload.pop("expires_at", None)
    models = httpx.get(f"{srv.url}/models", timeout=10).json()
    return tree_digest(srv.models_dir), upload, models


def test_tenant_isolation_on_every_write_endpoint(mlos_server: ServerFactory) -> None:
    srv = mlos_server(tokens=TOKENS, no_fsync=True)
    acme = {"Authorization": "Bearer tok-acme"}
    files = {"w.bin": os.urandom(2048), "c.json": b"{}"}
    upload_resumable(srv.url, "acme/m@v1", files, headers=acme)
    upload_resumable(srv.url, "acme/m@v1", {"w.bin": b"v2"}, headers=acme)  # a previous gen
    new = {"w.bin": os.urandom(4096)}
    opened = upload_resumable(srv.url, "acme/m@v2", new, headers=acme, commit=False)
    uid, sha = opened["upload_id"], opened["needed"][0]["sha256"]
    manifest = manifest_for("acme/m@v3", files)
    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/uploads", {"json": {"model_id": "acme/m@v3", "manifest": manifest}}),
        ("GET", f"/v1/uploads/{uid}", {}),
        ("HEAD", f"/v1/uploads/{uid}/blobs/{sha}", {}),
        ("PUT", f"/v1/uploads/{uid}/blobs/{sha}", {"content": new["w.bin"]}),
        ("POST", f"/v1/uploads/{uid}/prepare", {}),
        ("POST", f"/v1/uploads/{uid}/commit", {}),
        ("DELETE", f"/v1/uploads/{uid}", {}),
        ("POST", "/v1/models/acme%2Fm%40v1/rollback", {}),
        ("DELETE", "/models/acme%2Fm%40v1", {}),
        ("POST", "/models/register", {"json": {"model_id": "acme/m@v9"}}),
        (
            "POST",
            "/models/upload",
            {
                "data": {"model_id": "acme/m@v3", "manifest": json.dumps(manifest)},
                "files": [("model_files", ("w.bin", files["w.bin"]))],
            },
        ),
        ("POST", "/models/scan", {}),
    ]
    before = _state(srv, uid)
    tried = 0
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for who, headers in CALLERS.items():
            for method, path, kw in writes:  # a scan needs a tenant allowed every namespace
                r = c.request(method, path, headers=headers, **kw)
                tried += 1
                want = {403} if who == "other tenant" else {401}
                assert r.status_code in want, f"{who} {method} {path}: {r.status_code} {r.text}"
                assert _state(srv, uid) == before, f"{who} {method} {path} changed something"
    # the owner still can
    assert httpx.post(f"{srv.url}/v1/uploads/{uid}/commit", headers=acme).status_code == 200
    record("tenants", "write_requests_refused", tried, add=True)


def test_regression_odd_register_and_file_dir_clash_are_4xx(jailed: Any) -> None:
    # Found by the hostile corpus: a multipart upload with files "a" and "a/b" answered 500
    # (FileExistsError while building the version dir); POST /models/register with a
    # 5000-character path answered 500 (ENAMETOOLONG) and stored a dict as "framework".
    url = jailed.url
    with httpx.Client(base_url=url, timeout=30) as c:
        for names in (["a", "a/b"], ["a/b", "a"]):
            manifest = json.dumps(manifest_for("ns/fd@v1", {"a": b"x"} if names[0] == "a" else {}))
            parts = [("model_files", (n, n.encode())) for n in names]
            r = c.post(
                "/models/upload", data={"model_id": "ns/fd@v1", "manifest": manifest}, files=parts
            )
            _assert_4xx(r, f"file and dir {names}")
        for body in (
            {"model_id": "ns/r@v1", "path": "a" * 5000},
            {"model_id": "ns/r@v1", "path": {"a": 1}},
            {"model_id": "ns/r@v1", "framework": {"x": [1]}},
            {"model_id": "ns/r@v1", "description": ["x"]},
        ):
            _assert_4xx(c.post("/models/register", json=body), f"register {str(body)[:40]}")
        assert c.get("/models").json()["total"] == 0
    assert check_fs_root(jailed.jail / "models") == (0, [])
