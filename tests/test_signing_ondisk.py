"""A signed directory the server did not receive itself (a copy, then ``POST /models/scan``
or ``POST /models/register``) must hold on disk exactly what its manifest lists and its
signature covers: a changed byte, a renamed, an extra or a missing file, each under an
untouched manifest, is refused (422 ``signature_mismatch`` naming the file), nothing is
registered and the previous registration keeps serving. Each file is hashed once: a second
scan, and a restart, read no byte again (``mlos_signature_hashed_files_total``)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from modelpkg import signing
from modelpkg.manifest import FileEntry
from modelpkg.refs import ModelRef
from modelpkg.signing import SIGNATURE_NAME
from tests.fixtures.mlos import manifest_for
from tests.fixtures.signing import KeyPair, make_key, trusted_dir

FILES = {"weights.bin": os.urandom(3000), "config.json": b'{"a": 1}\n', "tok/v.txt": b"a\nb\n"}


def _signed(files: dict[str, bytes], key: KeyPair) -> dict[str, bytes]:
    entries = [FileEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()]
    sig = signing.sign(entries, "m", signing.load_private_key(key.private))
    return {**files, SIGNATURE_NAME: sig}


def _place(models_dir: Path, model_id: str, files: dict[str, bytes]) -> Path:
    """Copy a signed model into the models dir as another tool would: files + manifest."""
    root = models_dir / ModelRef.parse(model_id).relpath
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest_for(model_id, files)))
    return root


def _quoted(model_id: str) -> str:
    return model_id.replace("/", "%2F").replace("@", "%40")


def _record(url: str, model_id: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/models/{_quoted(model_id)}", timeout=5)


def _metric(url: str, name: str) -> int:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _flip_byte(root: Path) -> str:
    path = root / "weights.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    return "weights.bin"


def _rename(root: Path) -> str:
    (root / "config.json").rename(root / "config2.json")
    (root / "backdoor.py").write_text("import os\n")
    return "config.json"


def _extra(root: Path) -> str:
    (root / "tok" / "backdoor.py").write_text("import os\n")
    return "tok/backdoor.py"


def _missing(root: Path) -> str:
    (root / "tok" / "v.txt").unlink()
    return "tok/v.txt"


def _link(root: Path) -> str:
    """The same bytes, but through a link to a file outside the model (which may change)."""
    outside = root.parent / f"outside-{root.name}.bin"
    outside.write_bytes((root / "weights.bin").read_bytes())
    (root / "weights.bin").unlink()
    (root / "weights.bin").symlink_to(outside)
    return "weights.bin"


TAMPERINGS: dict[str, Callable[[Path], str]] = {
    "symlink": _link,
    "changed_byte": _flip_byte,
    "renamed_file": _rename,
    "extra_file": _extra,
    "missing_file": _missing,
}


@pytest.fixture
def alice(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path / "keys", "alice")


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
def test_scan_and_register_refuse_files_changed_under_an_untouched_manifest(
    mlos_server, tmp_path: Path, alice: KeyPair, how: str
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted_dir(tmp_path / "trusted", alice))
    good = _signed(FILES, alice)
    # via register: the tampered copy of a model already served at that path
    root = _place(srv.models_dir, "hf/reg@v1", good)
    r = httpx.post(f"{srv.url}/models/register", json={"model_id": "hf/reg@v1"}, timeout=10)
    assert r.status_code in (200, 201), r.text
    assert _record(srv.url, "hf/reg@v1").json()["signer"]["trusted_as"] == "alice.pub"
    manifest = (root / "manifest.yaml").read_bytes()
    named = TAMPERINGS[how](root)
    assert (root / "manifest.yaml").read_bytes() == manifest  # the manifest is untouched
    r = httpx.post(f"{srv.url}/models/register", json={"model_id": "hf/reg@v1"}, timeout=10)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == signing.MISMATCH
    assert named in r.text and "Traceback" not in r.text
    assert _record(srv.url, "hf/reg@v1").status_code == 404  # its bytes are what was refused
    shutil.rmtree(root)

    # via scan: a signed copy the scan has not seen yet, tampered before the scan
    served = _place(srv.models_dir, "hf/scan@v1", good)
    scan = httpx.post(f"{srv.url}/models/scan", timeout=20)
    assert scan.status_code == 200, scan.text
    assert _record(srv.url, "hf/scan@v1").json()["signer"]["trusted_as"] == "alice.pub"
    fresh = _place(srv.models_dir, "hf/scan@v2", good)
    TAMPERINGS[how](fresh)
    scan = httpx.post(f"{srv.url}/models/scan", timeout=20)
    assert scan.status_code == 200, scan.text
    assert _record(srv.url, "hf/scan@v2").status_code == 404
    assert _record(srv.url, "hf/scan@v1").status_code == 200  # what was served keeps serving
    refused = httpx.get(f"{srv.url}/metrics", timeout=5).text
    if TAMPERINGS[how] not in (_missing, _rename):  # else skipped as a copy in progress
        assert 'refusals_total{source="scan",reason="signature_mismatch"} 1' in refused
    assert 'mlos_signature_refusals_total{source="register",reason="signature_mismatch"} 1' in (
        refused
    )
    # and tampering the one served: the next scan takes it out
    TAMPERINGS[how](served)
    assert httpx.post(f"{srv.url}/models/scan", timeout=20).status_code == 200
    assert _record(srv.url, "hf/scan@v1").status_code == 404


def test_each_file_is_hashed_once_across_scans_and_restarts(
    mlos_server, tmp_path: Path, alice: KeyPair
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted_dir(tmp_path / "trusted", alice))
    files = {f"shard-{i:03d}.bin": os.urandom(200 + i) for i in range(200)}
    good = _signed(files, alice)
    root = _place(srv.models_dir, "hf/many@v1", good)
    assert _metric(srv.url, "mlos_signature_hashed_files_total") == 0
    assert httpx.post(f"{srv.url}/models/scan", timeout=30).status_code == 200
    assert _record(srv.url, "hf/many@v1").json()["signer"]["trusted_as"] == "alice.pub"
    hashed = _metric(srv.url, "mlos_signature_hashed_files_total")
    assert hashed == len(good)  # every file once (model.sig too: it is a listed file)
    size = sum(len(b) for b in good.values())
    assert _metric(srv.url, "mlos_signature_hashed_bytes_total") == size
    # a second scan and a register of the same directory read nothing again
    assert httpx.post(f"{srv.url}/models/scan", timeout=30).status_code == 200
    r = httpx.post(f"{srv.url}/models/register", json={"model_id": "hf/many@v1"}, timeout=10)
    assert r.status_code in (200, 201), r.text
    assert _metric(srv.url, "mlos_signature_hashed_files_total") == hashed
    # a restart (its start-up scan) neither
    srv.restart()
    assert _record(srv.url, "hf/many@v1").status_code == 200
    assert _metric(srv.url, "mlos_signature_hashed_files_total") == 0
    # a file rewritten with the same size and its old mtime is hashed again (ctime moved)
    path = root / "shard-007.bin"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert httpx.post(f"{srv.url}/models/scan", timeout=30).status_code == 200
    assert _metric(srv.url, "mlos_signature_hashed_files_total") == 1
    assert _record(srv.url, "hf/many@v1").status_code == 404


def test_a_version_the_server_built_is_not_hashed_by_a_scan(
    mlos_server, tmp_path: Path, alice: KeyPair
) -> None:
    """An upload's version is hard links into the verified blob store: a scan and a restart
    check its signature without reading its bytes."""
    from tests.test_signing_server import _upload

    srv = mlos_server(no_fsync=True, trusted_keys=trusted_dir(tmp_path / "trusted", alice))
    assert _upload(srv.url, "hf/up@v1", _signed(FILES, alice)).status_code == 200
    assert httpx.post(f"{srv.url}/models/scan", timeout=20).status_code == 200
    assert _record(srv.url, "hf/up@v1").json()["signer"]["trusted_as"] == "alice.pub"
    assert _metric(srv.url, "mlos_signature_hashed_files_total") == 0
    srv.restart()
    assert _record(srv.url, "hf/up@v1").json()["signer"]["trusted_as"] == "alice.pub"
    assert _metric(srv.url, "mlos_signature_hashed_files_total") == 0
