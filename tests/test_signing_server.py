"""``mlos-core serve --trusted-keys``: a real server takes only models signed by a key it
trusts for the namespace, on every way in (upload API, one-shot, filesystem copy + register,
scan, SSH, S3 sync); each tampering is refused and the previous version keeps serving."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.cache import Cache
from axon.errors import EXIT_INTEGRITY, EXIT_OK
from axon.publish import PublishOptions, publish
from axon.signing import sign_model
from modelpkg import signing
from modelpkg.manifest import FileEntry
from modelpkg.refs import ModelRef
from modelpkg.signing import SIGNATURE_NAME
from tests.fixtures.mlos import manifest_for
from tests.fixtures.signing import KeyPair, make_chain, make_key, trusted_dir
from tests.helpers import run_axon, write_config

FAST = PublishOptions(retries=0)


def _home() -> Path:
    return Path(os.environ["AXON_HOME"])


def _quoted(model_id: str) -> str:
    return model_id.replace("/", "%2F").replace("@", "%40")


def _record(url: str, model_id: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/models/{_quoted(model_id)}", timeout=5)


def _refusals(url: str) -> dict[str, int]:
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("mlos_signature_refusals_total{"):
            labels, _, n = line.partition("} ")
            out[labels.removeprefix("mlos_signature_refusals_total{")] = int(n)
    return out


def _signed(files: dict[str, bytes], key: KeyPair, name: str = "m") -> dict[str, bytes]:
    """``files`` plus the model.sig over them."""
    entries = [FileEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()]
    sig = signing.sign(entries, name, signing.load_private_key(key.private))
    return {**files, SIGNATURE_NAME: sig}


def _upload(url: str, model_id: str, files: dict[str, bytes], **headers: str) -> httpx.Response:
    """The upload protocol by hand: open, send what is needed, commit; the first refusal."""
    by_sha = {hashlib.sha256(b).hexdigest(): b for b in files.values()}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        r = c.post("/v1/uploads", json={"model_id": model_id,
                                        "manifest": manifest_for(model_id, files)})  # fmt: skip
        if r.status_code != 201:
            return r
        opened = r.json()
        for need in opened["needed"]:
            c.put(
                f"/v1/uploads/{opened['upload_id']}/blobs/{need['sha256']}",
                content=by_sha[need["sha256"]],
            ).raise_for_status()
        return c.post(f"/v1/uploads/{opened['upload_id']}/commit")


def _visible(srv: Any, model_id: str) -> dict[str, str]:
    ref = ModelRef.parse(model_id)
    root = srv.models_dir / ref.relpath
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.yaml"
    }


FILES = {"weights.bin": os.urandom(3000), "config.json": b'{"a": 1}\n', "tok/v.txt": b"a\nb\n"}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: make_key(tmp_path / "keys", name) for name in ("alice", "bob")}


@pytest.fixture
def trusted(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    """A --trusted-keys directory holding alice's public key only."""
    return trusted_dir(tmp_path / "trusted", keys["alice"])


# ---- the upload API -------------------------------------------------------------------------
def test_unsigned_publish_fails_before_sending_bytes(
    mlos_server, trusted: Path, installed_model: ModelRef
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    run = run_axon("publish", str(installed_model), "-t", srv.url, "--json")
    assert run.code == EXIT_INTEGRITY, run.err
    (r,) = run.json()["results"]
    assert r["bytes_sent"] == 0 and not r["ok"]
    assert "axon sign" in r["error"]["message"] and "model.sig" in r["error"]["message"]
    assert run.err.count("axon sign") == 1  # the hint once, not twice
    assert r["error"]["code"] == signing.REQUIRED
    assert _record(srv.url, str(installed_model)).status_code == 404
    assert _refusals(srv.url) == {'source="upload",reason="signature_required"': 1}
    assert httpx.get(f"{srv.url}/v1/signing", timeout=5).json()["required_everywhere"] is True


def test_signed_publish_is_accepted_and_reports_its_signer(
    mlos_server, trusted: Path, keys: dict[str, KeyPair], installed_model: ModelRef
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    sign_model(Cache.from_config(), installed_model, key=keys["alice"].private)
    result = publish(installed_model, srv.url, FAST)
    assert result.ok, result.results[0].error
    record = _record(srv.url, str(installed_model)).json()
    assert record["signer"]["kind"] == "key" and record["signer"]["trusted_as"] == "alice.pub"
    assert record["signature_required"] is True
    upstream = httpx.get(f"{srv.url}/models/{_quoted(str(installed_model))}", timeout=5).json()
    assert upstream["signer"] == record["signer"]
    assert SIGNATURE_NAME in _visible(srv, str(installed_model))
    commits = Path(srv.log_path).read_text().count("/commit")
    again = publish(installed_model, srv.url, FAST)  # unchanged: the conditional open
    assert again.ok and again.results[0].bytes_sent == 0
    assert Path(srv.log_path).read_text().count("/commit") == commits  # nothing to commit


def test_untrusted_signer_is_refused_and_the_old_version_keeps_serving(
    mlos_server, trusted: Path, keys: dict[str, KeyPair]
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    assert _upload(srv.url, "hf/m@v1", _signed(FILES, keys["alice"])).status_code == 200
    before = _visible(srv, "hf/m@v1")
    bad = _upload(srv.url, "hf/m@v1", _signed({**FILES, "config.json": b"{}"}, keys["bob"]))
    assert bad.status_code == 403 and bad.json()["code"] == signing.UNTRUSTED
    assert "not trusted for this namespace" in bad.json()["message"]
    assert _visible(srv, "hf/m@v1") == before
    assert _record(srv.url, "hf/m@v1").json()["signer"]["trusted_as"] == "alice.pub"


@pytest.mark.parametrize("tamper", ["changed byte", "extra file", "renamed file", "other set"])
def test_each_tampering_is_refused_and_the_old_version_keeps_serving(
    mlos_server, trusted: Path, keys: dict[str, KeyPair], tamper: str
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    good = _signed(FILES, keys["alice"])
    assert _upload(srv.url, "hf/m@v1", good).status_code == 200
    before = _visible(srv, "hf/m@v1")
    files = dict(good)  # alice's signature over FILES, the files changed beside it
    if tamper == "changed byte":
        files["weights.bin"] = b"\xff" + files["weights.bin"][1:]
    elif tamper == "extra file":
        files["backdoor.py"] = b"import os\n"
    elif tamper == "renamed file":
        files["tok/w.txt"] = files.pop("tok/v.txt")
    else:  # alice's signature of another model
        other = _signed({"other.bin": b"other"}, keys["alice"])
        files[SIGNATURE_NAME] = other[SIGNATURE_NAME]
    r = _upload(srv.url, "hf/m@v1", files)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == signing.MISMATCH
    assert "nothing was made visible" in r.json()["message"]
    assert _visible(srv, "hf/m@v1") == before
    assert _refusals(srv.url) == {'source="upload",reason="signature_mismatch"': 1}


def test_a_key_trusted_for_tenant_a_cannot_sign_for_tenant_b(
    mlos_server, keys: dict[str, KeyPair]
) -> None:
    tokens = {
        "tenants": {
            "alpha": {"tokens": ["alpha-token"], "namespaces": ["alpha"],
                      "trusted_keys": [str(keys["alice"].public)]},
            "bravo": {"tokens": ["bravo-token"], "namespaces": ["bravo"],
                      "trusted_keys": [str(keys["bob"].public)]},
            "free": {"tokens": ["free-token"], "namespaces": ["free"]},
            "locked": {"tokens": ["locked-token"], "namespaces": ["locked"], "trusted_keys": []},
        }
    }  # fmt: skip
    srv = mlos_server(no_fsync=True, tokens=tokens)
    alpha = {"Authorization": "Bearer alpha-token"}
    bravo = {"Authorization": "Bearer bravo-token"}
    assert _upload(srv.url, "alpha/m@v1", _signed(FILES, keys["alice"]), **alpha).status_code == 200
    assert _upload(srv.url, "bravo/m@v1", _signed(FILES, keys["bob"]), **bravo).status_code == 200
    r = _upload(srv.url, "bravo/m@v2", _signed(FILES, keys["alice"]), **bravo)
    assert r.status_code == 403 and r.json()["code"] == signing.UNTRUSTED
    assert _record(srv.url, "bravo/m@v2").status_code == 404
    # a namespace no tenant lists keys for takes unsigned models
    free = {"Authorization": "Bearer free-token"}
    assert _upload(srv.url, "free/m@v1", FILES, **free).status_code == 200
    assert _record(srv.url, "free/m@v1").json()["signer"] is None
    # a tenant whose list of trusted keys is empty takes no model at all, signed or not
    locked = {"Authorization": "Bearer locked-token"}
    r = _upload(srv.url, "locked/m@v1", _signed(FILES, keys["alice"]), **locked)
    assert r.status_code == 403 and r.json()["code"] == signing.UNTRUSTED
    assert "no key is trusted" in r.json()["message"]
    policy = httpx.get(f"{srv.url}/v1/signing?namespace=bravo", timeout=5).json()
    assert policy["required"] is True
    assert [k["name"] for k in policy["trusted_keys"]] == ["bravo:bob.pub"]


def test_certificate_chain_signed_publish(
    mlos_server, tmp_path: Path, installed_model: ModelRef
) -> None:
    chain = make_chain(tmp_path / "ca")
    other = make_chain(tmp_path / "other", name="other")
    trusted = tmp_path / "trusted-ca"
    trusted.mkdir()
    shutil.copy(chain.root, trusted / "release-root.pem")
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    cache = Cache.from_config()
    sign_model(cache, installed_model, key=other.key, certificate=other.leaf,
               chain=(other.intermediate,))  # fmt: skip
    refused = publish(installed_model, srv.url, FAST)
    assert not refused.ok and refused.exit_code == EXIT_INTEGRITY
    assert "does not chain to a CA trusted" in refused.results[0].error["message"]
    sign_model(cache, installed_model, key=chain.key, certificate=chain.leaf,
               chain=(chain.intermediate,))  # fmt: skip
    assert publish(installed_model, srv.url, FAST).ok
    signer = _record(srv.url, str(installed_model)).json()["signer"]
    assert signer["identities"] == ["ml@example.org"]
    assert signer["trusted_as"] == "release-root.pem"


def test_one_shot_upload_is_checked(mlos_server, trusted: Path, keys: dict[str, KeyPair]) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)

    def oneshot(model_id: str, files: dict[str, bytes]) -> httpx.Response:
        parts = [("model_files", (p, b, "application/octet-stream")) for p, b in files.items()]
        import json

        return httpx.post(
            f"{srv.url}/models/upload",
            data={"model_id": model_id, "manifest": json.dumps(manifest_for(model_id, files))},
            files=parts,
            timeout=30,
        )

    good = _signed(FILES, keys["alice"])
    assert oneshot("hf/one@v1", good).status_code == 201
    assert _record(srv.url, "hf/one@v1").json()["signer"]["trusted_as"] == "alice.pub"
    r = oneshot("hf/one@v1", {**good, "extra.bin": b"x"})
    assert r.status_code == 422 and r.json()["code"] == signing.MISMATCH
    assert oneshot("hf/one@v2", FILES).status_code == 403
    assert _refusals(srv.url) == {
        'source="oneshot",reason="signature_mismatch"': 1,
        'source="oneshot",reason="signature_required"': 1,
    }


# ---- filesystem copy, register, scan --------------------------------------------------------
def test_filesystem_publish_checks_before_copying(
    mlos_server,
    trusted: Path,
    keys: dict[str, KeyPair],
    installed_model: ModelRef,
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    target = {"endpoint": srv.url, "access_method": "filesystem",
              "storage_path": str(srv.models_dir)}  # fmt: skip
    write_config(_home(), {"local": target})
    final = srv.models_dir / installed_model.relpath
    unsigned = run_axon("publish", str(installed_model), "-t", "local")
    assert unsigned.code == EXIT_INTEGRITY
    assert "axon sign" in unsigned.err and "nothing was sent" in unsigned.err
    assert not final.exists()
    cache = Cache.from_config()
    sign_model(cache, installed_model, key=keys["bob"].private)
    untrusted = run_axon("publish", str(installed_model), "-t", "local")
    assert untrusted.code == EXIT_INTEGRITY and "not trusted" in untrusted.err
    assert not final.exists()
    sign_model(cache, installed_model, key=keys["alice"].private)
    ok = run_axon("publish", str(installed_model), "-t", "local")
    assert ok.code == EXIT_OK, ok.err
    assert (final / SIGNATURE_NAME).is_file()
    assert _record(srv.url, str(installed_model)).json()["signer"]["trusted_as"] == "alice.pub"


def test_register_and_scan_refuse_what_was_copied_around_axon(
    mlos_server, trusted: Path, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    srv = mlos_server(no_fsync=True, trusted_keys=trusted)
    good = _signed(FILES, keys["alice"])

    def place(model_id: str, files: dict[str, bytes], manifest_files: dict[str, bytes]) -> None:
        import yaml

        root = srv.models_dir / ModelRef.parse(model_id).relpath
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        (root / "manifest.yaml").write_text(yaml.safe_dump(manifest_for(model_id, manifest_files)))

    place("hf/ok@v1", good, good)
    r = httpx.post(f"{srv.url}/models/register", json={"model_id": "hf/ok@v1"}, timeout=5)
    assert r.status_code in (200, 201), r.text
    assert _record(srv.url, "hf/ok@v1").json()["signer"]["trusted_as"] == "alice.pub"
    tampered = {**good, "weights.bin": b"evil"}
    place("hf/bad@v1", tampered, tampered)
    r = httpx.post(f"{srv.url}/models/register", json={"model_id": "hf/bad@v1"}, timeout=5)
    assert r.status_code == 422 and r.json()["code"] == signing.MISMATCH
    place("hf/none@v1", FILES, FILES)
    r = httpx.post(f"{srv.url}/models/register", json={"model_id": "hf/none@v1"}, timeout=5)
    assert r.status_code == 403 and r.json()["code"] == signing.REQUIRED
    scan = httpx.post(f"{srv.url}/models/scan", timeout=10)
    assert scan.status_code == 200
    ids = {m["id"] for m in httpx.get(f"{srv.url}/models", timeout=5).json()["models"]}
    assert "hf/ok@v1" in ids and not {"hf/bad@v1", "hf/none@v1"} & ids
    refusals = _refusals(srv.url)
    assert refusals['source="scan",reason="signature_mismatch"'] == 1
    assert refusals['source="scan",reason="signature_required"'] == 1
    # a restart scans again: the refused ones stay out, the signed one is back with its signer
    srv.restart()
    ids = {m["id"] for m in httpx.get(f"{srv.url}/models", timeout=5).json()["models"]}
    assert ids == {"hf/ok@v1"}
    assert _record(srv.url, "hf/ok@v1").json()["signer"]["trusted_as"] == "alice.pub"


def test_bad_trusted_keys_stop_the_server_with_a_clear_message(
    tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(keys["alice"].private, bad / "oops.pem")
    run = subprocess.run(
        [sys.executable, "-m", "mlos_core", "serve", "--port", "1", "--models-dir",
         str(tmp_path / "models"), "--trusted-keys", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "oops.pem" in run.stderr and "private key does not belong" in run.stderr
    assert "Traceback" not in run.stderr


def test_rollback_to_a_version_the_policy_refuses_is_refused(
    mlos_server, trusted: Path, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    before = mlos_server(models_dir=models, no_fsync=True)  # no policy yet
    assert _upload(before.url, "hf/m@v1", FILES).status_code == 200
    before.stop()
    srv = mlos_server(models_dir=models, no_fsync=True, trusted_keys=trusted)
    assert _record(srv.url, "hf/m@v1").status_code == 404  # the unsigned one is not served
    good = _signed(FILES, keys["alice"])
    assert _upload(srv.url, "hf/m@v1", good).status_code == 200  # the unsigned one kept aside
    r = httpx.post(f"{srv.url}/v1/models/{_quoted('hf/m@v1')}/rollback", timeout=10)
    assert r.status_code == 403 and r.json()["code"] == signing.REQUIRED
    assert SIGNATURE_NAME in _visible(srv, "hf/m@v1")  # the signed version is back in place
    assert _record(srv.url, "hf/m@v1").json()["signer"]["trusted_as"] == "alice.pub"
