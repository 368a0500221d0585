"""Model signatures: ``model.sig`` in the OpenSSF model signing format.

The format is the one the ``model_signing`` package and CLI write and read (OpenSSF Model
Signing, v1.0 predicate): a Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``)
whose DSSE envelope carries an in-toto statement::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<model>", "digest": {"sha256": "<sha256 of the resource digests>"}}],
     "predicateType": "https://model_signing/signature/v1.0",
     "predicate": {
       "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false,
                         "ignore_paths": ["manifest.yaml", "model.sig", ...]},
       "resources": [{"name": "weights.bin", "algorithm": "sha256", "digest": "<hex>"}, ...]}}

With ``method: files`` and ``sha256`` a resource's digest is the sha256 of the file's bytes,
which is exactly what ``manifest.yaml`` lists: signing and verifying here are one pass over
digests already known, never a second reading of the bytes.

What is signed: every file the manifest lists except ``model.sig`` itself (a signature
cannot cover its own bytes). ``manifest.yaml`` is not a file of the list (it cannot list
itself, and a server rewrites its identity), so it is not signed either; both names are
recorded in ``ignore_paths`` so the ``model_signing`` CLI skips them when it verifies a model
directory. ``model.sig`` is an ordinary file of the model package otherwise (listed in the
manifest with its size and sha256), so every transport carries it as it carries the weights.

Keys: elliptic-curve keys (P-256, P-384, P-521), as ``model_signing`` supports, either a bare
key (the bundle names it by ``hint``: the sha256 of its PEM SubjectPublicKeyInfo) or a
certificate chain (the bundle carries the signing certificate and its intermediates; trust
comes from a CA certificate the verifier holds). Keyless Sigstore bundles (a Fulcio
certificate and a transparency-log entry) are recognised and refused with a reason: they need
the Sigstore trust root and identity policy, which :mod:`axon.signing` delegates to the
``model_signing`` package on the client.

``cryptography`` is imported only when a signature is made or checked.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpkg.errors import ConfigError, IntegrityError, InvalidReferenceError
from modelpkg.manifest import MANIFEST_NAME, FileEntry, Manifest
from modelpkg.refs import ModelRef

if TYPE_CHECKING:  # pragma: no cover
    pass

SIGNATURE_NAME = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_MEDIA_TYPES = frozenset(
    {
        BUNDLE_MEDIA_TYPE,
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
    }
)
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: what a signature made here records as not signed, so the model_signing CLI skips them
#: when it verifies a served model directory or axon's cache directory (whose metadata file
#: is the third name)
IGNORED_PATHS = (MANIFEST_NAME, SIGNATURE_NAME, ".axon_metadata.json")
#: a model.sig larger than this is refused unread (100,000 files take about 15 MiB)
MAX_SIGNATURE_BYTES = 64 * 1024 * 1024
MAX_CHAIN = 8  # certificates between a signing certificate and its trusted CA
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_RUN = re.compile(r"[0-9a-f]*")

#: machine codes of a refusal (mlos-core answers them; axon maps them to exit 5)
REQUIRED = "signature_required"  # no model.sig where one is required
INVALID = "signature_invalid"  # not a signature, or its cryptography does not hold
MISMATCH = "signature_mismatch"  # a valid signature over other files than the model's
UNTRUSTED = "untrusted_signer"  # a valid signature by a key not trusted for the namespace
CODES = frozenset({REQUIRED, INVALID, MISMATCH, UNTRUSTED})


class SignatureError(IntegrityError):
    """A model's signature is missing, invalid, over other files, or by an untrusted key.

    ``code`` is one of :data:`CODES`; exit 5 (integrity), like a file that does not match.
    """

    def __init__(self, message: str, *, code: str = INVALID, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["code"] = self.code
        return data


@dataclass(frozen=True)
class Signer:
    """Who signed: a key (``key_id``: the bundle's hint, sha256 of the PEM public key) or a
    certificate (its subject, issuer and e-mail/URI names). ``trusted_as`` names the trusted
    key or CA file that vouched for it (empty: not checked against any)."""

    kind: str  # "key" | "certificate"
    key_id: str
    subject: str | None = None
    issuer: str | None = None
    identities: tuple[str, ...] = ()
    trusted_as: str | None = None
    model_name: str | None = None  # the subject name the signer gave the model

    def describe(self) -> str:
        if self.kind == "certificate":
            who = self.identities[0] if self.identities else (self.subject or "?")
            text = f"certificate {who}"
            if self.issuer:
                text += f" (issued by {self.issuer})"
        else:
            text = f"key sha256:{self.key_id[:16]}"
        if self.trusted_as:
            text += f", trusted as {self.trusted_as}"
        return text

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "key_id": self.key_id}
        for key in ("subject", "issuer", "trusted_as", "model_name"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        if self.identities:
            data["identities"] = list(self.identities)
        data["description"] = self.describe()
        return data


@dataclass(frozen=True)
class TrustedKey:
    """A public key or CA certificate a verifier trusts; ``name`` says where it came from."""

    name: str
    public_key: Any  # ec.EllipticCurvePublicKey
    certificate: Any = None  # x509.Certificate for a CA (or pinned) certificate
    key_id: str = ""

    @property
    def kind(self) -> str:
        return "certificate" if self.certificate is not None else "key"

    def to_dict(self) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization

        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "key_id": self.key_id}
        if self.certificate is not None:
            data["subject"] = self.certificate.subject.rfc4514_string()
            data["pem"] = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        else:
            data["pem"] = _pem(self.public_key).decode()
        return data


@dataclass
class Statement:
    """The signed statement of a bundle, checked for shape."""

    model_name: str
    resources: dict[str, str]  # path -> sha256
    ignore_paths: list[str] = field(default_factory=list)


# ---- the statement ----------------------------------------------------------------------
def signed_files(files: Iterable[FileEntry]) -> list[FileEntry]:
    """The files a signature covers: all but ``model.sig``, sorted by path."""
    return sorted((f for f in files if f.path != SIGNATURE_NAME), key=lambda f: f.path)


def statement_for(files: Iterable[FileEntry], model_name: str) -> dict[str, Any]:
    """The in-toto statement over ``files`` (their manifest sha256s), as model_signing
    builds it: resources sorted by name, the subject digest the sha256 of their digests."""
    entries = signed_files(files)
    root = hashlib.sha256()
    resources = []
    for entry in entries:
        if not _HEX64.fullmatch(entry.sha256):
            raise IntegrityError(
                f"{entry.path}: no sha256 in the manifest; it cannot be signed",
                hint="run `axon verify` first, which fills in what is missing",
            )
        root.update(bytes.fromhex(entry.sha256))
        resources.append({"name": entry.path, "algorithm": "sha256", "digest": entry.sha256})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root.hexdigest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(IGNORED_PATHS),
            },
            "resources": resources,
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature is over."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


# ---- keys -------------------------------------------------------------------------------
def _pem(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def key_id(public_key: Any) -> str:
    """The bundle's ``hint`` for a key, as model_signing computes it."""
    return hashlib.sha256(_pem(public_key)).hexdigest()


def _ec_hash(public_key: Any) -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError(
            f"a {type(public_key).__name__.replace('PublicKey', '')} key: model signatures use "
            "elliptic-curve keys (P-256, P-384, P-521)"
        )
    size = public_key.curve.key_size
    if public_key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise ValueError(f"curve {public_key.curve.name}: use P-256, P-384 or P-521")
    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(size, hashes.SHA512())


def load_private_key(path: Path, password: bytes | None = None) -> Any:
    """An EC private key from a PEM file; ConfigError (naming the file) otherwise."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password)
        _ec_hash(key.public_key())
    except OSError as exc:
        raise ConfigError(f"cannot read the key: {exc.strerror or exc}", path=str(path)) from exc
    except TypeError as exc:  # a password is needed, or one was given for a plain key
        raise ConfigError(
            f"the key {'needs' if password is None else 'has no'} password: {exc}",
            path=str(path),
            hint="set the password in AXON_SIGNING_PASSWORD" if password is None else None,
        ) from exc
    except ValueError as exc:
        if password is not None and "decrypt" in str(exc).lower():
            raise ConfigError(
                "the password does not decrypt the key", path=str(path),
                hint="check AXON_SIGNING_PASSWORD",
            ) from exc  # fmt: skip
        raise ConfigError(
            f"not an elliptic-curve private key in PEM form: {exc}",
            path=str(path),
            hint="make one with: openssl ecparam -name prime256v1 -genkey -noout -out key.pem",
        ) from exc
    return key


def load_certificates(path: Path) -> list[Any]:
    """The PEM certificates of ``path``; ConfigError naming the file otherwise."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    except ValueError as exc:
        raise ConfigError(f"not PEM certificates: {exc}", path=str(path)) from exc
    return certs


def load_trusted(path: Path) -> list[TrustedKey]:
    """The trusted keys of a file (PEM public keys and/or certificates) or of every regular
    file of a directory (not recursive; names starting with ``.`` skipped). ConfigError
    naming the file for anything that is neither."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if path.is_dir():
        out: list[TrustedKey] = []
        for child in sorted(path.iterdir()):
            if child.name.startswith(".") or not child.is_file():
                continue
            out += load_trusted(child)
        return out
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read trusted key: {exc.strerror or exc}", path=str(path)
        ) from exc
    found: list[TrustedKey] = []
    blocks = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", text, re.S)
    if not blocks:
        raise ConfigError(
            "no PEM public key or certificate in it",
            path=str(path),
            hint="a trusted key is a PEM public key (openssl ec -pubout) or a CA certificate",
        )
    for match in re.finditer(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", text, re.S):
        kind, block = match.group(1), match.group(0)
        label = path.name if len(blocks) == 1 else f"{path.name}#{len(found) + 1}"
        try:
            if kind == b"CERTIFICATE":
                cert = x509.load_pem_x509_certificate(block)
                key = cert.public_key()
                _ec_hash(key)
                found.append(TrustedKey(label, key, cert, key_id(key)))
            elif kind == b"PUBLIC KEY":
                public: Any = serialization.load_pem_public_key(block)
                _ec_hash(public)
                found.append(TrustedKey(label, public, None, key_id(public)))
            else:
                raise ValueError(f"a {kind.decode()} block (a private key does not belong here)")
        except ValueError as exc:
            raise ConfigError(f"not a usable trusted key: {exc}", path=str(path)) from exc
    return found


# ---- signing ----------------------------------------------------------------------------
def sign(
    files: Iterable[FileEntry],
    model_name: str,
    private_key: Any,
    *,
    certificate: Any = None,
    chain: Sequence[Any] = (),
) -> bytes:
    """The ``model.sig`` bytes over ``files``: signed with ``private_key``, naming the key by
    its hint, or carrying ``certificate`` (whose public key must be the key's) and ``chain``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps(statement_for(files, model_name), separators=(",", ":")).encode()
    public = private_key.public_key()
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(_ec_hash(public)))
    material: dict[str, Any]
    if certificate is not None:
        if key_id(certificate.public_key()) != key_id(public):
            raise ConfigError(
                "the signing certificate is not the private key's (their public keys differ)",
                hint="pass the certificate issued for this key",
            )
        ders = [c.public_bytes(serialization.Encoding.DER) for c in (certificate, *chain)]
        material = {
            "x509CertificateChain": {
                "certificates": [{"rawBytes": base64.b64encode(d).decode()} for d in ders]
            },
            "tlogEntries": [],
        }
    else:
        material = {"publicKey": {"hint": key_id(public)}, "tlogEntries": []}
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8")


# ---- verifying --------------------------------------------------------------------------
def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise SignatureError(f"model.sig: {what} is missing or not text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"model.sig: {what} is not base64") from exc


def _field(node: object, key: str, what: str) -> Any:
    if not isinstance(node, dict) or key not in node:
        raise SignatureError(f"model.sig: {what} is missing (not a model signature bundle)")
    return node[key]


@dataclass
class Bundle:
    """A parsed ``model.sig``: its envelope and verification material, not yet verified."""

    payload: bytes
    payload_type: str
    signature: bytes
    hint: str | None
    chain: list[Any]  # x509.Certificate, the signing one first

    @classmethod
    def parse(cls, data: bytes) -> Bundle:
        if len(data) > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"model.sig is larger than {MAX_SIGNATURE_BYTES} bytes")
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise SignatureError(f"model.sig is not JSON: {str(exc)[:80]}") from exc
        media = _field(raw, "mediaType", "mediaType")
        if media not in BUNDLE_MEDIA_TYPES:
            raise SignatureError(
                f"model.sig: media type {str(media)[:80]!r} is not a Sigstore bundle this "
                f"server reads ({BUNDLE_MEDIA_TYPE})"
            )
        envelope = _field(raw, "dsseEnvelope", "dsseEnvelope")
        payload_type = _field(envelope, "payloadType", "dsseEnvelope.payloadType")
        if payload_type != PAYLOAD_TYPE:
            raise SignatureError(
                f"model.sig: payload type {str(payload_type)[:80]!r} is not in-toto"
            )
        sigs = _field(envelope, "signatures", "dsseEnvelope.signatures")
        if not isinstance(sigs, list) or len(sigs) != 1:
            raise SignatureError("model.sig: expected exactly one signature in the envelope")
        material = _field(raw, "verificationMaterial", "verificationMaterial")
        if not isinstance(material, dict):
            raise SignatureError("model.sig: verificationMaterial is not an object")
        hint: str | None = None
        chain: list[Any] = []
        if "x509CertificateChain" in material:
            from cryptography import x509

            certs = _field(material["x509CertificateChain"], "certificates", "certificate chain")
            if not isinstance(certs, list) or not certs or len(certs) > MAX_CHAIN + 1:
                raise SignatureError("model.sig: the certificate chain is empty or too long")
            for i, item in enumerate(certs):
                der = _b64(_field(item, "rawBytes", f"certificate {i}"), f"certificate {i}")
                try:
                    chain.append(x509.load_der_x509_certificate(der))
                except ValueError as exc:
                    raise SignatureError(f"model.sig: certificate {i} does not parse") from exc
        elif "publicKey" in material:
            key = material["publicKey"]
            value = key.get("hint") if isinstance(key, dict) else None
            hint = value.lower() if isinstance(value, str) and value else None
        elif "certificate" in material:
            raise SignatureError(
                "model.sig is a keyless Sigstore signature (a Fulcio certificate and a "
                "transparency-log entry): this verifier checks key and certificate-chain "
                "signatures only",
                hint="sign with a key or a certificate chain: axon sign REF --key KEY.pem",
            )
        else:
            raise SignatureError("model.sig names neither a public key nor a certificate chain")
        return cls(
            payload=_b64(envelope.get("payload"), "dsseEnvelope.payload"),
            payload_type=payload_type,
            signature=_b64(sigs[0].get("sig") if isinstance(sigs[0], dict) else None, "sig"),
            hint=hint,
            chain=chain,
        )

    def _verifies(self, public_key: Any) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            public_key.verify(
                self.signature,
                pae(self.payload_type, self.payload),
                ec.ECDSA(_ec_hash(public_key)),
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    def signer(self, trusted: Sequence[TrustedKey]) -> Signer:
        """Check the signature and who made it against ``trusted``: SignatureError with
        ``untrusted_signer`` or ``signature_invalid`` otherwise. With nothing trusted only the
        signature's own consistency is checked (a certificate's key), and the signer is
        returned with ``trusted_as`` empty."""
        if self.chain:
            return self._certificate_signer(trusted)
        candidates = [t for t in trusted if t.certificate is None]
        if self.hint is not None:
            candidates = [t for t in candidates if t.key_id == self.hint]
        for key in candidates:
            if self._verifies(key.public_key):
                return Signer("key", key.key_id, trusted_as=key.name)
        if not trusted:
            return Signer("key", self.hint or "")
        if self.hint is not None and candidates:
            raise SignatureError(
                f"model.sig names the trusted key {candidates[0].name}, but the signature "
                "does not verify with it (the signature or its statement was altered)",
                code=INVALID,
            )
        raise SignatureError(
            f"model.sig was signed by key sha256:{(self.hint or 'unknown')[:16]}, which is not "
            "trusted for this namespace",
            code=UNTRUSTED,
            hint="sign with a key the instance trusts, or ask its operator to trust this one",
        )

    def _certificate_signer(self, trusted: Sequence[TrustedKey]) -> Signer:
        from cryptography import x509

        leaf = self.chain[0]
        try:
            public = leaf.public_key()
            _ec_hash(public)
        except ValueError as exc:
            raise SignatureError(f"model.sig: the signing certificate's key: {exc}") from exc
        if not self._verifies(public):
            raise SignatureError(
                "model.sig: the signature does not verify with its signing certificate's key "
                "(the signature or its statement was altered)",
                code=INVALID,
            )
        _check_signing_use(leaf)
        identities: list[str] = []
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            identities += [str(v) for v in san.get_values_for_type(x509.RFC822Name)]
            identities += [str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        except x509.ExtensionNotFound:
            pass
        signer = Signer(
            "certificate",
            key_id(public),
            subject=leaf.subject.rfc4514_string(),
            issuer=leaf.issuer.rfc4514_string(),
            identities=tuple(identities),
        )
        if not trusted:
            return signer
        anchor = _chain_to(leaf, self.chain[1:], trusted)
        if anchor is None:
            raise SignatureError(
                f"model.sig was signed by the certificate {signer.subject} (issued by "
                f"{signer.issuer}), which does not chain to a CA trusted for this namespace",
                code=UNTRUSTED,
                hint="sign with a certificate of a trusted CA, or ask the operator to trust it",
            )
        return dataclasses.replace(signer, trusted_as=anchor.name)

    def statement(self) -> Statement:
        """The signed statement, its shape checked (call after :meth:`signer`)."""
        try:
            raw = json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise SignatureError("model.sig: the signed payload is not JSON") from exc
        if not isinstance(raw, dict) or raw.get("_type") != STATEMENT_TYPE:
            raise SignatureError("model.sig: the payload is not an in-toto v1 statement")
        if raw.get("predicateType") != PREDICATE_TYPE:
            raise SignatureError(
                f"model.sig: predicate {str(raw.get('predicateType'))[:80]!r} is not the model "
                f"signing v1.0 one ({PREDICATE_TYPE}); re-sign with a current signer"
            )
        subjects = raw.get("subject")
        if (
            not isinstance(subjects, list)
            or len(subjects) != 1
            or not isinstance(subjects[0], dict)
        ):
            raise SignatureError("model.sig: the statement must have exactly one subject")
        predicate = raw.get("predicate")
        serialization = predicate.get("serialization") if isinstance(predicate, dict) else None
        if not isinstance(serialization, dict):
            raise SignatureError("model.sig: the statement has no serialization")
        method, hash_type = serialization.get("method"), serialization.get("hash_type")
        if method != "files" or hash_type != "sha256":
            raise SignatureError(
                f"model.sig was made over {method!s:.20} with {hash_type!s:.20}: this verifier "
                "checks signatures over whole files with sha256 (the digests of the manifest)",
                hint="sign with file serialization and sha256 (axon sign, or model_signing "
                "without --shard / other hashes)",
            )
        resources = predicate.get("resources")  # type: ignore[union-attr]
        if not isinstance(resources, list):
            raise SignatureError("model.sig: the statement lists no resources")
        # one pass, nothing built per resource but its entry (100,000 files: ~0.2 s). Names
        # are only ever compared with the manifest's paths (checked when it was read), never
        # used as paths, so they need no path check of their own.
        out: dict[str, str] = {}
        for item in resources:
            if type(item) is not dict:
                raise SignatureError(f"model.sig: a resource is not an object: {item!r:.100}")
            name, digest = item.get("name"), item.get("digest")
            if type(name) is not str or type(digest) is not str or len(digest) != 64:
                raise SignatureError(
                    f"model.sig: a resource is not a sha256 file digest: {item!r:.100}"
                )
            if item.get("algorithm") != "sha256":
                raise SignatureError(f"model.sig: {name!r:.100} is not hashed with sha256")
            if name in out:
                raise SignatureError(f"model.sig: {name!r:.100} is listed twice")
            out[name] = digest
        joined = "".join(out.values())
        if not _HEX_RUN.fullmatch(joined):
            raise SignatureError("model.sig: a resource digest is not lowercase hex")
        root = hashlib.sha256(bytes.fromhex(joined))
        subject = subjects[0]
        digest = subject.get("digest")
        claimed = digest.get("sha256") if isinstance(digest, dict) else None
        if claimed != root.hexdigest():
            raise SignatureError(
                "model.sig: the subject digest is not the digest of the listed resources"
            )
        ignored = serialization.get("ignore_paths")
        return Statement(
            model_name=str(subject.get("name", "")),
            resources=out,
            ignore_paths=[str(p) for p in ignored] if isinstance(ignored, list) else [],
        )


def _check_signing_use(cert: Any) -> None:
    """The signing certificate may sign: key usage digitalSignature, or EKU code signing (as
    model_signing checks)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        if cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING in eku:
            return
    except x509.ExtensionNotFound:
        pass
    raise SignatureError(
        "model.sig: the signing certificate is not for signing (no digitalSignature key usage "
        "nor code-signing extended key usage)",
        code=UNTRUSTED,
    )


def _valid_at(cert: Any, when: Any) -> bool:
    return bool(cert.not_valid_before_utc <= when <= cert.not_valid_after_utc)


def _is_ca(cert: Any) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued(issuer: Any, cert: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError: not issued by it
        return False
    return True


def _chain_to(
    leaf: Any, intermediates: Sequence[Any], trusted: Sequence[TrustedKey]
) -> TrustedKey | None:
    """The trusted certificate that ``leaf`` chains to through ``intermediates`` (each a CA,
    each valid when the leaf was issued: there is no trusted timestamp, as model_signing
    does), or None. A trusted certificate equal to the leaf (a pinned one) counts too."""
    when = leaf.not_valid_before_utc
    anchors = [t for t in trusted if t.certificate is not None]
    for anchor in anchors:
        if anchor.certificate == leaf:
            return anchor
    current = leaf
    for _ in range(MAX_CHAIN + 1):
        for anchor in anchors:
            ca = anchor.certificate
            if ca.subject == current.issuer and _issued(ca, current) and _valid_at(ca, when):
                return anchor
        step = next(
            (
                c
                for c in intermediates
                if c.subject == current.issuer
                and c != current
                and _is_ca(c)
                and _valid_at(c, when)
                and _issued(c, current)
            ),
            None,
        )
        if step is None:
            return None
        current = step
    return None


def compare(statement: Statement, files: Iterable[FileEntry]) -> None:
    """SignatureError (``signature_mismatch``) unless the statement covers exactly the
    model's files (all but model.sig), each with the manifest's sha256."""
    have = {f.path: f.sha256 for f in files if f.path != SIGNATURE_NAME}
    signed = statement.resources
    if have == signed:  # the common case: one comparison of two dicts
        return
    problems: list[str] = []
    for path in sorted(set(signed) - set(have)):
        if path == MANIFEST_NAME:
            problems.append(
                "the signature covers manifest.yaml, which is not a file of the model (sign the "
                "model's files: model_signing sign ... --ignore-paths manifest.yaml)"
            )
        else:
            problems.append(f"signed but not in the model: {path}")
    for path in sorted(set(have) - set(signed)):
        problems.append(f"not covered by the signature: {path}")
    for path in sorted(set(have) & set(signed)):
        if have[path] != signed[path]:
            problems.append(
                f"changed since signed: {path} (signed sha256 {signed[path][:12]}..., "
                f"the model's {have[path][:12]}...)"
            )
    if problems:
        raise SignatureError(
            f"the signature does not match the model's files: {'; '.join(problems[:5])}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
            code=MISMATCH,
            problems=problems,
            hint="re-sign the model as it is now: axon sign REF --key KEY.pem",
        )


def verify(
    data: bytes,
    files: Iterable[FileEntry],
    trusted: Sequence[TrustedKey],
    *,
    check_trust: bool = True,
) -> Signer:
    """Check ``model.sig`` bytes against the model's ``files`` (manifest entries) and the
    ``trusted`` keys; the signer, or SignatureError naming the reason. With nothing trusted
    every signature is untrusted, unless ``check_trust`` is false (a local look at a
    certificate signature's own consistency)."""
    bundle = Bundle.parse(data)
    if check_trust and not trusted:
        raise SignatureError(
            "no key is trusted to sign this namespace, so no signature can be accepted",
            code=UNTRUSTED,
            hint="ask the operator to trust the signing key (--trusted-keys, or trusted_keys "
            "of the tenant in the tokens file)",
        )
    signer = bundle.signer(trusted)
    statement = bundle.statement()
    compare(statement, files)
    if statement.model_name:
        signer = dataclasses.replace(signer, model_name=statement.model_name)
    return signer


def unsigned_names(ref: ModelRef, manifest: Manifest | None = None) -> set[str]:
    """Top-level names of a model directory that are not model files, so not signed: the
    manifest, the metadata file, and upstream's ``<ns>-<name>-<ver>.axon`` package, named
    after the directory's reference (or the one ``manifest`` names)."""
    names = {MANIFEST_NAME, IGNORED_PATHS[2], ref.archive_name}
    if manifest is not None and manifest.namespace and manifest.name:
        try:
            named = ModelRef(manifest.namespace, manifest.name, manifest.version or ref.version)
        except InvalidReferenceError:
            return names
        names.add(named.archive_name)
    return names


def signature_entry(files: Iterable[FileEntry]) -> FileEntry | None:
    """The manifest's ``model.sig`` entry, if it lists one."""
    return next((f for f in files if f.path == SIGNATURE_NAME), None)


def check_signature_bytes(data: bytes, entry: FileEntry) -> None:
    """SignatureError unless ``data`` is the ``model.sig`` the manifest lists (size, sha256)."""
    if entry.mismatch(len(data), hashlib.sha256(data).hexdigest()) is not None:
        raise SignatureError(
            "model.sig does not match its manifest entry (size or sha256)", code=INVALID
        )
