"""``POST /models/register`` names a directory on the server: only the model's own directory in
the models dir, or one under an operator's ``--register-root`` ending in the model's
``<ns>/<name>/<version>``, reached without a symbolic link, is registered and served; a path
that is missing and one that is not allowed get the same answer; a tenant never reaches another
namespace's directory. Against a real mlos-core, with real links on a real filesystem."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.common import require
from tests.fixtures.mlos import ServerFactory, manifest_for, upload_resumable
from tests.interop.upstream import find_upstream
from tests.stress.figures import record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SECRET = "TOPSECRET=do-not-serve"
FILES = {"w.bin": b"weights"}


def model_dir(root: Path, model_id: str, *, manifest: bool = True) -> Path:
    """A model directory ``root/<ns>/<name>/<version>`` with its file and manifest.yaml."""
    ns, _, rest = model_id.partition("/")
    name, _, version = rest.partition("@")
    d = root / ns / name / version
    d.mkdir(parents=True)
    for rel, data in FILES.items():
        (d / rel).write_bytes(data)
    if manifest:
        (d / "manifest.yaml").write_text(yaml.safe_dump(manifest_for(model_id, FILES)))
    return d


def register(srv: Any, model_id: str, path: Path | str | None, **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"model_id": model_id}
    if path is not None:
        body["path"] = str(path)
    return httpx.post(f"{srv.url}/models/register", json=body, headers=headers, timeout=10)


def served_manifest(srv: Any, model_id: str) -> httpx.Response:
    return httpx.get(f"{srv.url}/v1/models/{model_id}/manifest", timeout=10)


def listed(srv: Any) -> set[str]:
    return {m["id"] for m in httpx.get(f"{srv.url}/models", timeout=10).json()["models"]}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Somewhere no root covers, holding a secret and a complete model dir (with the secret
    as its manifest's description)."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text(SECRET)
    d = model_dir(out, "ns/m@v1")
    data = yaml.safe_load((d / "manifest.yaml").read_text())
    data["metadata"]["description"] = SECRET
    (d / "manifest.yaml").write_text(yaml.safe_dump(data))
    return out


def test_missing_and_not_allowed_get_one_identical_answer(
    mlos_server: ServerFactory, tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ns" / "m").mkdir(parents=True)
    (root / "ns" / "m" / "v1").symlink_to(outside / "ns" / "m" / "v1")  # a link out of the root
    srv = mlos_server(register_root=root)
    models = srv.models_dir
    model_dir(models, "other/m@v1")
    cases = {
        "/": "/",
        "/etc": "/etc",
        "/proc/self": "/proc/self",
        "an existing dir outside every root": outside / "ns" / "m" / "v1",
        "a missing dir outside every root": tmp_path / "nowhere" / "ns" / "m" / "v1",
        "missing under the root": root / "x" / "ns" / "m" / "v2",
        "a link out of the root": root / "ns" / "m" / "v1",
        "the root itself": root,
        "the models dir": models,
        "the server's state dir": models / ".mlos",
        "another model's dir in the models dir": models / "other" / "m" / "v1",
        "the model's missing dir in the models dir": models / "ns" / "m" / "v1",
    }
    answers = {}
    for what, path in cases.items():
        r = register(srv, "ns/m@v1", path)
        answers[what] = (r.status_code, r.json())
    first = answers["/"]
    assert first[0] == 404 and first[1]["code"] == "path_not_found", first
    for what, answer in answers.items():
        assert answer == first, f"{what}: {answer} differs from {first}"
    assert str(tmp_path) not in first[1]["message"]
    # paths that are not absolute, normalised paths are refused as such (no lookup at all)
    for bad in ("relative/ns/m/v1", f"{root}/ns/m/v1/../../../../outside", "/a\x00b"):
        r = register(srv, "ns/m@v1", bad)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_path"), (bad, r.text)
    assert listed(srv) == set()
    assert served_manifest(srv, "ns/m@v1").status_code == 404
    record("register_roots", "refused_paths", len(cases) + 3, add=True)


def test_a_model_under_a_register_root_registers_and_is_served(
    mlos_server: ServerFactory, tmp_path: Path
) -> None:
    cache = tmp_path / "home" / ".axon" / "cache" / "models"
    d = model_dir(cache, "hf/bert@v1")
    model_dir(tmp_path / "second" / "deep", "hf/gpt@v2")
    link = tmp_path / "cache-link"
    link.symlink_to(cache)  # the operator's root may itself be a link: both names work
    srv = mlos_server(register_root=[link, tmp_path / "second"])
    r = register(srv, "hf/bert@v1", d)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == str(d) and r.json()["framework"] == "pytorch"
    assert register(srv, "hf/bert@v1", link / "hf" / "bert" / "v1").status_code == 200
    r = register(srv, "hf/gpt@v2", tmp_path / "second" / "deep" / "hf" / "gpt" / "v2")
    assert r.status_code == 200, r.text
    got = served_manifest(srv, "hf/bert@v1")
    assert got.status_code == 200 and yaml.safe_load(got.text)["metadata"]["name"] == "bert"
    # a path that does not end in the model's own <ns>/<name>/<version> is not its directory
    r = register(srv, "hf/other@v1", d)
    assert r.status_code == 404 and r.json()["code"] == "path_not_found"
    # a directory without manifest.yaml registers as it is (as upstream does)
    bare = model_dir(cache, "hf/bare@v1", manifest=False)
    assert register(srv, "hf/bare@v1", bare).status_code == 200
    assert served_manifest(srv, "hf/bare@v1").status_code == 404
    # the model's own directory in the models dir, with or without its path
    model_dir(srv.models_dir, "local/m@v1")
    assert register(srv, "local/m@v1", None).status_code == 200
    assert register(srv, "local/m@v1", srv.models_dir / "local/m/v1").status_code == 200
    assert listed(srv) == {"hf/bert@v1", "hf/gpt@v2", "hf/bare@v1", "local/m@v1"}
    # what is registered is checked again where it is read: without the root, not served
    srv.stop()
    again = mlos_server(models_dir=srv.models_dir)
    assert served_manifest(again, "hf/bert@v1").status_code == 404
    assert served_manifest(again, "local/m@v1").status_code == 200
    record("register_roots", "allowed_cases", 8, add=True)


def test_symbolic_links_never_lead_out_of_a_root(
    mlos_server: ServerFactory, tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    srv = mlos_server(register_root=root)
    # a directory of the path is a link (out of the root, or even within it)
    (root / "a").mkdir()
    (root / "a" / "ns").symlink_to(outside / "ns")
    model_dir(root / "real", "ns/in@v1")
    (root / "b" / "ns").mkdir(parents=True)
    (root / "b" / "ns" / "in").symlink_to(root / "real" / "ns" / "in")
    for model_id, path in (
        ("ns/m@v1", root / "a" / "ns" / "m" / "v1"),
        ("ns/in@v1", root / "b" / "ns" / "in" / "v1"),
    ):
        r = register(srv, model_id, path)
        assert (r.status_code, r.json()["code"]) == (404, "path_not_found"), (path, r.text)
    # manifest.yaml itself a link to a secret: refused, nothing registered, nothing served
    d = model_dir(root, "ns/linked@v1", manifest=False)
    (d / "manifest.yaml").symlink_to(outside / "secret.txt")
    r = register(srv, "ns/linked@v1", d)
    assert (r.status_code, r.json()["code"]) == (400, "unsafe_manifest"), r.text
    assert SECRET not in r.text and "ns/linked@v1" not in listed(srv)
    # a FIFO as manifest.yaml: refused at once (opening it must not wait for a writer)
    fifo = model_dir(root, "ns/fifo@v1", manifest=False)
    os.mkfifo(fifo / "manifest.yaml")
    r = register(srv, "ns/fifo@v1", fifo)
    assert (r.status_code, r.json()["code"]) == (400, "unsafe_manifest"), r.text
    # links planted after the registration: the manifest is not served through them
    later = model_dir(root, "ns/later@v1")
    assert register(srv, "ns/later@v1", later).status_code == 200
    assert served_manifest(srv, "ns/later@v1").status_code == 200
    (later / "manifest.yaml").unlink()
    (later / "manifest.yaml").symlink_to(outside / "secret.txt")
    got = served_manifest(srv, "ns/later@v1")
    assert got.status_code == 404 and SECRET not in got.text
    swapped = model_dir(root, "ns/swapped@v1")
    assert register(srv, "ns/swapped@v1", swapped).status_code == 200
    os.rename(swapped, tmp_path / "moved-away")
    swapped.symlink_to(outside / "ns" / "m" / "v1")
    got = served_manifest(srv, "ns/swapped@v1")
    assert got.status_code == 404 and SECRET not in got.text
    # the same inside the models dir: a link there is no model directory either
    (srv.models_dir / "ns" / "m").mkdir(parents=True)
    (srv.models_dir / "ns" / "m" / "v1").symlink_to(outside / "ns" / "m" / "v1")
    assert register(srv, "ns/m@v1", None).status_code == 404
    assert served_manifest(srv, "ns/m@v1").status_code == 404
    for model in httpx.get(f"{srv.url}/models", timeout=10).json()["models"]:
        assert SECRET not in httpx.get(f"{srv.url}/models/{model['id']}", timeout=10).text
    record("register_roots", "link_cases", 7, add=True)


TENANTS = {
    "tenants": {
        "alpha": {"tokens": ["tok-alpha"], "namespaces": ["alpha"]},
        "bravo": {"tokens": ["tok-bravo"], "namespaces": ["bravo"]},
    }
}
ALPHA = {"Authorization": "Bearer tok-alpha"}
BRAVO = {"Authorization": "Bearer tok-bravo"}


def test_a_tenant_never_registers_another_namespaces_directory(
    mlos_server: ServerFactory, tmp_path: Path
) -> None:
    root = tmp_path / "shared-root"
    model_dir(root / "dev1", "bravo/private@v1")
    mine = model_dir(root / "dev2", "alpha/mine@v1")
    srv = mlos_server(tokens=TENANTS, register_root=root)
    upload_resumable(srv.url, "bravo/secret@v1", FILES, headers=BRAVO)
    bravo_dir = srv.models_dir / "bravo" / "secret" / "v1"
    not_found = register(srv, "alpha/x@v1", tmp_path / "nowhere", **ALPHA).json()
    for path in (
        bravo_dir,  # bravo's model in the models dir
        srv.models_dir / "bravo",
        root / "dev1" / "bravo" / "private" / "v1",  # bravo's directory under a shared root
    ):
        for model_id in ("alpha/x@v1", "alpha/secret@v1", "alpha/private@v1"):
            r = register(srv, model_id, path, **ALPHA)
            assert r.status_code == 404, (model_id, path, r.text)
            assert r.json()["message"] == not_found["message"].replace("alpha/x@v1", model_id)
    # bravo's own ids are bravo's to register
    assert register(srv, "bravo/secret@v1", bravo_dir, **ALPHA).status_code == 403
    assert (
        register(srv, "bravo/private@v1", root / "dev1/bravo/private/v1", **ALPHA).status_code
        == 403
    )
    assert register(srv, "alpha/mine@v1", mine).status_code == 401
    assert register(srv, "alpha/mine@v1", mine, **ALPHA).status_code == 200
    assert (
        register(srv, "bravo/private@v1", root / "dev1/bravo/private/v1", **BRAVO).status_code
        == 200
    )
    assert listed(srv) == {"bravo/secret@v1", "alpha/mine@v1", "bravo/private@v1"}
    record("register_roots", "cross_tenant_refused", 11, add=True)


def test_upstream_axon_register_sends_its_cache_path(
    mlos_server: ServerFactory, tmp_path: Path
) -> None:
    """The upstream Go ``axon register`` sends the developer's cache path on the same host:
    registered when the operator names the cache as a root, refused (404) otherwise. (Found
    as the interoperability suite finds it; under CI=true a missing binary fails.)"""
    upstream, why = find_upstream()
    require(upstream is not None, why)
    home = tmp_path / "home"
    cache = home / ".axon" / "cache" / "models"
    d = model_dir(cache, "upstreamtest/m@v1")
    (d / ".axon_metadata.json").write_text(
        '{"installed_at": "2026-01-01T00:00:00Z", "namespace": "upstreamtest", '
        '"name": "m", "version": "v1"}'
    )

    def upstream_register(srv: Any) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(home), "PATH": os.environ["PATH"], "MLOS_CORE_ENDPOINT": srv.url}
        cmd = [str(upstream), "register", "upstreamtest/m@v1"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    refused = upstream_register(mlos_server())
    assert refused.returncode != 0 and "status 404" in refused.stderr, refused.stderr
    srv = mlos_server(register_root=cache)
    done = upstream_register(srv)
    assert done.returncode == 0, done.stdout + done.stderr
    assert listed(srv) == {"upstreamtest/m@v1"}
    assert served_manifest(srv, "upstreamtest/m@v1").status_code == 200
    record("register_roots", "upstream_register", 1, add=True)
