"""Model signatures (model.sig, OpenSSF model signing format) on the client: ``axon sign``,
``axon verify --signature``, ``axon info``, the format's checks with real keys made here, and
interoperability with the ``model_signing`` CLI both ways."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from axon.cache import Cache
from axon.errors import EXIT_INTEGRITY, EXIT_OK
from axon.signing import sign_model, verify_model
from modelpkg import signing
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.refs import ModelRef
from modelpkg.signing import SIGNATURE_NAME, SignatureError
from tests.fixtures.common import require_module, require_program
from tests.fixtures.signing import make_chain, make_key
from tests.helpers import run_axon

MODEL_SIGNING = shutil.which("model_signing", path=str(Path(sys.executable).parent))


def _entries(files: dict[str, bytes]) -> list[FileEntry]:
    return [FileEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in sorted(files.items())]


FILES = {"weights.bin": b"\x00\x01" * 100, "config.json": b"{}\n", "tok/vocab.txt": b"a\nb\n"}


def _trusted(path: Path) -> list[signing.TrustedKey]:
    return signing.load_trusted(path)


# ---- the format ---------------------------------------------------------------------------
def test_key_signature_verifies_and_names_the_trusted_key(tmp_path: Path) -> None:
    keys = make_key(tmp_path, "alice")
    data = signing.sign(_entries(FILES), "hf/m@v1", signing.load_private_key(keys.private))
    signer = signing.verify(data, _entries(FILES), _trusted(keys.public))
    assert signer.kind == "key" and signer.trusted_as == "alice.pub"
    assert signer.key_id == signing.key_id(keys.key.public_key())
    assert signer.model_name == "hf/m@v1"
    bundle = json.loads(data)
    assert bundle["mediaType"] == signing.BUNDLE_MEDIA_TYPE
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    names = [r["name"] for r in statement["predicate"]["resources"]]
    assert names == sorted(FILES)  # the manifest's digests, sorted as model_signing sorts
    assert statement["predicate"]["serialization"]["ignore_paths"] == [
        "manifest.yaml",
        SIGNATURE_NAME,
        ".axon_metadata.json",
    ]


def test_model_sig_itself_is_not_signed(tmp_path: Path) -> None:
    keys = make_key(tmp_path, "alice")
    entries = [*_entries(FILES), FileEntry(SIGNATURE_NAME, 10, "ab" * 32)]
    data = signing.sign(entries, "m", signing.load_private_key(keys.private))
    # the listed model.sig (whatever its digest) is not part of the signed set
    signing.verify(data, [*_entries(FILES), FileEntry(SIGNATURE_NAME, 1, "cd" * 32)],
                   _trusted(keys.public))  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("byte", "changed since signed: weights.bin"),
        ("extra", "not covered by the signature: extra.bin"),
        ("missing", "signed but not in the model: config.json"),
        ("renamed", "signed but not in the model: config.json"),
        ("other set", "not covered by the signature: other.bin"),
    ],
)
def test_each_tampering_is_a_mismatch(tmp_path: Path, change: str, expected: str) -> None:
    keys = make_key(tmp_path, "alice")
    data = signing.sign(_entries(FILES), "m", signing.load_private_key(keys.private))
    files = dict(FILES)
    if change == "byte":
        files["weights.bin"] = b"\x00\x02" + files["weights.bin"][2:]
    elif change == "extra":
        files["extra.bin"] = b"x"
    elif change == "missing":
        del files["config.json"]
    elif change == "renamed":
        files["config2.json"] = files.pop("config.json")
    else:
        files = {"other.bin": b"other"}
    with pytest.raises(SignatureError) as err:
        signing.verify(data, _entries(files), _trusted(keys.public))
    assert err.value.code == signing.MISMATCH
    assert expected in str(err.value)
    assert err.value.exit_code == EXIT_INTEGRITY


def test_untrusted_key_and_altered_statement(tmp_path: Path) -> None:
    alice, mallory = make_key(tmp_path, "alice"), make_key(tmp_path, "mallory")
    data = signing.sign(_entries(FILES), "m", signing.load_private_key(mallory.private))
    with pytest.raises(SignatureError) as err:
        signing.verify(data, _entries(FILES), _trusted(alice.public))
    assert err.value.code == signing.UNTRUSTED
    # a statement altered after signing (a digest swapped in): the signature no longer holds
    good = signing.sign(_entries(FILES), "m", signing.load_private_key(alice.private))
    bundle = json.loads(good)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    forged = {**FILES, "weights.bin": b"evil"}
    statement["predicate"]["resources"] = signing.statement_for(_entries(forged), "m")["predicate"][
        "resources"
    ]
    statement["subject"] = signing.statement_for(_entries(forged), "m")["subject"]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(SignatureError) as err:
        signing.verify(json.dumps(bundle).encode(), _entries(forged), _trusted(alice.public))
    assert err.value.code == signing.INVALID


def test_certificate_chain_signature(tmp_path: Path) -> None:
    chain = make_chain(tmp_path / "ca")
    key = signing.load_private_key(chain.key)
    leaf = signing.load_certificates(chain.leaf)[0]
    mid = signing.load_certificates(chain.intermediate)[0]
    data = signing.sign(_entries(FILES), "m", key, certificate=leaf, chain=[mid])
    signer = signing.verify(data, _entries(FILES), _trusted(chain.root))
    assert signer.kind == "certificate" and signer.identities == ("ml@example.org",)
    assert signer.trusted_as == chain.root.name
    other = make_chain(tmp_path / "other", name="other")
    with pytest.raises(SignatureError) as err:
        signing.verify(data, _entries(FILES), _trusted(other.root))
    assert err.value.code == signing.UNTRUSTED
    # without its intermediate the leaf does not reach the root
    alone = signing.sign(_entries(FILES), "m", key, certificate=leaf)
    with pytest.raises(SignatureError) as err:
        signing.verify(alone, _entries(FILES), _trusted(chain.root))
    assert err.value.code == signing.UNTRUSTED
    # a key trusted as a bare public key does not vouch for a certificate it did not issue
    with pytest.raises(SignatureError):
        signing.verify(data, _entries(FILES), _trusted(make_key(tmp_path, "k").public))


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not json", b"{}", b'{"mediaType": "x"}', b"[1]", b'{"mediaType": 3}'],
)
def test_garbage_is_an_invalid_signature(tmp_path: Path, garbage: bytes) -> None:
    keys = make_key(tmp_path, "alice")
    with pytest.raises(SignatureError) as err:
        signing.verify(garbage, _entries(FILES), _trusted(keys.public))
    assert err.value.code == signing.INVALID


def test_trusted_key_files_are_checked(tmp_path: Path) -> None:
    keys = make_key(tmp_path / "k", "alice")
    with pytest.raises(signing.ConfigError, match="private key does not belong"):
        signing.load_trusted(keys.private)
    (tmp_path / "empty.pem").write_text("nothing\n")
    with pytest.raises(signing.ConfigError, match="no PEM"):
        signing.load_trusted(tmp_path / "empty.pem")
    with pytest.raises(signing.ConfigError, match=r"alice\.pem"):  # a dir with a private key
        signing.load_trusted(tmp_path / "k")
    keys.private.unlink()
    assert [k.name for k in signing.load_trusted(tmp_path / "k")] == ["alice.pub"]


# ---- axon sign / verify / info ------------------------------------------------------------
def test_axon_sign_lists_model_sig_and_verify_checks_it(
    tmp_path: Path, installed_model: ModelRef
) -> None:
    keys = make_key(tmp_path / "keys", "alice")
    run = run_axon("sign", str(installed_model), "--key", str(keys.private))
    assert run.code == EXIT_OK, run.err
    assert "signed hf/tiny-bert@v1" in run.out
    cache = Cache.from_config()
    model = cache.get(installed_model)
    listed = {f.path: f for f in model.manifest.files}
    sig = (model.path / SIGNATURE_NAME).read_bytes()
    assert listed[SIGNATURE_NAME].sha256 == hashlib.sha256(sig).hexdigest()
    assert run_axon("verify", str(installed_model)).code == EXIT_OK  # model.sig is a file
    ok = run_axon("verify", str(installed_model), "--signature", "--trusted-key", str(keys.public))
    assert ok.code == EXIT_OK, ok.err
    assert "signed by key sha256:" in ok.out and "trusted as alice.pub" in ok.out
    info = run_axon("info", str(installed_model))
    assert "signed" in info.out and "key sha256:" in info.out
    assert run_axon("info", str(installed_model), "--json").json()["signature"]["valid"] is True

    other = make_key(tmp_path / "keys", "bob")
    bad = run_axon(
        "verify", str(installed_model), "--signature", "--trusted-key", str(other.public)
    )
    assert bad.code == EXIT_INTEGRITY
    assert "not trusted" in bad.err

    # a file changed after signing, the manifest updated to match: the signature catches it
    weights = next(f for f in model.manifest.files if f.path == "model.safetensors")
    (model.path / weights.path).write_bytes(b"retrained")
    entry = FileEntry(weights.path, 9, hashlib.sha256(b"retrained").hexdigest())
    files = [entry if f.path == weights.path else f for f in model.manifest.files]
    (model.path / "manifest.yaml").write_text(model.manifest.with_files(files).to_yaml())
    assert run_axon("verify", str(installed_model)).code == EXIT_OK  # files match manifest
    tampered = run_axon(
        "verify", str(installed_model), "--signature", "--trusted-key", str(keys.public)
    )
    assert tampered.code == EXIT_INTEGRITY
    assert f"changed since signed: {weights.path}" in tampered.err
    assert "INVALID" in run_axon("info", str(installed_model)).out


def test_axon_sign_errors(tmp_path: Path, installed_model: ModelRef) -> None:
    rsa = tmp_path / "rsa.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-out", str(rsa)], check=True,
        capture_output=True,
    )  # fmt: skip
    run = run_axon("sign", str(installed_model), "--key", str(rsa))
    assert run.code == 6 and "elliptic-curve" in run.err and "Traceback" not in run.err
    assert run_axon("sign", str(installed_model)).code == 2
    unsigned = run_axon("verify", str(installed_model), "--signature")
    assert unsigned.code == EXIT_INTEGRITY and "axon sign" in unsigned.err


def test_certificate_signing_from_the_cli(tmp_path: Path, installed_model: ModelRef) -> None:
    chain = make_chain(tmp_path / "ca")
    run = run_axon(
        "sign", str(installed_model), "--key", str(chain.key), "--cert", str(chain.leaf),
        "--cert-chain", str(chain.intermediate), "--json",
    )  # fmt: skip
    assert run.code == EXIT_OK, run.err
    assert run.json()["signer"]["identities"] == ["ml@example.org"]
    signer = verify_model(Cache.from_config(), installed_model, (chain.root,))
    assert signer.trusted_as == chain.root.name


# ---- the model_signing CLI, both ways -----------------------------------------------------


@pytest.fixture
def model_signing_cli() -> str:
    """The ``model_signing`` CLI beside this Python (or on PATH): skips locally without it,
    fails under CI=true."""
    require_module("model_signing", "signing")
    return MODEL_SIGNING or require_program("model_signing", "model-signing (pip, '.[signing]')")


needs_cli = pytest.mark.usefixtures("model_signing_cli")


def _ms(*args: str) -> subprocess.CompletedProcess[str]:
    cli = MODEL_SIGNING or shutil.which("model_signing")
    assert cli is not None
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=120)


@needs_cli
def test_model_signing_cli_verifies_what_axon_signed(
    tmp_path: Path, installed_model: ModelRef
) -> None:
    keys = make_key(tmp_path / "keys", "alice")
    cache = Cache.from_config()
    sign_model(cache, installed_model, key=keys.private)
    model = cache.get(installed_model)
    # the cached model directory as it is (manifest.yaml, model.sig, axon's metadata beside)
    ok = _ms("verify", "key", str(model.path), "--signature", str(model.path / SIGNATURE_NAME),
             "--public_key", str(keys.public))  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    served = tmp_path / "served"
    shutil.copytree(model.path, served)
    (served / "model.safetensors").write_bytes(b"changed")
    bad = _ms("verify", "key", str(served), "--signature", str(served / SIGNATURE_NAME),
              "--public_key", str(keys.public))  # fmt: skip
    assert bad.returncode != 0


@needs_cli
def test_model_signing_cli_verifies_a_certificate_signature(
    tmp_path: Path, installed_model: ModelRef
) -> None:
    chain = make_chain(tmp_path / "ca")
    cache = Cache.from_config()
    sign_model(cache, installed_model, key=chain.key, certificate=chain.leaf,
               chain=(chain.intermediate,))  # fmt: skip
    served = tmp_path / "served"
    shutil.copytree(cache.get(installed_model).path, served)
    (served / ".axon_metadata.json").unlink()
    ok = _ms("verify", "certificate", str(served), "--signature", str(served / SIGNATURE_NAME),
             "--certificate_chain", str(chain.root))  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr


@needs_cli
def test_axon_verifies_what_the_model_signing_cli_signed(
    tmp_path: Path, make_model_dir, install_model
) -> None:
    keys = make_key(tmp_path / "keys", "alice")
    source = make_model_dir("signed-elsewhere")
    run = _ms("sign", "key", str(source), "--private_key", str(keys.private),
              "--signature", str(source / SIGNATURE_NAME))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    ref = install_model(source, "hf/signed@v1")
    signer = verify_model(Cache.from_config(), ref, (keys.public,))
    assert signer.trusted_as == "alice.pub"
    manifest = Manifest.load(Cache.from_config().path_for(ref))
    assert SIGNATURE_NAME in {f.path for f in manifest.files}


def test_nothing_trusted_accepts_nothing(tmp_path: Path) -> None:
    keys = make_key(tmp_path, "alice")
    data = signing.sign(_entries(FILES), "m", signing.load_private_key(keys.private))
    with pytest.raises(SignatureError) as err:
        signing.verify(data, _entries(FILES), [])
    assert err.value.code == signing.UNTRUSTED
    chain = make_chain(tmp_path / "ca")
    leaf = signing.load_certificates(chain.leaf)[0]
    cert_sig = signing.sign(
        _entries(FILES), "m", signing.load_private_key(chain.key), certificate=leaf
    )
    with pytest.raises(SignatureError):
        signing.verify(cert_sig, _entries(FILES), [])
    # a local look at a certificate signature's own consistency, trust aside
    assert signing.verify(cert_sig, _entries(FILES), [], check_trust=False).trusted_as is None


def test_a_key_with_a_password(tmp_path: Path, installed_model: ModelRef) -> None:
    from cryptography.hazmat.primitives import serialization

    keys = make_key(tmp_path / "keys", "locked")
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        keys.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    no_password = run_axon("sign", str(installed_model), "--key", str(locked))
    assert no_password.code == 6 and "AXON_SIGNING_PASSWORD" in no_password.err
    wrong = run_axon("sign", str(installed_model), "--key", str(locked),
                     env={"AXON_SIGNING_PASSWORD": "nope"})  # fmt: skip
    assert wrong.code == 6 and "password does not decrypt" in wrong.err
    ok = run_axon("sign", str(installed_model), "--key", str(locked),
                  env={"AXON_SIGNING_PASSWORD": "s3cret"})  # fmt: skip
    assert ok.code == EXIT_OK, ok.err
    assert verify_model(Cache.from_config(), installed_model, (keys.public,)).trusted_as


def test_a_keyless_sigstore_bundle_is_refused_with_its_reason(tmp_path: Path) -> None:
    keys = make_key(tmp_path, "alice")
    bundle = json.loads(signing.sign(_entries(FILES), "m", signing.load_private_key(keys.private)))
    bundle["verificationMaterial"] = {"certificate": {"rawBytes": "AAAA"}, "tlogEntries": [{}]}
    with pytest.raises(SignatureError) as err:
        signing.verify(json.dumps(bundle).encode(), _entries(FILES), _trusted(keys.public))
    assert err.value.code == signing.INVALID and "keyless Sigstore" in str(err.value)


def test_keyless_signing_hashes_the_files_a_publish_sends_for_an_upstream_entry(
    tmp_path: Path,
) -> None:
    """An entry the upstream axon installed under ``latest/`` from a registry whose manifest
    says 1.0.0 keeps its package as ``<ns>-<name>-1.0.0.axon``: the keyless signature (what
    ``model_signing`` hashes, without the Sigstore round trip) leaves it out, as the checked
    manifest a publish sends does, so the two agree."""
    require_module("model_signing", "signing")
    from axon.signing import keyless_hashing
    from tests.fixtures.upstream_entry import place_like_upstream

    cache = Cache(tmp_path / "cache")
    final = cache.models_dir / "acme" / "tiny" / "latest"
    place_like_upstream(final, ModelRef("acme", "tiny", "1.0.0"), FILES)
    assert (final / "acme-tiny-1.0.0.axon").is_file()
    model = cache.get("acme/tiny@latest")
    manifest, _ids = cache.checked(model)
    assert sorted(f.path for f in manifest.files) == sorted(FILES)
    hashed = keyless_hashing(model).hash(model.path)
    resources = {d.identifier: d.digest.digest_hex for d in hashed.resource_descriptors()}
    assert sorted(resources) == sorted(FILES)
    signing.compare(signing.Statement("", resources), manifest.files)
