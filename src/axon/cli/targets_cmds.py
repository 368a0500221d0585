"""``axon targets list`` and ``axon targets show NAME``: what a ``--target`` resolves to.

``show`` of a cluster with a ``discovery:`` source also asks that source for the members and
checks each one's ``GET /health`` (see :func:`discovered_members`); one with ``members_from:``
asks that instance (``GET /v1/cluster/members``); ``--no-discover`` skips both. For each
configured member it says where every setting came from (the instance's entry, the cluster's,
the member entry, a default). Modes are printed in octal (``0775``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from axon.cli.output import Output, json_option
from axon.errors import AxonError

if TYPE_CHECKING:
    from axon.config import Config
    from axon.targets import ClusterTarget, InstanceTarget, StorageTarget, Target


def _set_token_env(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    import re

    from axon.config import TOKEN_ENV_OPTION

    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # never echo it: a token typed here by mistake would land in logs and CI output
        raise click.BadParameter(
            f"the value given ({len(value)} characters) is not an environment variable name: "
            "give the NAME of a variable that holds the token (export NAME=...; never the "
            "token itself)",
            ctx,
            param,
        )
    TOKEN_ENV_OPTION.set(value)  # also None: a command run in-process after another


#: ``--token-env NAME`` for the commands that talk to instances (publish, status, register,
#: promote, sync)
token_env_option = click.option(
    "--token-env",
    metavar="NAME",
    expose_value=False,
    callback=_set_token_env,
    help="Send the bearer token held in the environment variable NAME (it overrides the "
    "config's token/token_env). Without it, addresses given here use $AXON_TOKEN if set.",
)


@click.group("targets")
def targets_group() -> None:
    """List and inspect publish targets (config.yaml: mlos_targets, clusters)."""


@targets_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List the configured targets and clusters."""
    from axon.config import load_config

    out = Output(as_json=as_json)
    config = load_config()
    rows = [_summary(name, config) for name in config.target_names]
    if as_json:
        out.json({"config": str(config.path), "targets": rows})
        return
    if not rows:
        out.line(f"no targets configured in {config.path}")
        out.line("(without one, --target takes host[:port], http(s)://..., /path, nfs://, s3://)")
        return
    out.table(
        ["NAME", "TYPE", "WHERE", "ACCESS"],
        [(r["name"], r["type"], r["where"], r["access"]) for r in rows],
    )


def _summary(name: str, config: Config) -> dict[str, Any]:
    from axon.targets import ClusterTarget, StorageTarget, resolve_target

    target = resolve_target(name, config, check=False)
    if isinstance(target, ClusterTarget):
        count = f"{len(target.instances)} instance(s)"
        where = f"{count} + {target.discovery}" if target.discovery else count
        if target.members_from is not None:
            where += f" + members of {target.members_from.endpoint}"
        return {"name": name, "type": "cluster", "where": where, "access": target.strategy}
    if isinstance(target, StorageTarget):
        return {
            "name": name,
            "type": "network_storage",
            "where": target.location,
            "access": target.storage_type,
        }
    return {
        "name": name,
        "type": "instance",
        "where": target.endpoint,
        "access": target.access_method,
    }


@targets_group.command("show")
@click.argument("name")
@click.option("--no-discover", is_flag=True, help="Do not query a cluster's discovery source.")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Discovery timeout.")
@json_option
def show_cmd(name: str, no_discover: bool, timeout: float, as_json: bool) -> None:
    """Show what NAME (a configured name, host, URL or storage location) resolves to."""
    from axon.config import load_config
    from axon.targets import ClusterTarget, resolve_target

    out = Output(as_json=as_json)
    target = resolve_target(name, load_config(), check=False)
    data = target.to_dict()
    discovered: list[dict[str, Any]] | None = None
    failure: AxonError | None = None
    if isinstance(target, ClusterTarget) and not no_discover:
        try:
            if target.discovery:
                discovered = discovered_members(target, timeout=timeout)
            if target.members_from is not None:
                discovered = (discovered or []) + api_members(target, timeout=timeout)
            if discovered is not None:
                data["discovered"] = discovered
        except AxonError as exc:  # still show what is configured, then fail
            failure = exc
            data["discovery_error"] = exc.to_dict()
    if as_json:
        out.json(data)
        if failure is not None:
            raise SystemExit(failure.exit_code)
        return
    _render(out, target, discovered)
    if failure is not None:
        raise failure


def discovered_members(cluster: ClusterTarget, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The hook for discovery: members from ``cluster.discovery`` with their health, as rows
    (instance_id, endpoint, storage_path, healthy, status, version, error, warning)."""
    from axon.discovery import lookup
    from axon.discovery.health import check_members

    assert cluster.discovery is not None
    result = lookup(cluster.discovery, cluster.name, timeout=timeout)
    rows = [h.to_dict() for h in check_members(result.members, timeout=timeout)]
    rows += [{"warning": w} for w in result.warnings]
    return rows


def api_members(cluster: ClusterTarget, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The members ``cluster.members_from`` lists, with the health that instance saw, as the
    rows of :func:`discovered_members` (``listed_by``: the instance asked)."""
    from axon.publish.members import listed_members

    listing = listed_members(cluster, timeout=timeout)
    rows: list[dict[str, Any]] = []
    for m in listing.members:
        row = m.to_dict()
        row["listed_by"] = listing.source
        row["status"] = "healthy" if m.healthy else m.health or m.status
        rows.append(row)
    return rows + [{"warning": f"{listing.source}: {w}"} for w in listing.warnings]


def _render(out: Output, target: Target, discovered: list[dict[str, Any]] | None) -> None:
    from axon.targets import ClusterTarget, InstanceTarget, StorageTarget

    if isinstance(target, InstanceTarget):
        _render_instance(out, target)
    elif isinstance(target, StorageTarget):
        _render_storage(out, target)
    elif isinstance(target, ClusterTarget):
        _render_cluster(out, target, discovered)


def _render_instance(out: Output, t: InstanceTarget) -> None:
    from axon.targets import format_mode

    ssh = None
    if t.access_method == "ssh":
        user = f"{t.ssh_user}@" if t.ssh_user else ""
        ssh = f"{user}{t.ssh_host}:{t.ssh_port or 22}" + (f" key {t.ssh_key}" if t.ssh_key else "")
    out.fields(
        [
            ("target", t.name),
            ("type", "instance"),
            ("endpoint", t.endpoint),
            ("access", t.access_method),
            ("storage_path", t.storage_path),
            ("ssh", ssh),
            ("token", _token_text(t)),
            ("dir_mode", format_mode(t.dir_mode) if t.dir_mode is not None else None),
            ("file_mode", format_mode(t.file_mode) if t.file_mode is not None else None),
            ("timeout", f"{t.timeout:g} s"),
            ("from", t.origin),
        ]
    )


def _token_text(t: InstanceTarget) -> str | None:
    """How the token is given, never its value: ``set``, ``$VAR``, ``$VAR (not set!)``."""
    if t.token_env:
        return f"${t.token_env}" + ("" if t.token else " (not set: a publish would stop)")
    return "set" if t.token else None


def _setting_text(t: InstanceTarget, setting: str) -> str:
    from axon.targets import format_mode

    if setting == "token":
        return _token_text(t) or ""
    value = getattr(t, setting)
    if setting in ("dir_mode", "file_mode"):
        return format_mode(value)
    if isinstance(value, list):
        return " ".join(value)
    return f"{value:g} s" if setting == "timeout" else str(value)


def _render_storage(out: Output, t: StorageTarget) -> None:
    out.fields(
        [
            ("target", t.name),
            ("type", f"network_storage ({t.storage_type})"),
            ("location", t.location),
            ("mount_path", t.mount_path),
            ("endpoint_url", t.endpoint_url),
            ("region", t.region),
            ("profile", t.profile),
            ("notify", ", ".join(i.endpoint for i in t.notify_instances)),
        ]
    )


def _render_cluster(out: Output, t: ClusterTarget, discovered: list[dict[str, Any]] | None) -> None:
    out.fields(
        [
            ("target", t.name),
            ("type", "cluster"),
            ("strategy", t.strategy),
            ("max_parallel", t.max_parallel),
            ("discovery", t.discovery),
        ]
    )
    if t.members_from is not None:
        source = t.members_from
        shown = (
            source.endpoint
            if source.name == source.endpoint
            else f"{source.name} ({source.endpoint})"
        )
        out.fields([("members_from", shown)])
    if t.instances:
        rows = [(i.name, i.endpoint, i.access_method, i.storage_path or "") for i in t.instances]
        out.table(["INSTANCE", "ENDPOINT", "ACCESS", "STORAGE"], rows, title="configured")
        settings = [
            (i.name, setting, _setting_text(i, setting), where)
            for i in t.instances
            for setting, where in i.sources.items()
        ]
        out.table(["INSTANCE", "SETTING", "VALUE", "FROM"], settings, title="member settings")
    if discovered is not None:
        members = [d for d in discovered if "warning" not in d]
        rows = [
            (
                d.get("instance_id", ""),
                d.get("endpoint", ""),
                "yes" if d.get("healthy") else f"no ({d.get('status')})",
                d.get("version") or "",
            )
            for d in members
        ]
        out.table(["MEMBER", "ENDPOINT", "HEALTHY", "VERSION"], rows, title="discovered")
        for d in discovered:
            if "warning" in d:
                out.note(f"warning: {d['warning']}")
