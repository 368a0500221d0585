"""Tenants: who may write which namespaces (``--tokens FILE``).

The tokens file is YAML::

    tenants:
      acme:
        tokens: ["s3cret-acme"]            # plain tokens, or
        token_sha256: ["9f86d08..."]       # sha256 hex of tokens (keeps secrets off disk)
        namespaces: ["acme", "acme-*"]     # shell-style patterns; "*" = every namespace
        read_namespaces: ["shared-*"]      # also run/evaluate these (no writes)
      ops:
        tokens: ["s3cret-ops"]
        namespaces: ["*"]

Without a tokens file every write is allowed (and the server binds loopback by default).
With one, a write needs ``Authorization: Bearer <token>``: refused as unauthorized without or
with an unknown token, as forbidden when the token's tenant does not own the model's
namespace. A scan (``POST /models/scan``) registers the models of every namespace: it needs
a tenant with the pattern ``"*"``. Reads of models and files stay open; running a model
(inference, evaluation) needs a tenant that owns its namespace or lists it under
``read_namespaces``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlos_core.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Tenant:
    name: str
    namespaces: tuple[str, ...]
    read_namespaces: tuple[str, ...] = ()  # run and evaluate only: no writes

    def owns(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pat) for pat in self.namespaces)

    def may_read(self, namespace: str) -> bool:
        """May run (infer, evaluate) the models of ``namespace``: owned, or read-only."""
        return self.owns(namespace) or any(
            fnmatch.fnmatchcase(namespace, pat) for pat in self.read_namespaces
        )

    @property
    def owns_every_namespace(self) -> bool:
        """The pattern ``"*"`` (an operator's tenant): what a scan of all models needs."""
        return "*" in self.namespaces


ANONYMOUS = Tenant("anonymous", ("*",))


class TokensFileError(ValueError):
    pass


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tenants:
    """Token -> tenant lookup. ``Tenants(None)`` allows everything (no tokens file)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._by_digest: dict[str, Tenant] = {}
        self.by_name: dict[str, Tenant] = {}  # what an upload's record names
        if path is not None:
            self._load(path)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _load(self, path: Path) -> None:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise TokensFileError(f"{path}: cannot read tokens file: {exc}") from exc
        tenants = raw.get("tenants") if isinstance(raw, dict) else None
        if not isinstance(tenants, dict) or not tenants:
            raise TokensFileError(
                f"{path}: expected a 'tenants:' mapping (see docs/server.md, 'Tokens and tenants')"
            )
        for name, spec in tenants.items():
            if not isinstance(spec, dict):
                raise TokensFileError(f"{path}: tenants.{name} must be a mapping")
            patterns: dict[str, tuple[str, ...]] = {}
            for key in ("namespaces", "read_namespaces"):
                listed = spec.get(key) or []
                if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                    raise TokensFileError(
                        f"{path}: tenants.{name}.{key} must be a list of namespace patterns"
                    )
                patterns[key] = tuple(listed)
            tenant = Tenant(str(name), patterns["namespaces"], patterns["read_namespaces"])
            self.by_name[tenant.name] = tenant
            digests = [_digest(str(t)) for t in spec.get("tokens") or []]
            digests += [str(d).lower() for d in spec.get("token_sha256") or []]
            if not digests:
                raise TokensFileError(f"{path}: tenants.{name} has no tokens")
            for d in digests:
                self._by_digest[d] = tenant

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of a request's ``Authorization`` header; Unauthorized without one."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "this server needs 'Authorization: Bearer <token>' for writes",
            )
        digest = _digest(token.strip())
        for known, tenant in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthorized("unknown token (ask the server's operator for one)")

    def authorize(self, authorization: str | None, namespace: str) -> Tenant:
        """Unauthorized / Forbidden unless the request's tenant may write ``namespace``."""
        tenant = self.authenticate(authorization)
        if not tenant.owns(namespace):
            raise Forbidden(
                f"tenant {tenant.name!r} may not write namespace {namespace!r}; nothing changed",
            )
        return tenant
