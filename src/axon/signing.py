"""Signing cached models, checking their signatures, and an instance's signing policy.

``axon sign REF --key KEY.pem`` writes ``model.sig`` (:mod:`modelpkg.signing`, the OpenSSF
model signing format) into the cached model and lists it in its ``manifest.yaml``, so every
transport carries it like any other file. The signature covers every other file of the
model by the sha256 the manifest lists (checked against the bytes first, as a publish does).

Before a filesystem, NFS or SSH publish, :func:`preflight` asks the instance
(``GET /v1/signing``) whether the model's namespace needs a signature and which keys it
trusts, and checks the model against them: a model the instance would refuse fails before a
byte is copied, and the version it serves stays. (Over the API the instance itself refuses
an unsigned model when the upload opens, and checks the signature before the commit.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from axon.cache import Cache, housekeeping_names
from axon.errors import AxonError, TransportError
from axon.mlos_client import Fields, MlosClient, ProtocolError
from modelpkg import signing
from modelpkg.atomic import atomic_write_bytes, atomic_write_text
from modelpkg.errors import ConfigError
from modelpkg.manifest import MANIFEST_NAME, FileEntry, Manifest
from modelpkg.signing import SIGNATURE_NAME, SignatureError, Signer, TrustedKey

if TYPE_CHECKING:
    from axon.cache import CachedModel
    from axon.publish.prepared import PreparedModel
    from axon.targets import InstanceTarget
    from modelpkg.refs import ModelRef

PASSWORD_ENV = "AXON_SIGNING_PASSWORD"  # the private key's password, when it has one
POLICY_TIMEOUT = 5.0  # an instance whose API does not answer is not waited for long


@dataclass
class SignResult:
    ref: ModelRef
    path: Path  # the model.sig written
    signer: Signer
    files: int  # files the signature covers

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "signature": str(self.path),
            "files_signed": self.files,
            "signer": self.signer.to_dict(),
        }


def _password() -> bytes | None:
    value = os.environ.get(PASSWORD_ENV)
    return value.encode("utf-8") if value else None


def sign_model(
    cache: Cache,
    ref: ModelRef | str,
    *,
    key: Path,
    certificate: Path | None = None,
    chain: tuple[Path, ...] = (),
) -> SignResult:
    """Sign the cached model ``ref`` with the EC private key ``key`` (and, with
    ``certificate``, as that certificate with its ``chain``); write model.sig and list it."""
    model = cache.get(ref)
    manifest, _identities = cache.checked(model)  # every file's sha256 checked against bytes
    private = signing.load_private_key(key, _password())
    cert = None
    chain_certs: list[Any] = []
    if certificate is not None:
        certs = signing.load_certificates(certificate)
        if len(certs) != 1:
            raise ConfigError(
                f"expected one signing certificate, found {len(certs)}",
                path=str(certificate),
                hint="pass the rest of the chain with --cert-chain",
            )
        cert = certs[0]
        for path in chain:
            chain_certs += signing.load_certificates(path)
    elif chain:
        raise ConfigError("--cert-chain needs --cert (the signing certificate)")
    data = signing.sign(
        manifest.files, str(model.ref), private, certificate=cert, chain=chain_certs
    )
    return _install_signature(cache, model.ref, model.path, manifest, data)


def sign_model_keyless(cache: Cache, ref: ModelRef | str, *, staging: bool = False) -> SignResult:
    """Keyless Sigstore signing (OIDC identity, Fulcio certificate, Rekor entry) through the
    ``model_signing`` package; needs its network services and a browser or ambient OIDC
    token. The bundle is then checked to cover exactly the manifest's files."""
    try:
        from model_signing import signing as ms_signing
    except ImportError as exc:
        raise ConfigError(
            f"keyless signing needs the model-signing package ({exc})",
            hint="pip install 'axon-publish[signing]'",
        ) from exc
    model = cache.get(ref)
    manifest, _identities = cache.checked(model)
    with tempfile.TemporaryDirectory(prefix="axon-sign-") as tmp:
        out = Path(tmp) / SIGNATURE_NAME
        try:
            hashing = keyless_hashing(model)
            config = ms_signing.Config()  # type: ignore[no-untyped-call]
            config.use_sigstore_signer(use_staging=staging)
            config.set_hashing_config(hashing).sign(model.path, out)
        except Exception as exc:  # network, OIDC: the library raises what it meets
            raise TransportError(
                f"keyless signing of {model.ref} failed: {type(exc).__name__}: {exc}",
                hint="keyless signing needs the Sigstore services and an OIDC identity; "
                "sign with a key instead: axon sign REF --key KEY.pem",
            ) from exc
        data = out.read_bytes()
    resources = _statement_resources(data)
    signing.compare(signing.Statement("", resources), manifest.files)
    return _install_signature(cache, model.ref, model.path, manifest, data, keyless=True)


def keyless_hashing(model: CachedModel) -> Any:
    """The ``model_signing`` hashing config a keyless signature of ``model`` is made with:
    the directory less what is not the model's (ours and model.sig, and the upstream
    ``.axon`` package, also when it is named after the version the manifest gives rather than
    the directory's, as a registry's ``latest/`` may be), so it covers the files
    :meth:`Cache.checked` lists."""
    from model_signing import hashing as ms_hashing

    ignored = sorted({*signing.IGNORED_PATHS, *housekeeping_names(model.ref, model.manifest)})
    hashing = ms_hashing.Config()  # type: ignore[no-untyped-call]
    hashing.set_ignored_paths(paths=ignored, ignore_git_paths=False)
    return hashing


def _statement_resources(data: bytes) -> dict[str, str]:
    """The file digests a bundle's statement lists (its signature not checked here)."""
    try:
        envelope = json.loads(data)["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        return {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"model.sig: cannot read its statement ({exc})") from exc


def _install_signature(
    cache: Cache,
    ref: ModelRef,
    path: Path,
    manifest: Manifest,
    data: bytes,
    *,
    keyless: bool = False,
) -> SignResult:
    """Write model.sig into the model dir and list it in manifest.yaml (each atomically)."""
    entry = FileEntry(SIGNATURE_NAME, len(data), hashlib.sha256(data).hexdigest())
    files = signing.signed_files(manifest.files)
    atomic_write_bytes(path / SIGNATURE_NAME, data)
    atomic_write_text(path / MANIFEST_NAME, manifest.with_files([*files, entry]).to_yaml())
    cache.remember_digests(ref, [entry])
    if keyless:
        signer = Signer("certificate", "", subject="keyless Sigstore signature")
    else:
        signer = signing.Bundle.parse(data).signer(())
    return SignResult(ref, path / SIGNATURE_NAME, signer, len(files))


def load_trusted(paths: tuple[Path, ...]) -> list[TrustedKey]:
    out: list[TrustedKey] = []
    for path in paths:
        out += signing.load_trusted(path)
    return out


def verify_model(cache: Cache, ref: ModelRef | str, trusted: tuple[Path, ...] = ()) -> Signer:
    """Check the cached model's model.sig against its manifest (whose files ``axon verify``
    checks against their bytes) and, when given, the ``trusted`` keys; the signer. Without
    trusted keys a key signature cannot be checked (the bundle names its key by a hash
    only): SignatureError saying so."""
    model = cache.get(ref)
    entry = signing.signature_entry(model.manifest.files)
    if entry is None:
        raise SignatureError(
            f"{model.ref} is not signed (no {SIGNATURE_NAME} in its manifest)",
            code=signing.REQUIRED,
            path=str(model.path),
            hint=f"sign it: axon sign {model.ref} --key KEY.pem",
        )
    data = _read_signature(model.path / SIGNATURE_NAME, entry)
    keys = load_trusted(trusted)
    bundle = signing.Bundle.parse(data)
    if not keys and not bundle.chain:
        raise SignatureError(
            f"{model.ref}: model.sig was made with key sha256:{(bundle.hint or '?')[:16]}; "
            "give its public key to check it",
            code=signing.UNTRUSTED,
            path=str(model.path / SIGNATURE_NAME),
            hint=f"axon verify {model.ref} --signature --trusted-key KEY.pub",
        )
    try:
        return signing.verify(data, model.manifest.files, keys, check_trust=bool(keys))
    except SignatureError as exc:
        exc.path = str(model.path / SIGNATURE_NAME)
        raise


def _read_signature(path: Path, entry: FileEntry) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(signing.MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise SignatureError(
            f"cannot read {SIGNATURE_NAME}: {exc.strerror or exc}", path=str(path)
        ) from exc
    signing.check_signature_bytes(data, entry)
    return data


def describe_signature(model_dir: Path, manifest: Manifest) -> dict[str, Any] | None:
    """What ``axon info`` shows: who signed (not checked against any trusted key) and
    whether the signature covers the model's files as listed; None when unsigned."""
    entry = signing.signature_entry(manifest.files)
    if entry is None:
        return None
    try:
        data = _read_signature(model_dir / SIGNATURE_NAME, entry)
        bundle = signing.Bundle.parse(data)
        signer = bundle.signer(())
        statement = bundle.statement()
        signing.compare(statement, manifest.files)
    except SignatureError as exc:
        return {"signed": True, "valid": False, "problem": exc.message}
    return {"signed": True, "valid": True, "signer": signer.to_dict()}


# ---- an instance's policy -------------------------------------------------------------
@dataclass
class Policy:
    required: bool
    keys: list[TrustedKey]


def _parse_policy(data: object) -> tuple[bool, list[str]]:
    fields = Fields(data)
    fields.success()
    required = fields.flag("required")
    pems = [item.required_text("pem") for item in fields.objects("trusted_keys")]
    return required, pems


def fetch_policy(target: InstanceTarget, namespace: str, timeout: float) -> Policy | None:
    """``GET /v1/signing?namespace=`` on ``target``: its policy for ``namespace``; None
    when the instance has no such endpoint (an older mlos-core, or another MLOS Core)."""
    what = f"signing policy of namespace {namespace}"
    with MlosClient.for_target(target, min(timeout, POLICY_TIMEOUT)) as client:
        answer = client.exchange(
            "GET", f"/v1/signing?namespace={quote(namespace, safe='')}", what=what, ok=(200, 404)
        )
        if answer.status == 404:
            return None
        required, pems = client.parsed(answer, _parse_policy, what=what)
        keys: list[TrustedKey] = []
        for i, pem in enumerate(pems):
            try:
                keys += _keys_from_pem(pem, f"{target.name}#{i + 1}")
            except (ConfigError, ValueError) as exc:
                raise client.invalid(answer, f"trusted key {i + 1}: {exc}", what=what) from None
    return Policy(required, keys)


def _keys_from_pem(pem: str, name: str) -> list[TrustedKey]:
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as fh:
        fh.write(pem)
        fh.flush()
        found = signing.load_trusted(Path(fh.name))
    return [TrustedKey(name, k.public_key, k.certificate, k.key_id) for k in found]


def preflight(model: PreparedModel, target: InstanceTarget, timeout: float) -> None:
    """Before copying ``model`` to ``target`` over the filesystem, NFS or SSH: SignatureError
    (exit 5) when the instance would refuse its signature. Over the API the instance answers
    that itself when the upload opens; an instance that cannot be asked is not asked (it
    checks again when it is told of the model)."""
    if getattr(target, "access_method", "api") == "api":
        return  # an upload: the instance answers at open; or no instance at all (storage)
    try:
        policy = fetch_policy(target, model.ref.namespace, timeout)
    except ProtocolError:
        raise
    except AxonError:
        return  # unreachable now: the registration after the copy is where it is refused
    if policy is None or not policy.required:
        return
    entry = signing.signature_entry(model.manifest.files)
    try:
        if entry is None:
            raise SignatureError(
                f"{model.ref} is not signed, and {target.name} takes only signed models in "
                f"namespace {model.ref.namespace!r}; nothing was sent",
                code=signing.REQUIRED,
                hint=f"sign it, then publish again: axon sign {model.ref} --key KEY.pem",
            )
        data = _read_signature(model.source(entry), entry)
        signing.verify(data, model.manifest.files, policy.keys)
    except SignatureError as exc:
        exc.target = target.name
        if entry is not None:
            exc.message = f"{target.name} would refuse {model.ref}: {exc.message}; nothing was sent"
        raise


__all__ = [
    "PASSWORD_ENV",
    "Policy",
    "SignResult",
    "describe_signature",
    "fetch_policy",
    "preflight",
    "sign_model",
    "sign_model_keyless",
    "verify_model",
]
