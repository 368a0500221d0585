"""``axon targets list`` and ``axon targets show NAME``: what a ``--target`` resolves to.

``show`` of a cluster with a ``discovery:`` source also asks that source for the members and
checks each one's ``GET /health`` (see :func:`discovered_members`); ``--no-discover`` skips it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from axon.cli.output import Output, json_option
from axon.errors import AxonError

if TYPE_CHECKING:
    from axon.config import Config
    from axon.targets import ClusterTarget, InstanceTarget, StorageTarget, Target


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

    target = resolve_target(name, config)
    if isinstance(target, ClusterTarget):
        count = f"{len(target.instances)} instance(s)"
        where = f"{count} + {target.discovery}" if target.discovery else count
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
    target = resolve_target(name, load_config())
    data = target.to_dict()
    discovered: list[dict[str, Any]] | None = None
    failure: AxonError | None = None
    if isinstance(target, ClusterTarget) and target.discovery and not no_discover:
        try:
            discovered = discovered_members(target, timeout=timeout)
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


def _render(out: Output, target: Target, discovered: list[dict[str, Any]] | None) -> None:
    from axon.targets import ClusterTarget, InstanceTarget, StorageTarget

    if isinstance(target, InstanceTarget):
        _render_instance(out, target)
    elif isinstance(target, StorageTarget):
        _render_storage(out, target)
    elif isinstance(target, ClusterTarget):
        _render_cluster(out, target, discovered)


def _render_instance(out: Output, t: InstanceTarget) -> None:
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
            ("token", "set" if t.token else None),
            ("dir_mode", oct(t.dir_mode) if t.dir_mode is not None else None),
            ("file_mode", oct(t.file_mode) if t.file_mode is not None else None),
            ("timeout", f"{t.timeout:g} s"),
            ("from", t.origin),
        ]
    )


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
    if t.instances:
        rows = [(i.name, i.endpoint, i.access_method, i.storage_path or "") for i in t.instances]
        out.table(["INSTANCE", "ENDPOINT", "ACCESS", "STORAGE"], rows, title="configured")
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
