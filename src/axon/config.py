"""``~/.axon/config.yaml``: the cache location and the publish targets.

The config is plain dataclasses (cheap to import); :func:`load_config` checks the YAML against
their type hints and turns every problem into a :class:`~axon.errors.ConfigError` naming the
file and the dotted key (``mlos_targets.core-1.ssh_port``).

Compatible with the upstream Go axon (docs/compatibility.md): ``home_dir``, ``cache_dir``,
``log_level``, ``registry``, ``download``; we add ``mlos_targets:`` and ``clusters:``::

    cache_dir: ~/.axon/cache
    mlos_targets:
      mlos-core-1: {endpoint: http://mlos-core-1:8080, access_method: ssh, ssh_user: mlos,
                    storage_path: /var/lib/mlos/models}
      mlos-cluster-prod: {type: cluster, instances: [mlos-core-1, mlos-core-2:8080]}
      shared: {type: network_storage, storage_type: nfs, storage_path: nfs://repo/models}
    clusters:
      edge: {instances: [http://10.0.0.5:8080], strategy: round-robin}

``AXON_HOME`` replaces the whole ``~/.axon`` (also inside ``cache_dir: ~/.axon/...``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from axon.errors import ConfigError, InvalidReferenceError
from modelpkg.refs import DEFAULT_NAMESPACE, check_segment

CONFIG_NAME = "config.yaml"
DEFAULT_TIMEOUT = 30.0

TargetType = Literal["instance", "cluster", "network_storage"]
StorageType = Literal["filesystem", "api", "nfs", "s3"]
AccessMethod = Literal["filesystem", "ssh", "api", "nfs"]
Strategy = Literal["all", "first-available", "round-robin"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)  # the order --help lists them in
RUNTIME_FIELDS = ("path", "token_env_override")  # Config fields the file cannot set


def axon_home() -> Path:
    """``$AXON_HOME`` when set (tests, demos), else ``~/.axon``."""
    env = os.environ.get("AXON_HOME")
    return Path(env).expanduser() if env else Path.home() / ".axon"


def expand_path(value: str | os.PathLike[str]) -> Path:
    """Expand ``~``; ``~/.axon`` means :func:`axon_home` so AXON_HOME moves everything."""
    text = os.fspath(value)
    if text == "~/.axon" or text.startswith("~/.axon/"):
        return axon_home() / text[len("~/.axon/") :] if text != "~/.axon" else axon_home()
    path = Path(text).expanduser()
    return path if path.is_absolute() else axon_home() / path


@dataclass
class RegistryConfig:
    """Upstream ``registry:`` section (kept for compatibility)."""

    url: str | None = None
    mirrors: list[str] = field(default_factory=list)
    token: str | None = None
    enable_huggingface: bool = True
    huggingface_token: str | None = None
    timeout: int | float | None = None


@dataclass
class DownloadConfig:
    """Upstream ``download:`` section (kept for compatibility)."""

    parallel: int | None = None
    max_retries: int | None = None
    verify_checksums: bool = True


@dataclass
class RelayConfig:
    """A cluster's ``relay:`` as a mapping (``relay: true`` is this with its defaults): the
    members the publisher sends to itself (``seeds``) and how many pullers one member serves
    at once (``fanout``); docs/relay.md."""

    enabled: bool = True
    seeds: int = 1
    fanout: int = 3


@dataclass
class TargetConfig:
    """One entry of ``mlos_targets:``. ``type`` is filled in by :func:`load_config`:
    given explicitly, or ``cluster`` when it has instances/discovery, ``network_storage`` for
    nfs/s3 storage without an endpoint, else ``instance``."""

    type: TargetType | None = None
    endpoint: str | None = None
    storage_type: StorageType | None = None
    storage_path: str | None = None
    access_method: AccessMethod | None = None
    ssh_host: str | None = None
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_key: str | None = None
    ssh_options: list[str] = field(default_factory=list)
    ssh_persist: float | None = None  # seconds the SSH connection stays open after a command
    token: str | None = None
    token_env: str | None = None
    dir_mode: int | None = None
    file_mode: int | None = None
    timeout: float | None = None
    instances: list[str] = field(default_factory=list)
    strategy: Strategy | None = None
    discovery: str | None = None
    members_from: str | None = None  # an instance (name or URL) listing its cluster's members
    max_parallel: int | None = None
    relay: bool | RelayConfig | None = None  # clusters: members pull from members (relay.md)
    notify_instances: list[str] = field(default_factory=list)
    mount_path: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None

    def resolved_token(self) -> str | None:
        """``token``, else the value of the environment variable ``token_env``."""
        if self.token:
            return self.token
        return os.environ.get(self.token_env) if self.token_env else None


@dataclass
class ClusterConfig(TargetConfig):
    """One entry of ``clusters:`` (the first of the two cluster forms in docs/clusters.md).
    Same keys as a target; the instance keys (access_method, storage_path, ssh_*, token...)
    apply to every member, over the settings of a configured instance a member names."""


@dataclass
class Config:
    """The whole config file. ``path`` is where it was (or would be) read from."""

    home_dir: str | None = None
    cache_dir: Path = field(default_factory=lambda: axon_home() / "cache")
    log_level: str | None = None
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    mlos_targets: dict[str, TargetConfig] = field(default_factory=dict)
    clusters: dict[str, ClusterConfig] = field(default_factory=dict)
    #: the namespace of a model reference written without one (``federated-model@v1.0``)
    default_namespace: str = DEFAULT_NAMESPACE
    path: Path = field(default_factory=lambda: axon_home() / CONFIG_NAME)
    #: ``--token-env NAME`` of the command being run (never read from the file): the bearer
    #: token of every instance it talks to is ``$NAME`` (axon.targets.apply_tokens).
    #: load_config() takes it from :data:`TOKEN_ENV_OPTION`, which the option sets.
    token_env_override: str | None = None

    @property
    def target_names(self) -> list[str]:
        """Every configured target and cluster name, sorted."""
        return sorted(set(self.mlos_targets) | set(self.clusters))


#: the ``--token-env`` given on the command line (set by the option's callback)
TOKEN_ENV_OPTION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "token_env_option", default=None
)


def default_config_path() -> Path:
    return axon_home() / CONFIG_NAME


def load_config(path: Path | None = None) -> Config:
    """Read and validate the config file; a missing default file means all defaults.

    Raises :class:`ConfigError` with ``path`` (the file) and ``key`` (dotted) on broken YAML,
    unknown keys, wrong types, bad modes and clusters with neither instances nor discovery.
    """
    explicit = path is not None
    cfg_path = Path(path) if path is not None else default_config_path()
    raw = _read_yaml(cfg_path, explicit=explicit)
    if raw is None:
        return Config(path=cfg_path, token_env_override=TOKEN_ENV_OPTION.get())
    if not isinstance(raw, dict):
        raise ConfigError(
            f"top level is {type(raw).__name__}, expected a mapping of keys",
            path=str(cfg_path),
            hint="see docs/cache-and-config.md ('The config file') for an example",
        )
    raw.pop("path", None)  # never taken from the file
    for section in ("mlos_targets", "clusters", "registry", "download"):
        if section in raw and raw[section] is None:  # `clusters:` with nothing under it
            del raw[section]
    _normalise_modes(raw, cfg_path)
    config = _validate(raw, cfg_path)
    config.path = cfg_path
    config.token_env_override = TOKEN_ENV_OPTION.get()
    config.cache_dir = expand_path(raw.get("cache_dir") or "~/.axon/cache")
    _check_namespace(config.default_namespace, cfg_path)
    for name in sorted(set(config.mlos_targets) & set(config.clusters)):
        raise ConfigError(
            f"{name!r} is defined twice, as mlos_targets.{name} and as clusters.{name}: "
            "a --target name must mean one thing",
            path=str(cfg_path),
            key=f"clusters.{name}",
            hint="rename or remove one of the two entries",
        )
    for section in ("mlos_targets", "clusters"):
        for name, target in getattr(config, section).items():
            _finish_target(target, f"{section}.{name}", cfg_path, cluster=section == "clusters")
    return config


def _check_namespace(value: str, cfg_path: Path) -> None:
    """``default_namespace`` must be one reference segment (``local``, ``team-a``)."""
    try:
        check_segment(value, what="namespace", ref=f"{value}/NAME")
    except InvalidReferenceError as exc:
        raise ConfigError(
            f"default_namespace: {value!r} is not a namespace ({exc.message})",
            path=str(cfg_path),
            key="default_namespace",
            hint="one segment of letters, digits, '.', '_', '-', '+', e.g. local",
        ) from None


def _read_yaml(cfg_path: Path, *, explicit: bool) -> Any:
    import yaml

    try:
        text = cfg_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                "config file not found", path=str(cfg_path), hint="run `axon init` to create one"
            ) from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(cfg_path)) from exc
    try:
        return yaml.load(text, Loader=_yaml_loader())  # safe: a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"not valid YAML{where}: {problem}",
            path=str(cfg_path),
            hint="fix the syntax (indentation, quotes, ':' after keys)",
        ) from exc


class _IntText(int):
    """An int read from YAML that remembers how it was written (``775``, ``0775``, ``0x1ed``):
    a file mode's meaning depends on the digits, not on the number YAML made of them."""

    text: str


@functools.cache
def _yaml_loader() -> Any:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc,valid-type]
        pass

    def construct_int(loader: Any, node: Any) -> Any:
        value = loader.construct_yaml_int(node)
        result = _IntText(value)
        result.text = str(node.value)
        return result

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return Loader


_MODE_HINT = (
    'write the octal digits, quoted or as YAML\'s octal: {key}: "0775", {key}: 0o775 '
    "(as `chmod 775`)"
)


def _parse_mode(value: Any, key: str, cfg_path: Path) -> Any:
    """A file mode as ``chmod`` reads one: octal digits, however YAML typed them.

    ``775``, ``0775``, ``"775"``, ``"0775"`` and ``"0o775"`` all mean ``0o775``: a plain
    number is read as its digits (YAML would make ``775`` the decimal 775, i.e. 0o1407).
    Anything else (digits 8 or 9, a sign, hex, a fraction, a boolean, more than 0o7777) is
    refused rather than guessed."""
    if value is None:
        return None
    name = key.rsplit(".", 1)[-1]

    def refuse(why: str) -> ConfigError:
        return ConfigError(why, path=str(cfg_path), key=key, hint=_MODE_HINT.format(key=name))

    if isinstance(value, bool) or not isinstance(value, int | str):
        raise refuse(f"{value!r} is not a file mode")
    text = value if isinstance(value, str) else getattr(value, "text", str(value))
    digits = text.strip().replace("_", "")
    if digits[:2].lower() == "0o":
        digits = digits[2:]
    if not digits.isascii() or not digits.isdigit():
        raise refuse(f"{text!r} is not a file mode (octal digits 0-7, e.g. 0755)")
    if any(d in "89" for d in digits):
        raise refuse(
            f"{text} has the digit 8 or 9, so it is no octal file mode (a decimal mode such as "
            f"493 is ambiguous: write its octal digits)"
        )
    mode = int(digits, 8)
    if mode > 0o7777:
        raise refuse(f"{text} is more than 7777 (octal): modes are at most 4 octal digits")
    return mode


def _normalise_modes(raw: dict[str, Any], cfg_path: Path) -> None:
    for section in ("mlos_targets", "clusters"):
        entries = raw.get(section)
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            for mode_key in ("dir_mode", "file_mode"):
                if mode_key in entry:
                    key = f"{section}.{name}.{mode_key}"
                    entry[mode_key] = _parse_mode(entry[mode_key], key, cfg_path)


def _validate(raw: dict[str, Any], cfg_path: Path) -> Config:
    """Check ``raw`` against the dataclasses' type hints and build them.

    A small hand-written checker rather than pydantic: building pydantic's schema cost
    ~0.3 s on every command, most of an unchanged re-publish (target: under 0.5 s in all).
    """
    try:
        config = _build(Config, raw, "")
    except _Invalid as exc:
        raise ConfigError(
            exc.message, path=str(cfg_path), key=exc.key or None, hint=exc.hint
        ) from None
    assert isinstance(config, Config)
    return config


class _Invalid(Exception):
    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.key, self.message, self.hint = key, message, hint


def _shown(value: Any) -> str:
    return type(value).__name__ if isinstance(value, dict | list) else f"{value!r:.80}"


def _join(key: str, part: object) -> str:
    return f"{key}.{part}" if key else str(part)


def _build(cls: type, raw: Any, key: str) -> Any:
    """A dataclass instance from a mapping: unknown keys and wrong types are errors."""
    if not isinstance(raw, dict):
        raise _Invalid(key, f"should be a valid dictionary, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls) if f.name not in RUNTIME_FIELDS}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        sub = _join(key, name)
        if name not in names:
            raise _Invalid(sub, "unknown key", f"known keys here: {', '.join(sorted(names))}")
        values[name] = _check(value, hints[name], sub)
    return cls(**values)


def _check(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        last: _Invalid | None = None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, key)
            except _Invalid as exc:
                last = exc
        assert last is not None
        raise last
    if origin is typing.Literal:
        if value in args:
            return value
        expected = ", ".join(repr(a) for a in args[:-1]) + f" or {args[-1]!r}"
        raise _Invalid(key, f"{_shown(value)} is not allowed; expected {expected}")
    if origin is list:
        if not isinstance(value, list):
            raise _Invalid(key, f"should be a valid list, got {_shown(value)}")
        return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(key, f"should be a valid dictionary, got {_shown(value)}")
        return {str(k): _check(v, args[1], _join(key, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, key)  # type: ignore[arg-type]
    return _scalar(value, tp, key)


def _scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(key, f"should be a valid boolean (true/false), got {_shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)  # a plain int, not the _IntText the loader made
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value)
        raise _Invalid(key, f"should be a valid integer, got {_shown(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
        raise _Invalid(key, f"should be a valid number, got {_shown(value)}")
    if tp in (str, Path):
        if isinstance(value, str):
            return tp(value)
        if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. `version: 1` or a numeric token
        raise _Invalid(key, f"should be a valid string, got {_shown(value)}")
    raise _Invalid(key, f"unsupported setting type {tp!r}")  # a bug in the dataclasses


def _looks_like_storage(target: TargetConfig) -> bool:
    if target.storage_type in ("nfs", "s3") and not target.endpoint:
        return True
    return (target.storage_path or "").startswith(("nfs://", "s3://", "file://"))


def _finish_target(target: TargetConfig, key: str, cfg_path: Path, *, cluster: bool) -> None:
    """Infer ``type`` and check what a type needs."""
    if cluster and target.type not in (None, "cluster"):
        raise ConfigError(
            f"entries under clusters: are clusters, not {target.type!r}",
            path=str(cfg_path),
            key=f"{key}.type",
            hint="move it under mlos_targets:, or drop the type",
        )
    if target.type is None:
        if cluster or target.instances or target.discovery or target.members_from:
            target.type = "cluster"
        elif _looks_like_storage(target):
            target.type = "network_storage"
        else:
            target.type = "instance"
    if target.type == "cluster" and not (
        target.instances or target.discovery or target.members_from
    ):
        raise ConfigError(
            "a cluster needs instances, a discovery source or an instance to ask for members",
            path=str(cfg_path),
            key=f"{key}.instances",
            hint="add `instances: [host:8080, ...]`, `discovery: etcd://host:2379` or "
            "`members_from: mlos-core-1` (an instance started with --cluster)",
        )
    if target.type == "network_storage" and not target.storage_path:
        raise ConfigError(
            "network storage needs storage_path (a path, nfs:// or s3:// URL)",
            path=str(cfg_path),
            key=f"{key}.storage_path",
        )
    for attr in ("timeout", "max_parallel", "ssh_port"):
        value = getattr(target, attr)
        if value is not None and value <= 0:
            raise ConfigError(
                f"must be positive, got {value}", path=str(cfg_path), key=f"{key}.{attr}"
            )
    if target.ssh_persist is not None and target.ssh_persist < 0:
        raise ConfigError(
            f"must be 0 (off) or more seconds, got {target.ssh_persist}",
            path=str(cfg_path),
            key=f"{key}.ssh_persist",
        )


def write_default_config(path: Path, cache_dir: Path) -> None:
    """Write a starter config (used by ``axon init``); never overwrites an existing file."""
    from modelpkg.atomic import atomic_write_text

    text = (
        "# axon configuration (see docs/cache-and-config.md: 'The config file')\n"
        f"cache_dir: {cache_dir}\n"
        f"# default_namespace: {DEFAULT_NAMESPACE}   # of a name given without one (my-model@v1)\n"
        "\n"
        "# Publish targets. Examples:\n"
        "# mlos_targets:\n"
        "#   mlos-core-1:\n"
        "#     endpoint: http://mlos-core-1:8080\n"
        "#     access_method: ssh            # filesystem | ssh | api | nfs\n"
        "#     ssh_user: mlos\n"
        "#     storage_path: /var/lib/mlos/models\n"
        "#   mlos-cluster-prod:\n"
        "#     type: cluster\n"
        "#     instances: [mlos-core-1, mlos-core-2:8080]\n"
        "mlos_targets: {}\n"
        "clusters: {}\n"
    )
    atomic_write_text(path, text)
