"""Transports: one module per way of moving bytes to one place.

Transports are found through a small read-only registry mapping each access method (of an
instance) or storage scheme (of network storage) to ``"module:Class"``. The module is
imported only when a transport of that kind is built, so ``axon --help`` never imports httpx
or boto3, and a kind whose optional extra is not installed fails with an install hint
instead of an ImportError::

    "filesystem" -> axon.transports.filesystem:FilesystemTransport  (a directory here)
    "file"       -> axon.transports.filesystem:FilesystemTransport  (shared dir, file://)
    "nfs"        -> axon.transports.filesystem:FilesystemTransport  (a mount on this machine)
    "ssh"        -> axon.transports.ssh:SshTransport
    "api"        -> axon.transports.api:ApiTransport                 (docs/upload-protocol.md)
    "s3"         -> axon.transports.s3:S3Transport                   (needs axon-publish[s3])

:func:`transport_for` builds the transport of an instance (``target.access_method``, then
``Transport.from_target``); :func:`storage_transport_for` the transport of network storage
(``target.scheme``: ``file``, ``nfs`` or ``s3``, then ``Transport.from_storage``). Add a
kind with :func:`register_transport`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from axon.errors import ConfigError
from axon.transports.base import CommitInfo, Session, Transport
from modelpkg.progress import OnBytes

if TYPE_CHECKING:
    from axon.targets import InstanceTarget, StorageTarget


@dataclass(frozen=True)
class TransportSpec:
    """Where a transport class lives and what to install when its import fails."""

    path: str  # "module:Class"
    extra: str | None = None  # pip extra, e.g. "s3" -> pip install 'axon-publish[s3]'
    modules: tuple[str, ...] = ()  # third-party modules it needs (to word the hint)


_FILESYSTEM = TransportSpec("axon.transports.filesystem:FilesystemTransport")
_REGISTRY: dict[str, TransportSpec] = {
    "filesystem": _FILESYSTEM,
    "file": _FILESYSTEM,
    "nfs": _FILESYSTEM,
    "ssh": TransportSpec("axon.transports.ssh:SshTransport"),
    "api": TransportSpec("axon.transports.api:ApiTransport", modules=("httpx",)),
    "s3": TransportSpec("axon.transports.s3:S3Transport", extra="s3", modules=("boto3",)),
}

#: read-only view of the registry: access method or storage scheme -> TransportSpec
TRANSPORTS = MappingProxyType(_REGISTRY)
_BUILT_IN = frozenset(_REGISTRY)  # kinds added by register_transport are offered everywhere
ACCESS_METHODS = ("api", "filesystem", "nfs", "ssh")  # what an instance is reached by
STORAGE_SCHEMES = ("file", "nfs", "s3")  # what network storage is written by


def register_transport(method: str, path: str, *, extra: str | None = None) -> None:
    """Add (or replace) the class used for ``method`` (an access method or storage scheme);
    ``path`` is ``"module:Class"``."""
    if ":" not in path:
        raise ValueError(f"transport path must be 'module:Class', got {path!r}")
    _REGISTRY[method] = TransportSpec(path, extra)


def transport_class(
    method: str,
    *,
    target: str | None = None,
    key: str = "access_method",
    kinds: Iterable[str] | None = None,
) -> type[Transport]:
    """Import and return the transport class for ``method`` (ConfigError with a hint;
    ``key`` names the config key that chose it, ``kinds`` the names valid there)."""
    spec = _REGISTRY.get(method)
    if spec is None:
        added = {m for m in _REGISTRY if m not in _BUILT_IN}
        valid = sorted({*(_REGISTRY if kinds is None else kinds), *added})
        raise ConfigError(
            f"unknown access method {method!r}",
            key=key,
            target=target,
            hint=f"use one of: {', '.join(valid)}",
        )
    module_name, _, attr = spec.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"access method {method!r} is not available: module {exc.name!r} is missing",
            key=key,
            target=target,
            hint=_install_hint(spec, exc.name or module_name),
        ) from exc
    cls: Any = getattr(module, attr, None)  # the class named by the registry entry
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise ConfigError(
            f"access method {method!r}: {spec.path} is not a Transport class",
            key=key,
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
    """The transport that reaches instance ``target`` by its ``access_method``."""
    cls = transport_class(target.access_method, target=target.name, kinds=ACCESS_METHODS)
    return cls.from_target(target)


def storage_transport_for(
    target: StorageTarget, tuning: Mapping[str, Any] | None = None
) -> Transport:
    """The transport that writes network storage ``target``, by its ``scheme``.

    ``tuning``: settings of that kind of storage by field name (for ``s3``, the fields of
    :class:`modelpkg.s3.S3Settings`); transports with nothing to tune ignore it.
    """
    cls = transport_class(
        target.scheme, target=target.name, key="storage_path", kinds=STORAGE_SCHEMES
    )
    return cls.from_storage(target, tuning)


__all__ = [
    "TRANSPORTS",
    "CommitInfo",
    "OnBytes",
    "Session",
    "Transport",
    "TransportSpec",
    "register_transport",
    "storage_transport_for",
    "transport_class",
    "transport_for",
]
