"""Transports: one module per way of moving bytes to one place.

Transports are found by access method through a small read-only registry mapping each
method to ``"module:Class"``. The module is imported only when a transport of that kind is
built, so ``axon --help`` never imports httpx or boto3, and a method whose optional extra is
not installed fails with an install hint instead of an ImportError::

    "filesystem" -> axon.transports.filesystem:FilesystemTransport
    "nfs"        -> axon.transports.filesystem:FilesystemTransport  (a mount on this machine)
    "ssh"        -> axon.transports.ssh:SshTransport
    "api"        -> axon.transports.api:ApiTransport                 (docs/upload-protocol.md)
    "s3"         -> axon.transports.s3:S3Transport                   (needs axon-publish[s3])

Every class has ``from_target(target: InstanceTarget) -> Transport``. Add a method with
:func:`register_transport`; :func:`transport_for` builds the transport for a resolved target.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from axon.errors import ConfigError
from axon.transports.base import CommitInfo, Session, Transport
from modelpkg.progress import OnBytes

if TYPE_CHECKING:
    from axon.targets import InstanceTarget


@dataclass(frozen=True)
class TransportSpec:
    """Where a transport class lives and what to install when its import fails."""

    path: str  # "module:Class"
    extra: str | None = None  # pip extra, e.g. "s3" -> pip install 'axon-publish[s3]'
    modules: tuple[str, ...] = ()  # third-party modules it needs (to word the hint)


_REGISTRY: dict[str, TransportSpec] = {
    "filesystem": TransportSpec("axon.transports.filesystem:FilesystemTransport"),
    "nfs": TransportSpec("axon.transports.filesystem:FilesystemTransport"),
    "ssh": TransportSpec("axon.transports.ssh:SshTransport"),
    "api": TransportSpec("axon.transports.api:ApiTransport", modules=("httpx",)),
    "s3": TransportSpec("axon.transports.s3:S3Transport", extra="s3", modules=("boto3",)),
}

#: read-only view of the registry: access method -> TransportSpec
TRANSPORTS = MappingProxyType(_REGISTRY)


def register_transport(method: str, path: str, *, extra: str | None = None) -> None:
    """Add (or replace) the class used for ``method``; ``path`` is ``"module:Class"``."""
    if ":" not in path:
        raise ValueError(f"transport path must be 'module:Class', got {path!r}")
    _REGISTRY[method] = TransportSpec(path, extra)


def transport_class(method: str, *, target: str | None = None) -> type[Transport]:
    """Import and return the transport class for ``method`` (ConfigError with a hint)."""
    spec = _REGISTRY.get(method)
    if spec is None:
        raise ConfigError(
            f"unknown access method {method!r}",
            key="access_method",
            target=target,
            hint=f"use one of: {', '.join(sorted(_REGISTRY))}",
        )
    module_name, _, attr = spec.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"access method {method!r} is not available: module {exc.name!r} is missing",
            key="access_method",
            target=target,
            hint=_install_hint(spec, exc.name or module_name),
        ) from exc
    cls: Any = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise ConfigError(
            f"access method {method!r}: {spec.path} is not a Transport class",
            key="access_method",
            target=target,
            hint="this is a bug in axon; please report it",
        )
    return cls


def _install_hint(spec: TransportSpec, missing: str) -> str:
    if spec.extra:
        return f"install it with: pip install 'axon-publish[{spec.extra}]'"
    if missing in spec.modules:
        return f"install it with: pip install {missing}"
    return "this axon installation is incomplete; reinstall axon-publish"


def transport_for(target: InstanceTarget) -> Transport:
    """The transport that reaches ``target`` by its ``access_method``."""
    cls = transport_class(target.access_method, target=target.name)
    from_target = getattr(cls, "from_target", None)
    if from_target is None:
        raise ConfigError(
            f"access method {target.access_method!r}: {cls.__name__} has no from_target()",
            target=target.name,
            hint="this is a bug in axon; please report it",
        )
    transport: Transport = from_target(target)
    return transport


__all__ = [
    "TRANSPORTS",
    "CommitInfo",
    "OnBytes",
    "Session",
    "Transport",
    "TransportSpec",
    "register_transport",
    "transport_class",
    "transport_for",
]
