"""Which keys this instance trusts to sign models, per namespace, and the refusals.

``mlos-core serve --trusted-keys DIR``: every PEM public key or CA certificate in ``DIR`` is
trusted for every namespace, and every model must then be signed (``model.sig``,
:mod:`modelpkg.signing`). A tenant of the tokens file may list keys of its own::

    tenants:
      acme:
        tokens: ["..."]
        namespaces: ["acme", "acme-*"]
        trusted_keys: ["keys/acme.pub", "keys/acme-ca.pem"]   # files or directories

Those keys are trusted only for the namespaces that tenant owns, and the tenant's namespaces
then need a signature even without ``--trusted-keys`` (a relative path is relative to the
tokens file). A key trusted for one tenant is not trusted for another's namespace: signed by
it, a model of another namespace is refused as ``untrusted_signer``.

A namespace with no trusted key at all (no ``--trusted-keys``, no tenant listing keys for
it) needs no signature; one is then not checked.

Refusals are :class:`SignatureRefused` errors: ``signature_required`` (no ``model.sig``) and
``untrusted_signer`` are 403, ``signature_invalid`` and ``signature_mismatch`` (a signature
over other files: a changed byte, an extra, missing or renamed file) are 422.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlos_core.errors import CoreError, Forbidden, Unprocessable
from modelpkg import signing
from modelpkg.errors import ConfigError
from modelpkg.signing import TrustedKey


class SignatureRefused(CoreError):
    """A model refused for its signature; ``code`` says why (:data:`modelpkg.signing.CODES`)."""

    code = signing.INVALID


class SignatureForbidden(SignatureRefused, Forbidden):
    """No signature where one is required, or a signer not trusted for the namespace (403)."""

    code = signing.UNTRUSTED


class SignatureUnprocessable(SignatureRefused, Unprocessable):
    """A signature that does not verify, or does not cover the model's files (422)."""

    code = signing.MISMATCH


def refusal(exc: signing.SignatureError, where: str) -> SignatureRefused:
    """The server's error for ``exc``, its message prefixed with ``where`` (the model)."""
    cls: type[SignatureRefused] = (
        SignatureForbidden
        if exc.code in (signing.REQUIRED, signing.UNTRUSTED)
        else SignatureUnprocessable
    )
    message = f"{where}: {exc.message}; nothing was made visible"
    if exc.hint:
        message += f" ({exc.hint})"
    extra: dict[str, Any] = {"problems": exc.problems} if exc.problems else {}
    return cls(message, code=exc.code, **extra)


@dataclass(frozen=True)
class _TenantKeys:
    tenant: str
    namespaces: tuple[str, ...]
    keys: tuple[TrustedKey, ...]

    def covers(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces)


class TrustPolicy:
    """The trusted keys: global (``--trusted-keys``) and per tenant (tokens file)."""

    def __init__(self, trusted: Path | None = None, tokens_file: Path | None = None) -> None:
        self.source = trusted
        self.global_keys: tuple[TrustedKey, ...] = ()
        if trusted is not None:
            if not trusted.exists():
                raise ConfigError("--trusted-keys: no such file or directory", path=str(trusted))
            self.global_keys = tuple(signing.load_trusted(trusted))
            if not self.global_keys:
                raise ConfigError(
                    "--trusted-keys holds no key: every model would be refused",
                    path=str(trusted),
                    hint="put PEM public keys (.pub) or CA certificates (.pem) in it",
                )
        self.tenants: tuple[_TenantKeys, ...] = (
            _tenant_keys(tokens_file) if tokens_file is not None else ()
        )

    @property
    def enabled(self) -> bool:
        """Does any namespace need a signature?"""
        return bool(self.global_keys) or bool(self.tenants)

    def required(self, namespace: str) -> bool:
        return bool(self.global_keys) or any(t.covers(namespace) for t in self.tenants)

    def keys_for(self, namespace: str) -> list[TrustedKey]:
        out = list(self.global_keys)
        for tenant in self.tenants:
            if tenant.covers(namespace):
                out += tenant.keys
        return out

    def describe(self, namespace: str | None = None) -> dict[str, Any]:
        """The policy as ``GET /v1/signing`` tells it (public keys only: nothing secret)."""
        data: dict[str, Any] = {
            "status": "success",
            "format": signing.PREDICATE_TYPE,
            "signature_file": signing.SIGNATURE_NAME,
            "enabled": self.enabled,
            "required_everywhere": bool(self.global_keys),
            "namespaces": sorted({p for t in self.tenants for p in t.namespaces}),
        }
        if namespace is not None:
            data["namespace"] = namespace
            data["required"] = self.required(namespace)
            data["trusted_keys"] = [k.to_dict() for k in self.keys_for(namespace)]
        return data


def _tenant_keys(tokens_file: Path) -> tuple[_TenantKeys, ...]:
    """The ``trusted_keys`` of each tenant of the tokens file (the rest of the file is
    :mod:`mlos_core.tenants`' to read and check)."""
    try:
        raw = yaml.safe_load(tokens_file.read_text())
    except (OSError, yaml.YAMLError):
        return ()  # mlos_core.tenants reports an unreadable tokens file
    tenants = raw.get("tenants") if isinstance(raw, dict) else None
    if not isinstance(tenants, dict):
        return ()
    out = []
    for name, spec in tenants.items():
        listed = spec.get("trusted_keys") if isinstance(spec, dict) else None
        if listed is None:
            continue
        if isinstance(listed, str):
            listed = [listed]
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise ConfigError(
                f"tenants.{name}.trusted_keys must be a list of files or directories",
                path=str(tokens_file),
            )
        keys: list[TrustedKey] = []
        for item in listed:
            path = Path(item)
            if not path.is_absolute():
                path = tokens_file.parent / path
            if not path.exists():
                raise ConfigError(
                    f"tenants.{name}.trusted_keys: {item}: no such file or directory",
                    path=str(tokens_file),
                )
            keys += [
                TrustedKey(f"{name}:{k.name}", k.public_key, k.certificate, k.key_id)
                for k in signing.load_trusted(path)
            ]
        namespaces = spec.get("namespaces") or []
        out.append(_TenantKeys(str(name), tuple(str(n) for n in namespaces), tuple(keys)))
    return tuple(out)
