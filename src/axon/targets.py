"""``--target`` resolution: a name or address -> an instance, a cluster or network storage.

Order: a name under ``mlos_targets:``, then under ``clusters:``; then ``http(s)://host:port``
URLs; storage forms (an absolute path, ``file://``, ``nfs://server/export``,
``s3://bucket/prefix``); ``localhost[:port]``; a hostname or IP address (``[host]:port`` for
IPv6), which means that instance's API at port 8080 unless configured.
Anything else is a :class:`~axon.errors.TargetNotFoundError` listing the configured targets.

A host name typed as the target (``host[:port]`` or a URL's host) is looked up once, here:
one that does not resolve is most often a mistyped target name, so it fails at once with the
closest configured names, never as a transient error retried for seconds (unless a proxy
from the environment will resolve it). Nothing else touches the network: a cluster's
``discovery:`` URI is kept as data (resolved at publish time by :mod:`axon.discovery`).

A cluster member that names a configured instance (``mlos-core-1``, ``mlos-core-1:8080``,
``http://mlos-core-1:8080``) takes that instance's settings; the cluster's own instance keys
override them. Each member records where every value came from (``sources``).

Tokens: a configured ``token`` or ``token_env``; for targets typed on the command line the
variable named by ``--token-env`` (:attr:`Config.token_env_override`, which also overrides
configured ones) or ``AXON_TOKEN``. A ``token_env`` whose variable is unset is an error
before anything is sent (:func:`check_tokens`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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
    token_env: str | None = None  # the variable the token is read from (never the value)
    dir_mode: int | None = None
    file_mode: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    origin: str = "config"
    #: where each setting came from: ``mlos_targets.core-1.ssh_user``, ``clusters.prod.
    #: storage_path``, ``clusters.prod.instances[0]``, ``default``, ``inferred``, ...
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "instance"

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if v not in (None, [], {})}
        if "token" in data:
            data["token"] = "***"  # never print secrets
        for mode in ("dir_mode", "file_mode"):
            if mode in data:
                data[mode] = format_mode(data[mode])
        return {"type": "instance", **data}


def format_mode(mode: int) -> str:
    """A file mode as ``chmod`` and ``stat`` write it: ``0775``."""
    return f"{mode:04o}"


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
    #: the instance whose ``GET /v1/cluster/members`` lists members (``members_from:``)
    members_from: InstanceTarget | None = None
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
            "members_from": self.members_from.endpoint if self.members_from else None,
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


def resolve_target(spec: str, config: Config, *, check: bool = True) -> Target:
    """Resolve ``--target SPEC`` (see the module docstring for the order) with its tokens.
    ``check``: a ``token_env`` whose variable is unset is an error (:func:`check_tokens`;
    ``axon targets show`` shows it instead)."""
    target = _resolve(spec, config)
    apply_tokens(target, config)
    if check:
        check_tokens(target, config)
    return target


def _resolve(spec: str, config: Config) -> Target:
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
            hint=_known_hint(config, spec),
        ) from None


def resolve_address(spec: str, config: Config | None = None) -> Target:
    """An unnamed target: URL, storage path/URL, localhost, host[:port] or IP."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in ("http", "https"):
        target = _instance_from_url(spec, spec, origin="url")
        _check_resolves(urlsplit(target.endpoint).hostname or "", spec, config, scheme)
        return target
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
        _check_resolves(host, spec, config, "http")
        url = f"http://{_url_host(host)}:{port or DEFAULT_PORT}"
        return InstanceTarget(name=spec, endpoint=url, access_method="api", origin="host")
    raise TargetNotFoundError(
        f"unknown target {spec!r}: not a configured target, host, URL or storage location",
        hint=_known_hint(config, spec),
    )


def _known_hint(config: Config | None, spec: str = "") -> str:
    """Did you mean (the configured names closest to ``spec``), the configured names and
    ``axon targets list``, the other forms a target takes."""
    names = config.target_names if config else []
    where = f" (in {config.path})" if config else ""
    if not names:
        return (
            f"no targets configured{where}; give host[:port], http(s)://host:port, /path, "
            "nfs://... or s3://..., or add one under mlos_targets:"
        )
    close = suggestions(spec, names)
    guess = f"did you mean {' or '.join(repr(n) for n in close)}? " if close else ""
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return (
        f"{guess}configured targets{where}: {shown} (`axon targets list` shows them); or give "
        "host[:port], http(s)://host:port, /path, nfs://... or s3://..."
    )


def suggestions(spec: str, names: list[str]) -> list[str]:
    """The configured names closest to ``spec`` (a typo: ``mlos-cluster-prd``), best first."""
    if not spec:
        return []
    try:
        host = urlsplit(spec).hostname if "://" in spec else split_host_port(spec)[0]
    except ValueError:
        host = None
    import difflib  # only for an error message

    return difflib.get_close_matches(host or spec, names, n=3, cutoff=0.6)


def lookup_host(host: str) -> None:
    """Resolve ``host`` once, as the connection would; ``socket.gaierror`` when it does not.
    (Tests replace this: they may ask no DNS server but loopback.)"""
    import socket  # a filesystem publish never needs it

    socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)


def _check_resolves(host: str, spec: str, config: Config | None, scheme: str) -> None:
    """A host name typed as a target that does not resolve fails now, with the configured
    names it is closest to: it is most often a target name mistyped, and no retry helps."""
    if not host or host.lower() == "localhost" or _is_ip(host) or _proxied(host, scheme):
        return
    try:
        lookup_host(host)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TargetNotFoundError(
            f"unknown target {spec!r}: not a configured target, and {host!r} does not resolve "
            f"as a host name ({reason})",
            hint=_known_hint(config, spec),
        ) from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _proxied(host: str, scheme: str) -> bool:
    """A proxy from the environment will resolve ``host`` (not we): no lookup here."""
    if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in os.environ):
        return False
    import urllib.request  # only when a proxy is set: it costs start-up time

    proxies = urllib.request.getproxies_environment()
    if scheme not in proxies and "all" not in proxies:
        return False
    bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 - not in typeshed
    return not bypass(host, proxies)


# ---- tokens -------------------------------------------------------------------------------
ADHOC_ORIGINS = ("url", "host", "localhost")  # targets typed on the command line
ADHOC_TOKEN_ENV = "AXON_TOKEN"


def instances_of(target: Target) -> list[InstanceTarget]:
    """Every instance a publish to ``target`` may send a request to."""
    if isinstance(target, InstanceTarget):
        return [target]
    if isinstance(target, ClusterTarget):
        extra = [t for t in (target.template, target.members_from) if t is not None]
        return [*target.instances, *extra]
    return list(target.notify_instances)


def apply_tokens(target: Target, config: Config) -> None:
    """``--token-env NAME`` (``config.token_env_override``): the token of every instance of
    ``target`` is ``$NAME``; else targets typed on the command line take ``$AXON_TOKEN``.
    A token's value is never taken from the command line (it would show in ``ps``)."""
    name = config.token_env_override
    value = None
    if name:
        value = os.environ.get(name)
        if not value:
            raise ConfigError(
                f"--token-env {name}: the environment variable {name} is not set (or is empty)",
                hint=f"export {name}=<the instance's token> first; axon reads the token from "
                "the variable, never from the command line",
            )
    adhoc = os.environ.get(ADHOC_TOKEN_ENV) or None
    for inst in instances_of(target):
        if value:
            inst.token, inst.token_env = value, name
            inst.sources["token"] = f"--token-env {name}"
        elif adhoc and inst.origin in ADHOC_ORIGINS and not inst.token:
            inst.token, inst.token_env = adhoc, ADHOC_TOKEN_ENV
            inst.sources["token"] = ADHOC_TOKEN_ENV


def check_tokens(target: Target, config: Config) -> None:
    """A ``token_env`` whose variable is unset: ConfigError naming the target, the variable
    and where it is configured, before anything is sent (the instance would answer 401, and
    the message would blame a token that was never sent)."""
    for inst in instances_of(target):
        if inst.token_env and not inst.token:
            where = inst.sources.get("token")
            configured = (
                where if where and where.startswith(("mlos_targets.", "clusters.")) else None
            )
            raise ConfigError(
                f"target {inst.name!r} takes its token from the environment variable "
                f"{inst.token_env}, which is not set (or is empty): nothing was sent",
                path=str(config.path) if configured else None,
                key=configured,
                target=inst.name,
                hint=f"export {inst.token_env}=<the instance's token> and run again, or remove "
                "token_env from the config if the instance needs no token",
            )


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
        location = _file_url_path(location)
        scheme = ""
    elif not scheme and location.lower().startswith(("file:", "nfs:", "s3:")):
        written = location.split(":", 1)[0].lower()
        raise TargetNotFoundError(
            f"{location!r} is not a {written}:// URL (a {written}: URL takes two slashes)",
            hint={
                "file": "file:///mnt/shared/models (or the path itself: /mnt/shared/models)",
                "nfs": "nfs://server/export/path",
                "s3": "s3://bucket/prefix",
            }[written],
        )
    if scheme == "s3" and not urlsplit(location).netloc:
        raise TargetNotFoundError(
            f"{location!r}: an s3:// target needs a bucket: s3://bucket/prefix"
        )
    if scheme == "nfs":
        nfs = urlsplit(location)
        if not nfs.hostname:
            raise TargetNotFoundError(
                f"{location!r}: an nfs:// target needs a server: nfs://server/export"
            )
        if not nfs.path.strip("/"):
            raise TargetNotFoundError(
                f"{location!r}: an nfs:// target needs the export path after the server: "
                f"nfs://{nfs.netloc}/export/path"
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


def _file_url_path(url: str) -> str:
    """The absolute path of a ``file://`` URL. Refuses what would silently write elsewhere:
    no path (``file://`` would be the current directory) and a host part other than
    ``localhost`` (``file://tmp/x`` is host ``tmp``, path ``/x``: one slash short)."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc and parts.netloc.lower() != "localhost":
        meant = "/" + parts.netloc + path
        raise TargetNotFoundError(
            f"{url!r}: a file:// URL has no host part, and this one reads as host "
            f"{parts.netloc!r}, path {path or '/'!r}",
            hint=f"for the directory {meant} write file://{meant} (three slashes) or {meant}",
        )
    if not path.strip("/") and path != "/":
        raise TargetNotFoundError(
            f"{url!r}: file:// needs an absolute path: file:///mnt/...",
            hint="for example file:///mnt/shared/mlos/models (three slashes), or the path itself",
        )
    return path


# ---- configured targets -------------------------------------------------------------------
def _from_config(name: str, conf: TargetConfig, config: Config, key: str) -> Target:
    if conf.type == "cluster":
        return _cluster(name, conf, config, key)
    if conf.type == "network_storage":
        assert conf.storage_path is not None  # checked by load_config
        return storage_from_location(name, conf.storage_path, conf, config)
    return configured_instance(name, conf, key, config)


def configured_instance(
    name: str,
    conf: TargetConfig,
    key: str,
    config: Config | None = None,
    origins: dict[str, str] | None = None,
) -> InstanceTarget:
    """An instance from its config entry: the access method and endpoint are inferred
    from what is configured (see docs/cache-and-config.md, 'The config file').
    ``origins`` says where each key of ``conf`` was set (default: ``key.<name>``)."""
    if origins is None:
        origins = {k: f"{key}.{k}" for k in _set_keys(conf)}
    endpoint = _endpoint_for(name, conf, key, config)
    host = urlsplit(endpoint).hostname or ""
    method = conf.access_method or _infer_method(conf, host)
    storage_path = conf.storage_path
    if method in ("filesystem", "ssh", "nfs") and not storage_path:
        storage_path = DEFAULT_MODELS_DIR
    ssh_host = conf.ssh_host or (host if method == "ssh" else None)
    target = InstanceTarget(
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
        token_env=conf.token_env if not conf.token else None,
        dir_mode=conf.dir_mode,
        file_mode=conf.file_mode,
        timeout=conf.timeout or DEFAULT_TIMEOUT,
        origin="config",
    )
    target.sources = _sources(target, origins)
    return target


#: the settings of an InstanceTarget and the config keys that set them, first that is set wins
_SETTING_KEYS: dict[str, tuple[str, ...]] = {
    "endpoint": ("endpoint", "ssh_host"),
    "access_method": ("access_method", "storage_type"),
    "storage_path": ("storage_path",),
    "ssh_host": ("ssh_host",),
    "ssh_user": ("ssh_user",),
    "ssh_port": ("ssh_port",),
    "ssh_key": ("ssh_key",),
    "ssh_options": ("ssh_options",),
    "ssh_persist": ("ssh_persist",),
    "token": ("token", "token_env"),
    "dir_mode": ("dir_mode",),
    "file_mode": ("file_mode",),
    "timeout": ("timeout",),
}
#: keys only a cluster has; everything else of a cluster entry is a default for its members
CLUSTER_ONLY = (
    "type", "instances", "strategy", "discovery", "members_from", "max_parallel", "relay",
    "notify_instances",
)  # fmt: skip


def _set_keys(conf: TargetConfig) -> list[str]:
    return [f.name for f in fields(TargetConfig) if getattr(conf, f.name) not in (None, [])]


def _sources(target: InstanceTarget, origins: dict[str, str]) -> dict[str, str]:
    """Where each setting of ``target`` came from: the config key that set it, else
    ``inferred`` (from other settings: the endpoint's host, the access method) or
    ``default``."""
    sources: dict[str, str] = {}
    for setting, keys in _SETTING_KEYS.items():
        value = getattr(target, setting)
        if setting == "token":
            value = value or target.token_env
        if value in (None, []):
            continue
        found = next((origins[k] for k in keys if k in origins), None)
        if found is None:
            found = "default" if setting in ("storage_path", "timeout") else "inferred"
        sources[setting] = found
    return sources


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
    members = [
        _member(entry, conf, config, f"{key}.instances[{i}]", cluster_key=key)
        for i, entry in enumerate(conf.instances)
    ]
    template = _member_template(name, conf, key, config)
    source = None
    if conf.members_from:
        source = _member(conf.members_from, None, config, f"{key}.members_from", force_api=True)
    return ClusterTarget(
        name=name,
        instances=members,
        strategy=conf.strategy or "all",
        discovery=conf.discovery,
        max_parallel=conf.max_parallel,
        template=template,
        relay=conf.relay,
        members_from=source,
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
    data.pop("members_from")
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
    cluster_key: str | None = None,
) -> InstanceTarget:
    """A cluster member / notified instance: a configured name, a URL or host[:port].

    When the entry, or its host, names a configured instance, the member starts from that
    instance's settings (a port or URL in the entry replaces its endpoint's); the cluster's
    own instance keys (``conf``, set under ``cluster_key``) override them, and apply alone to
    members that name no configured instance. ``force_api``: reached through its API (a
    notified instance), without the cluster's settings."""
    path = str(config.path) if config else None
    name, endpoint = _member_address(entry, config, key)
    blank = TargetConfig()
    data: dict[str, Any] = {f.name: getattr(blank, f.name) for f in fields(TargetConfig)}
    origins: dict[str, str] = {}
    if name is not None:
        assert config is not None
        instance = config.mlos_targets[name]
        if instance.type != "instance":
            raise ConfigError(
                f"{entry!r} is a {instance.type}, not an instance", path=path, key=key,
                hint="list instances (names, host:port or URLs) here, not clusters or storage",
            )  # fmt: skip
        data = {f.name: getattr(instance, f.name) for f in fields(TargetConfig)}
        origins = {k: f"mlos_targets.{name}.{k}" for k in _set_keys(instance)}
        if endpoint is not None:  # the entry gives a port or a URL
            own = _endpoint_for(name, instance, f"mlos_targets.{name}", config)
            if endpoint != own:
                data["endpoint"] = endpoint
                origins["endpoint"] = key
    else:
        data["endpoint"] = endpoint
        origins["endpoint"] = key
    if conf is not None and not force_api:
        where = cluster_key or key.rsplit(".", 1)[0]
        # an instance that says how it is reached (access_method, storage_type: api for one
        # without filesystem access) keeps that unless the cluster names an access_method:
        # a cluster's storage_type alone describes its other members' storage (the seed's)
        declared = name is not None and bool(data["access_method"] or data["storage_type"])
        for k in _set_keys(conf):
            if k in CLUSTER_ONLY or k in ("endpoint", "ssh_host"):
                continue
            if k == "storage_type" and declared and not conf.access_method:
                continue
            data[k] = getattr(conf, k)
            origins[k] = f"{where}.{k}"
    for k in CLUSTER_ONLY:
        data.pop(k, None)
    settings = TargetConfig(**data, type="instance")
    member = configured_instance(entry, settings, key, config, origins)
    member.origin = "config" if name is not None else "cluster"
    return _as_api(member) if force_api else member


def _member_address(entry: str, config: Config | None, key: str) -> tuple[str | None, str | None]:
    """(the configured instance ``entry`` names, or None; the endpoint the entry itself
    gives, or None when it is only a name). ConfigError for an entry that is neither."""
    path = str(config.path) if config else None
    targets = config.mlos_targets if config is not None else {}
    if entry in targets:
        return entry, None
    if "://" in entry:
        try:
            url = _instance_from_url(entry, entry, origin="cluster").endpoint
        except TargetNotFoundError as exc:
            raise ConfigError(exc.message, path=path, key=key) from None
        url_host = urlsplit(url).hostname or ""
        return (url_host if url_host in targets else None), url
    host, port = split_host_port(entry)
    if host is None:
        raise ConfigError(
            f"{entry!r} is neither a configured target, a host[:port] nor a URL",
            path=path, key=key, hint=_known_hint(config, entry),
        )  # fmt: skip
    if host in targets:
        if port is None:
            return host, None
        own = _endpoint_for(host, targets[host], f"mlos_targets.{host}", config)
        parts = urlsplit(own)
        return host, f"{parts.scheme}://{_url_host(parts.hostname or host)}:{port}"
    return None, f"http://{_url_host(host)}:{port or DEFAULT_PORT}"


def _as_api(target: InstanceTarget) -> InstanceTarget:
    target.access_method = "api"
    return target
