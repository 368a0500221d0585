"""``axon config get|set|list``: read and change ~/.axon/config.yaml from the command line.

Keys are dotted paths into the file (``cache_dir``, ``registry.huggingface_token``,
``mlos_targets.mlos-core-1.endpoint``); a target name may itself hold dots
(``mlos_targets.10.0.0.7.timeout``): the last part that names a target key ends it.

``set`` never leaves a broken file behind: the changed file is written next to the old one,
validated exactly as every command reads it (:func:`axon.config.load_config`), and only then
renamed over it (atomic: a reader sees the old file or the new one), under a lock so two
``set`` at once cannot lose either change. A value the config refuses changes nothing; the
error names the key. PyYAML does not keep comments: when the old file had some, it is kept
as ``config.yaml.bak`` and ``set`` says so.

Values are read as YAML scalars (``30`` is a number, ``true`` a boolean, ``[a, b]`` a list);
file modes (``*_mode``) keep their digits as text (``775`` means ``chmod 775``). Secrets
(``token``, ``*_token``) are shown masked by ``get`` and ``list``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from axon.cli.flags import GoFlagsCommand
from axon.cli.output import Output, json_option, note_line
from axon.errors import EXIT_NOT_FOUND, ConfigError

SECTIONS_OF_TARGETS = ("mlos_targets", "clusters")


class KeyNotSet(ConfigError):
    """``axon config get`` of a key the file does not set and that has no default."""

    exit_code = EXIT_NOT_FOUND


@click.group("config")
def config_group() -> None:
    """Get, set and list values of the config file (~/.axon/config.yaml)."""


def _secret(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last == "token" or last.endswith("_token") or last == "password"


def _shown(key: str, value: Any) -> Any:
    if _secret(key) and value not in (None, ""):
        return "********"
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return str(value)


def _read_raw(path: Path) -> dict[str, Any]:
    """The file as plain data (validated first: a broken file is reported, not edited)."""
    from axon.config import load_config

    load_config(path if path.exists() else None)
    if not path.exists():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _target_keys() -> set[str]:
    from axon.config import TargetConfig

    return {f.name for f in dataclasses.fields(TargetConfig)}


def split_key(key: str) -> list[str]:
    """``a.b.c`` -> parts; under ``mlos_targets``/``clusters`` the target name is everything
    up to the first later part that is a target key (names may hold dots)."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise click.UsageError(f"config key {key!r} has an empty part (write a.b.c)")
    if parts[0] in SECTIONS_OF_TARGETS and len(parts) > 2:
        fields = _target_keys()
        for i in range(2, len(parts)):
            if parts[i] in fields:
                return [parts[0], ".".join(parts[1:i]), *parts[i:]]
        return [parts[0], ".".join(parts[1:])]
    return parts


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, value


def _defaults() -> dict[str, Any]:
    """Effective values of the top-level keys when the file does not set them."""
    from axon.config import axon_home, load_config

    config = load_config()
    return {
        "home_dir": str(axon_home()),
        "cache_dir": str(config.cache_dir),
        "default_namespace": config.default_namespace,  # of a reference given without one
        "registry.enable_huggingface": config.registry.enable_huggingface,
        "download.verify_checksums": config.download.verify_checksums,
    }


@config_group.command("get", cls=GoFlagsCommand)
@click.argument("key")
@json_option
def config_get_cmd(key: str, as_json: bool) -> None:
    """Print the value of KEY (dotted: registry.huggingface_token, mlos_targets.NAME.endpoint).
    Exit 3 when KEY is not set and has no default."""
    from axon.config import default_config_path

    path = default_config_path()
    node: Any = _read_raw(path)
    for part in split_key(key):
        if not isinstance(node, dict) or part not in node:
            node = None
            break
        node = node[part]
    source = "file"
    if node is None:
        node = _defaults().get(key)
        source = "default"
        if node is None:
            raise KeyNotSet(
                "not set in the config file, and it has no default",
                path=str(path),
                key=key,
                hint="list what is set with `axon config list`; set it with "
                f"`axon config set {key} VALUE`",
            )
    out = Output(as_json=as_json)
    if as_json:
        out.json({"key": key, "value": _shown(key, node), "source": source, "path": str(path)})
        return
    if isinstance(node, dict):
        for sub, value in _flatten(key, node):
            click.echo(f"{sub}: {_text(_shown(sub, value))}")
        return
    click.echo(_text(_shown(key, node)))


@config_group.command("list", cls=GoFlagsCommand)
@json_option
def config_list_cmd(as_json: bool) -> None:
    """List every value set in the config file, and the defaults in effect."""
    from axon.config import default_config_path

    path = default_config_path()
    raw = _read_raw(path)
    values = dict(_flatten("", raw)) if raw else {}
    defaults = {k: v for k, v in _defaults().items() if k not in values}
    if as_json:
        Output(as_json=True).json(
            {
                "path": str(path),
                "exists": path.exists(),
                "values": {k: _shown(k, v) for k, v in values.items()},
                "defaults": defaults,
            }
        )
        return
    click.echo(f"Current configuration ({path}{'' if path.exists() else ', not created yet'}):")
    for k, v in values.items():
        click.echo(f"  {k}: {_text(_shown(k, v))}")
    for k, v in defaults.items():
        click.echo(f"  {k}: {_text(v)}  (default)")


@config_group.command("set", cls=GoFlagsCommand)
@click.argument("key")
@click.argument("value")
@json_option
def config_set_cmd(key: str, value: str, as_json: bool) -> None:
    """Set KEY to VALUE in the config file: validated first, then written atomically (an
    invalid value changes nothing). VALUE is read as YAML: 30, true, [a, b], "text"."""
    from axon.config import default_config_path

    path = default_config_path()
    parts = split_key(key)
    parsed = _parse_value(key, value)
    with _locked(path):
        raw = _read_raw(path)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"cannot set {key}: {where} is a {type(child).__name__}, not a mapping",
                    path=str(path),
                    key=where,
                    hint=f"set {where} itself, or edit {path}",
                )
            node = child
        old = node.get(parts[-1])
        node[parts[-1]] = parsed
        backup = _write_validated(path, raw, key)
    if as_json:
        Output(as_json=True).json(
            {
                "key": key,
                "value": _shown(key, parsed),
                "previous": _shown(key, old),
                "path": str(path),
                "backup": str(backup) if backup else None,
            }
        )
        return
    click.echo(f"{key} = {_text(_shown(key, parsed))} (in {path})")
    if backup is not None:
        note_line(f"the comments of the old file were not kept; it is saved as {backup}")


def _parse_value(key: str, text: str) -> Any:
    import yaml

    if key.rsplit(".", 1)[-1].endswith("_mode"):
        return text  # digits as written: 775 means chmod 775 (the config reads it so)
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text  # not YAML: the text as it is


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One ``config set`` at a time per file (a lock file next to it)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_validated(path: Path, raw: dict[str, Any], key: str) -> Path | None:
    """Write ``raw`` to ``path`` only if it loads as a valid config; the backup of a
    commented old file, if one was made."""
    import yaml

    from axon.config import load_config
    from modelpkg.atomic import fsync_dir

    text = yaml.safe_dump(raw, sort_keys=False, default_flow_style=False)
    old_text = path.read_text(encoding="utf-8") if path.exists() else ""
    mode = (path.stat().st_mode & 0o777) if path.exists() else 0o600
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            load_config(tmp)
        except ConfigError as exc:
            exc.path = str(path)
            exc.message = f"{exc.message}; nothing written ({path} is unchanged)"
            exc.key = exc.key or key
            raise
        backup = None
        if any(line.lstrip().startswith("#") for line in old_text.splitlines()):
            backup = path.with_name(path.name + ".bak")
            backup.write_text(old_text, encoding="utf-8")
            os.chmod(backup, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return backup
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
