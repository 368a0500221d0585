"""``--target`` resolution: a name or address -> an instance, a cluster or network storage.

Order: a name under ``mlos_targets:``, then under ``clusters:``; then ``http(s)://host:port``
URLs; storage forms (an absolute path, ``file://``, ``nfs://server/export``,
``s3://bucket/prefix``); ``localhost[:port]``; a hostname or IP address (``[host]:port`` for
IPv6), which means that instance's API at port 8080 unless configured.
Anything else is a :class:`~axon.errors.TargetNotFoundError` listing the configured targets.

Nothing here touches the network: a cluster's ``discovery:`` URI is kept as data (resolved at
publish time by :mod:`axon.discovery`), hostnames are not looked up.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from axon.config import DEFAULT_TIMEOUT, ClusterConfig, Config, RelayConfig, TargetConfig
from axon.errors import AxonError, ConfigError, TargetNotFoundError
from modelpkg.layout import DEFAULT_MODELS_DIR

DEFAULT_PORT = 8080
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass
class InstanceTarget:
    """One MLOS Core instance and how to reach its storage.

    ``endpoint`` is the http(s) URL of its API (no trailing ``/``); ``access_method`` is
    ``filesystem``, ``ssh``, ``api`` or ``nfs``; ``storage_path`` is the models dir *as the
    instance sees it*. ``origin`` says where the target came from: ``config``, ``cluster``,
    ``url``, ``host`` or ``localhost`` (for hints: "not a configured target").
    """

    name: str
    endpoint: str
    access_method: str = "api"
    storage_path: str | None = None
    ssh_host: str | None = None
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_key: str | None = None
    ssh_options: list[str] = field(default_factory=list)
    ssh_persist: float | None = None  # keep the SSH connection open this long after a command
    token: str | None = None
    dir_mode: int | None = None
    file_mode: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    origin: str = "config"

    @property
    def kind(self) -> str:
        return "instance"

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if v not in (None, [])}
        if "token" in data:
            data["token"] = "***"  # never print secrets
        for mode in ("dir_mode", "file_mode"):
            if mode in data:
                data[mode] = oct(data[mode])
        return {"type": "instance", **data}


@dataclass
class ClusterTarget:
    """A cluster: static ``instances`` and/or a ``discovery`` URI resolved at publish time."""

    name: str
    instances: list[InstanceTarget] = field(default_factory=list)
    strategy: str = "all"
    discovery: str | None = None
    max_parallel: int | None = None
    #: access settings for discovered members (method, storage path, ssh, token, timeout)
    template: InstanceTarget | None = None
    #: ``relay:`` as configured: members pull from members (None: decided per publish)
    relay: bool | RelayConfig | None = None

    @property
    def kind(self) -> str:
        return "cluster"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "cluster",
            "name": self.name,
            "strategy": self.strategy,
            "discovery": self.discovery,
            "max_parallel": self.max_parallel,
            "instances": [i.to_dict() for i in self.instances],
        }


@dataclass
class StorageTarget:
    """Network storage many instances read: ``location`` is a local path, ``nfs://server/
    export/path`` or ``s3://bucket/prefix``; ``notify_instances`` are told after a publish."""

    name: str
    storage_type: str
    location: str
    mount_path: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    notify_instances: list[InstanceTarget] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "network_storage"

    @property
    def scheme(self) -> str:
        """How the storage is written: ``file`` (a shared directory), ``nfs`` or ``s3``; the
        key of its transport in :mod:`axon.transports`."""
        if self.storage_type == "s3" or self.location.startswith("s3://"):
            return "s3"
        return "nfs" if self.storage_type == "nfs" else "file"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "network_storage"}
        for key in ("name", "storage_type", "location", "mount_path", "endpoint_url"):
            data[key] = getattr(self, key)
        data.update(region=self.region, profile=self.profile)
        data["notify_instances"] = [i.to_dict() for i in self.notify_instances]
        return {k: v for k, v in data.items() if v is not None}


Target = InstanceTarget | ClusterTarget | StorageTarget


def resolve_target(spec: str, config: Config) -> Target:
    """Resolve ``--target SPEC`` (see the module docstring for the order)."""
    spec = spec.strip()
    if not spec:
        raise TargetNotFoundError("empty --target", hint=_known_hint(config))
    for section, entries, build in (
        ("mlos_targets", config.mlos_targets, _from_config),
        ("clusters", config.clusters, _cluster),
    ):
        if spec in entries:
            key = f"{section}.{spec}"
            try:
                return build(spec, entries[spec], config, key)
            except AxonError:
                raise
            except (ValueError, RuntimeError) as exc:  # e.g. ssh_key: ~nosuchuser/key
                raise ConfigError(
                    f"cannot use this target: {exc}",
                    path=str(config.path),
                    key=key,
                    hint="fix this entry of the config file (a URL or path in it is malformed, "
                    "or names a ~user that does not exist)",
                ) from None
    try:
        return resolve_address(spec, config)
    except AxonError:
        raise
    except (ValueError, RuntimeError) as exc:  # urlsplit/ipaddress/expanduser on odd text
        raise TargetNotFoundError(
            f"target {spec!r}: not a valid host, URL or path ({exc})",
            hint=_known_hint(config),
        ) from None


def resolve_address(spec: str, config: Config | None = None) -> Target:
    """An unnamed target: URL, storage path/URL, localhost, host[:port] or IP."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in ("http", "https"):
        return _instance_from_url(spec, spec, origin="url")
    if scheme in ("file", "nfs", "s3") or spec.startswith(("/", "./", "../", "~")):
        return storage_from_location(spec, spec)
    if scheme:
        raise TargetNotFoundError(
            f"unsupported target scheme {scheme + '://'!r} in {spec!r}",
            hint="use http(s)://, file://, nfs://, s3:// or a configured name",
        )
    host, port = split_host_port(spec)
    if host is not None and host.lower() == "localhost":
        return local_instance(spec, port)
    if host is not None:
        url = f"http://{_url_host(host)}:{port or DEFAULT_PORT}"
        return InstanceTarget(name=spec, endpoint=url, access_method="api", origin="host")
    raise TargetNotFoundError(
        f"unknown target {spec!r}: not a configured target, host, URL or storage location",
        hint=_known_hint(config),
    )


def _known_hint(config: Config | None) -> str:
    names = config.target_names if config else []
    where = f" (in {config.path})" if config else ""
    known = f"configured targets{where}: {', '.join(names)}" if names else "no targets configured"
    return f"{known}; or give host[:port], http(s)://host:port, /path, nfs://... or s3://..."


# ---- addresses ----------------------------------------------------------------------------
def split_host_port(spec: str) -> tuple[str | None, int | None]:
    """``host``, ``host:port``, ``IPv4[:port]``, ``[IPv6]:port`` or bare IPv6; (None, None)
    when ``spec`` is none of them."""
    host, port_text = spec, None
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0:
            return None, None
        host, rest = spec[1:close], spec[close + 1 :]
        if rest and not rest.startswith(":"):
            return None, None
        port_text = rest[1:] if rest else None
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None, None
        port = int(port_text)
    return (host, port) if is_host(host) else (None, None)


def is_host(text: str) -> bool:
    """An IP address or a syntactically valid DNS name (not looked up)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    if not text or len(text) > 253:
        return False
    labels = text.rstrip(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _instance_from_url(name: str, url: str, *, origin: str) -> InstanceTarget:
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1" (unclosed or invalid IPv6 brackets)
        raise TargetNotFoundError(f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetNotFoundError(f"{url!r} is not an http(s)://host[:port] URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise TargetNotFoundError(f"{url!r} has an invalid port") from None
    return InstanceTarget(name=name, endpoint=url.rstrip("/"), access_method="api", origin=origin)


def local_instance(name: str, port: int | None = None) -> InstanceTarget:
    """``localhost``: the filesystem when the MLOS Core models dir here is writable, else the
    API (``MLOS_CORE_ENDPOINT`` or ``http://localhost:8080``, as upstream)."""
    env = os.environ.get("MLOS_CORE_ENDPOINT")
    endpoint = f"http://localhost:{port}" if port else (env or f"http://localhost:{DEFAULT_PORT}")
    method = "filesystem" if writable_dir(DEFAULT_MODELS_DIR) else "api"
    return InstanceTarget(
        name=name,
        endpoint=endpoint.rstrip("/"),
        access_method=method,
        storage_path=DEFAULT_MODELS_DIR if method == "filesystem" else None,
        origin="localhost",
    )


def writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


# ---- storage ------------------------------------------------------------------------------
def storage_from_location(
    name: str, location: str, conf: TargetConfig | None = None, config: Config | None = None
) -> StorageTarget:
    """A StorageTarget for a path or file://, nfs://, s3:// URL."""
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    if scheme == "file":
        location = urlsplit(location).path
        scheme = ""
    if scheme == "s3" and not urlsplit(location).netloc:
        raise TargetNotFoundError(
            f"{location!r}: an s3:// target needs a bucket: s3://bucket/prefix"
        )
    if scheme == "nfs" and not urlsplit(location).netloc:
        raise TargetNotFoundError(
            f"{location!r}: an nfs:// target needs a server: nfs://server/export"
        )
    if not scheme:
        location = str(Path(location).expanduser().absolute())
    kind = scheme or "filesystem"
    if conf is not None and conf.storage_type == "nfs" and kind == "filesystem":
        kind = "nfs"  # an NFS export already mounted at a local path
    notify = [
        _member(entry, conf, config, f"mlos_targets.{name}.notify_instances", force_api=True)
        for entry in (conf.notify_instances if conf else [])
    ]
    return StorageTarget(
        name=name,
        storage_type=kind,
        location=location,
        mount_path=conf.mount_path if conf else None,
        endpoint_url=conf.endpoint_url if conf else None,
        region=conf.region if conf else None,
        profile=conf.profile if conf else None,
        notify_instances=notify,
    )


# ---- configured targets -------------------------------------------------------------------
def _from_config(name: str, conf: TargetConfig, config: Config, key: str) -> Target:
    if conf.type == "cluster":
        return _cluster(name, conf, config, key)
    if conf.type == "network_storage":
        assert conf.storage_path is not None  # checked by load_config
        return storage_from_location(name, conf.storage_path, conf, config)
    return configured_instance(name, conf, key, config)


def configured_instance(
    name: str, conf: TargetConfig, key: str, config: Config | None = None
) -> InstanceTarget:
    """An instance from its config entry: the access method and endpoint are inferred
    from what is configured (see docs/cache-and-config.md, 'The config file')."""
    endpoint = _endpoint_for(name, conf, key, config)
    host = urlsplit(endpoint).hostname or ""
    method = conf.access_method or _infer_method(conf, host)
    storage_path = conf.storage_path
    if method in ("filesystem", "ssh", "nfs") and not storage_path:
        storage_path = DEFAULT_MODELS_DIR
    ssh_host = conf.ssh_host or (host if method == "ssh" else None)
    return InstanceTarget(
        name=name,
        endpoint=endpoint,
        access_method=method,
        storage_path=storage_path if method != "api" else conf.storage_path,
        ssh_host=ssh_host,
        ssh_user=conf.ssh_user,
        ssh_port=conf.ssh_port,
        ssh_key=str(Path(conf.ssh_key).expanduser()) if conf.ssh_key else None,
        ssh_options=list(conf.ssh_options),
        ssh_persist=conf.ssh_persist,
        token=conf.resolved_token(),
        dir_mode=conf.dir_mode,
        file_mode=conf.file_mode,
        timeout=conf.timeout or DEFAULT_TIMEOUT,
        origin="config",
    )


def _endpoint_for(name: str, conf: TargetConfig, key: str, config: Config | None) -> str:
    if conf.endpoint:
        url = conf.endpoint if "://" in conf.endpoint else f"http://{conf.endpoint}"
        try:
            return _instance_from_url(name, url, origin="config").endpoint
        except TargetNotFoundError as exc:
            raise ConfigError(
                exc.message, path=str(config.path) if config else None, key=f"{key}.endpoint"
            ) from None
    host = conf.ssh_host or (name if is_host(name) else None)
    if host and host.lower() != "localhost":
        return f"http://{_url_host(host)}:{DEFAULT_PORT}"
    return os.environ.get("MLOS_CORE_ENDPOINT", f"http://localhost:{DEFAULT_PORT}").rstrip("/")


def _infer_method(conf: TargetConfig, host: str) -> str:
    if conf.storage_type == "api":
        return "api"
    if conf.storage_type == "nfs":
        return "nfs"
    if conf.ssh_host or conf.ssh_user or conf.ssh_key:
        return "ssh"
    if conf.storage_path and host in LOCAL_HOSTS:
        return "filesystem"
    if conf.storage_type == "filesystem":
        return "filesystem" if host in LOCAL_HOSTS else "ssh"
    return "api"


def _cluster(name: str, conf: TargetConfig, config: Config, key: str) -> ClusterTarget:
    members = [_member(entry, conf, config, f"{key}.instances") for entry in conf.instances]
    template = _member_template(name, conf, key, config)
    return ClusterTarget(
        name=name,
        instances=members,
        strategy=conf.strategy or "all",
        discovery=conf.discovery,
        max_parallel=conf.max_parallel,
        template=template,
        relay=conf.relay,
    )


def _member_template(name: str, conf: TargetConfig, key: str, config: Config) -> InstanceTarget:
    defaults = _defaults_only(conf)
    return configured_instance(name, defaults, key, config)


def _defaults_only(conf: TargetConfig) -> TargetConfig:
    """The instance-level settings of a cluster entry, as a plain instance config."""
    data = {f.name: getattr(conf, f.name) for f in fields(TargetConfig)}
    cluster_only = ("type", "instances", "strategy", "discovery", "max_parallel", "relay")
    for k in (*cluster_only, "notify_instances"):
        data.pop(k)
    data["type"] = "instance"
    if isinstance(conf, ClusterConfig) or conf.type == "cluster":
        data["endpoint"] = None
        data["ssh_host"] = None
    return TargetConfig(**data)


def _member(
    entry: str,
    conf: TargetConfig | None,
    config: Config | None,
    key: str,
    *,
    force_api: bool = False,
) -> InstanceTarget:
    """A cluster member / notified instance: a configured name, a URL or host[:port]; the
    cluster's access settings apply to unnamed members."""
    path = str(config.path) if config else None
    if config is not None and entry in config.mlos_targets:
        target = config.mlos_targets[entry]
        if target.type != "instance":
            raise ConfigError(
                f"{entry!r} is a {target.type}, not an instance", path=path, key=key,
                hint="list instances (names, host:port or URLs) here, not clusters or storage",
            )  # fmt: skip
        member = configured_instance(entry, target, f"mlos_targets.{entry}", config)
        return _as_api(member) if force_api else member
    url = entry if "://" in entry else None
    if url is None:
        host, port = split_host_port(entry)
        if host is None:
            raise ConfigError(
                f"{entry!r} is neither a configured target, a host[:port] nor a URL",
                path=path, key=key, hint=_known_hint(config),
            )  # fmt: skip
        url = f"http://{_url_host(host)}:{port or DEFAULT_PORT}"
    try:
        base = _instance_from_url(entry, url, origin="cluster")
    except TargetNotFoundError as exc:
        raise ConfigError(exc.message, path=path, key=key) from None
    if conf is None or force_api:
        return base
    defaults = _defaults_only(conf)
    defaults.endpoint = base.endpoint
    member = configured_instance(entry, defaults, key, config)
    member.origin = "cluster"
    return member


def _as_api(target: InstanceTarget) -> InstanceTarget:
    target.access_method = "api"
    return target
