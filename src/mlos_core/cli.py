"""``mlos-core`` command line: ``mlos-core serve`` runs the server on uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

import click

from mlos_core.integrations.discovery import discovery_options, registration_from_options
from mlos_core.integrations.s3_sync import pop_remote_options, remote_options
from mlos_core.settings import (
    DEFAULT_MODELS_DIR,
    DEFAULT_PORT,
    DEFAULT_UPLOAD_TTL,
    LOOPBACK_HOSTS,
    Settings,
    parse_size,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="axon-publish", prog_name="mlos-core")
def cli() -> None:
    """mlos-core: receive, store and register models for MLOS Core."""


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, tokens_file: Path | None) -> str | None:
    """The loud warning for a server reachable from other machines without tokens."""
    if tokens_file is not None or _is_loopback(host):
        return None
    return (
        f"!!! binding {host} WITHOUT --tokens: anyone who can reach this address can upload, "
        "replace and delete models. Give --tokens FILE or bind 127.0.0.1. !!!"
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option(
    "--models-dir",
    default=str(DEFAULT_MODELS_DIR),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where models live: <models-dir>/<ns>/<name>/<version>/.",
)
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML tenants file; writes then need 'Authorization: Bearer <token>'.",
)
@click.option("--instance-id", default="mlos-core", show_default=True)
@click.option(
    "--max-upload-size",
    callback=_size,
    help="Largest model accepted (all files), e.g. 20G. Default: no limit.",
)
@click.option(
    "--upload-ttl",
    default=DEFAULT_UPLOAD_TTL,
    show_default=True,
    type=float,
    help="Seconds an idle resumable upload is kept before it expires.",
)
@click.option(
    "--no-fsync", is_flag=True, help="Skip fsync (tests/benchmarks only: not crash safe)."
)
@click.option(
    "--body-timeout",
    default=120.0,
    show_default=True,
    type=float,
    help="Seconds without a body byte before an upload is dropped (bytes kept for resume).",
)
@click.option("--log-level", default="info", show_default=True)
@discovery_options
@remote_options
def serve(
    host: str,
    port: int,
    models_dir: Path,
    tokens_file: Path | None,
    instance_id: str,
    max_upload_size: int | None,
    upload_ttl: float,
    no_fsync: bool,
    body_timeout: float,
    log_level: str,
    **discovery: Any,
) -> None:
    """Run the MLOS Core HTTP server."""
    import uvicorn

    from mlos_core.http.app import create_app
    from mlos_core.tenants import TokensFileError

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    warning = bind_warning(host, tokens_file)
    if warning:
        logging.getLogger("mlos_core").warning(warning)
    settings = Settings(
        models_dir=models_dir.absolute(),
        host=host,
        port=port,
        tokens_file=tokens_file,
        instance_id=instance_id,
        max_upload_size=max_upload_size,
        upload_ttl=upload_ttl,
        durable=not no_fsync,
        body_timeout=body_timeout,
        **pop_remote_options(discovery),
    )
    try:
        app = create_app(settings)
    except (TokensFileError, OSError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    # Registered with service discovery (--discovery) while serving; removed on clean exit.
    with registration_from_options(
        discovery,
        host=host,
        port=port,
        instance_id=instance_id,
        storage_path=str(settings.models_dir),
    ):
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level.lower(),
            access_log=False,  # our middleware logs one line per request
            timeout_keep_alive=30,
        )


def main() -> None:
    cli(prog_name="mlos-core")
