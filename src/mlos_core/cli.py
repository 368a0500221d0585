"""``mlos-core`` command line: ``mlos-core serve`` runs the server on uvicorn.

Every option is declared here; the library below takes plain values. ``serve`` builds the
:class:`Settings`, hands the core its model sources (the S3 sync with ``--models-url``),
builds the app, and with ``--discovery`` keeps the instance registered while it serves.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlos_core.core import Core, ModelSource
from mlos_core.errors import CoreError
from mlos_core.integrations.discovery import DEFAULT_TTL, Registration, registered
from mlos_core.integrations.relay_sources import (
    ETCD_SCHEMES,
    DiscoveryMembers,
    EtcdDesiredState,
)
from mlos_core.integrations.s3_sync import S3Sync
from mlos_core.relay import Relay
from mlos_core.relay.peers import normalize
from mlos_core.settings import (
    DEFAULT_MAX_DUPLICATES,
    DEFAULT_MAX_FILES,
    DEFAULT_MODELS_DIR,
    DEFAULT_PORT,
    DEFAULT_UPLOAD_TTL,
    LOOPBACK_HOSTS,
    Settings,
    parse_size,
)
from mlos_core.tenants import TokensFileError
from modelpkg.errors import ConfigError, InvalidReferenceError
from modelpkg.refs import DEFAULT_NAMESPACE, check_segment

if TYPE_CHECKING:
    from starlette.types import ASGIApp


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


def _namespace(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """``--default-namespace``: one reference segment, as a model id's namespace."""
    try:
        check_segment(value, what="namespace", ref=f"{value}/NAME")
    except InvalidReferenceError as exc:
        raise click.BadParameter(
            f"{value!r} is not a namespace ({exc.message}); use one segment of letters, "
            "digits, '.', '_', '-', '+', e.g. local"
        ) from None
    return value


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


def model_sources(settings: Settings) -> list[ModelSource]:
    """Where the core pulls models from besides uploads: the S3 models URL, if one is set."""
    if not settings.models_url:
        return []
    sync = S3Sync(
        settings.models_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        profile=settings.s3_profile,
    )
    return [sync]


def registration(
    discovery_uri: str | None,
    settings: Settings,
    *,
    cluster: str | None,
    advertise: str | None,
    ttl: float,
) -> AbstractContextManager[Registration | None]:
    """Keeps the instance ``settings`` describe registered with ``discovery_uri`` while
    inside (nothing without one).

    The default instance id ``mlos-core`` would make every instance of a cluster overwrite the
    same record, so with discovery it becomes ``<hostname>-<port>``."""
    host, port, instance_id = settings.host, settings.port, settings.instance_id
    if discovery_uri is not None and not cluster:
        raise click.UsageError("--discovery needs --cluster NAME")
    if discovery_uri is not None and instance_id == "mlos-core":
        instance_id = f"{socket.gethostname()}-{port}"
    if not advertise:
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        advertise = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"
    settings.instance_id, settings.advertise = instance_id, advertise.rstrip("/")
    try:
        return registered(
            discovery_uri,
            cluster=cluster,
            instance_id=instance_id,
            advertise=advertise,
            storage_path=str(settings.models_dir),
            ttl=float(ttl or DEFAULT_TTL),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--discovery") from exc


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
@click.option(
    "--register-root",
    "register_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A directory outside --models-dir whose models POST /models/register may point "
    "to (e.g. a developer's ~/.axon/cache/models); repeatable. Default: none.",
)
@click.option(
    "--trusted-keys",
    "trusted_keys",
    type=click.Path(exists=True, path_type=Path),
    help="A directory (or file) of PEM public keys and CA certificates trusted to sign "
    "models; every model must then carry a model.sig they verify (docs/signing.md). "
    "Per-tenant keys: trusted_keys in the --tokens file.",
)
@click.option("--instance-id", default="mlos-core", show_default=True)
@click.option(
    "--default-namespace",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    callback=_namespace,
    metavar="NS",
    help="Namespace of a model id written without one, in URL paths and request bodies "
    "(federated-model@v1.0 means NS/federated-model@v1.0). Keep it equal to axon's "
    "default_namespace.",
)
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
    "--max-files",
    default=DEFAULT_MAX_FILES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most files one model's manifest may list (more: 413 too_many_files).",
)
@click.option(
    "--max-duplicates",
    default=DEFAULT_MAX_DUPLICATES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most files of one model with the same content (more: 413 too_many_duplicates).",
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
# ---- connections (mlos_core.http.server) ----
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    help="Most connections open at once; at the cap a new one replaces an idle or slow one. "
    "Default: from the open-files limit (ulimit -n, raised to its hard limit at start).",
)
@click.option(
    "--max-header-size",
    default="32K",
    show_default=True,
    callback=_size,
    help="Largest request line + headers; over it: 414/431 and the connection closes.",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds for a request's line and headers to arrive (from the connection's start, "
    "or the request's first byte); then 408 and close.",
)
@click.option(
    "--keep-alive-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an idle connection is kept open between two requests.",
)
@click.option(
    "--min-body-rate",
    default="500",
    show_default=True,
    callback=_size,
    help="Bytes/s a request body must average, with --body-timeout seconds in hand; a "
    "slower body gets 408 and the connection closes (bytes kept for resume). 0: no rate.",
)
@click.option("--log-level", default="info", show_default=True)
# ---- service discovery (mlos_core.integrations.discovery) ----
@click.option("--cluster", help="Cluster this instance belongs to (with --discovery).")
@click.option(
    "--advertise",
    help="URL others reach this instance at. Default: http://HOST:PORT.",
)
@click.option(
    "--discovery",
    "discovery_uri",
    help="Register here while running: etcd://h:p[,h:p], consul://h:p or k8s://ns/svc.",
)
@click.option(
    "--discovery-ttl",
    type=float,
    default=DEFAULT_TTL,
    show_default=True,
    help="Seconds a killed instance stays discoverable (etcd lease TTL).",
)
# ---- models read from S3 (mlos_core.integrations.s3_sync) ----
@click.option(
    "--models-url",
    help="Also serve the models committed at s3://bucket/prefix (fetched into "
    "--models-dir at start-up and on every POST /models/scan).",
)
@click.option("--s3-endpoint-url", help="S3-compatible endpoint (default: AWS).")
@click.option("--s3-region", help="S3 region (default: the AWS config's).")
@click.option("--s3-profile", help="AWS profile for the credentials.")
# ---- running models (mlos_core.inference) ----
@click.option(
    "--datasets-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Evaluation data held here: DIR/<dataset>/*.npz or DIR/<namespace>/<dataset>/*.npz "
    "(arrays named after the model's inputs, plus 'labels'). Default: none.",
)
@click.option(
    "--max-loaded-models",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Models kept loaded for inference; one more unloads the least recently used.",
)
@click.option(
    "--inference-threads",
    type=click.IntRange(min=1),
    help="Threads of each inference session (CPU count // this many run at once). "
    "Default: the CPU count.",
)
@click.option(
    "--min-eval-examples",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Refuse to report an evaluation over fewer examples (an aggregate of one example "
    "is that example).",
)
@click.option(
    "--max-batch",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Run up to N inference requests queued for one model together (dynamic batching, "
    "for models whose examples are independent along the first axis). 1: off.",
)
# ---- relay: pulls from peers (mlos_core.relay, docs/relay.md) ----
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="URL",
    help="An instance this one may pull models from (base URL, e.g. http://10.0.0.6:8080); "
    "repeatable. The members of --cluster (with --discovery) are peers too.",
)
@click.option(
    "--accept-from",
    "accept_from",
    multiple=True,
    metavar="CLUSTER",
    help="Also accept the members of this cluster (same --discovery) as pull sources "
    "(promotion from staging); repeatable.",
)
@click.option(
    "--peer-token-env",
    metavar="VAR",
    help="Environment variable holding the secret instances share to read each other's "
    "blobs: sent to peers, and accepted (read-only) with --tokens.",
)
@click.option(
    "--max-pulls",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Pulls fetching at once; more wait queued.",
)
@click.option(
    "--catch-up-interval",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between two reads of the cluster's desired state (--cluster with an "
    "etcd:// --discovery); lagging models are pulled from peers.",
)
def serve(
    host: str,
    port: int,
    models_dir: Path,
    tokens_file: Path | None,
    register_roots: tuple[Path, ...],
    trusted_keys: Path | None,
    instance_id: str,
    default_namespace: str,
    max_upload_size: int | None,
    upload_ttl: float,
    max_files: int,
    max_duplicates: int,
    no_fsync: bool,
    body_timeout: float,
    max_connections: int | None,
    max_header_size: int,
    header_timeout: float,
    keep_alive_timeout: float,
    min_body_rate: int,
    log_level: str,
    cluster: str | None,
    advertise: str | None,
    discovery_uri: str | None,
    discovery_ttl: float,
    models_url: str | None,
    s3_endpoint_url: str | None,
    s3_region: str | None,
    s3_profile: str | None,
    datasets_dir: Path | None,
    max_loaded_models: int,
    inference_threads: int | None,
    min_eval_examples: int,
    max_batch: int,
    peers: tuple[str, ...],
    accept_from: tuple[str, ...],
    peer_token_env: str | None,
    max_pulls: int,
    catch_up_interval: float,
) -> None:
    """Run the MLOS Core HTTP server."""
    _start_logging(log_level, host, tokens_file)
    if max_header_size < 1024:
        raise click.BadParameter("at least 1K", param_hint="--max-header-size")
    if models_url is not None and not models_url.startswith("s3://"):
        raise click.BadParameter("use s3://bucket/prefix", param_hint="--models-url")
    settings = Settings(
        models_dir=models_dir.absolute(),
        host=host,
        port=port,
        tokens_file=tokens_file,
        register_roots=tuple(p.absolute() for p in register_roots),
        trusted_keys=trusted_keys.absolute() if trusted_keys else None,
        instance_id=instance_id,
        default_namespace=default_namespace,
        max_upload_size=max_upload_size,
        upload_ttl=upload_ttl,
        max_files=max_files,
        max_duplicates=max_duplicates,
        durable=not no_fsync,
        body_timeout=body_timeout,
        max_connections=max_connections,
        max_header_size=max_header_size,
        header_timeout=header_timeout,
        keep_alive_timeout=keep_alive_timeout,
        min_body_rate=min_body_rate,
        models_url=models_url,
        s3_endpoint_url=s3_endpoint_url,
        s3_region=s3_region,
        s3_profile=s3_profile,
        datasets_dir=datasets_dir.absolute() if datasets_dir else None,
        max_loaded_models=max_loaded_models,
        inference_threads=inference_threads,
        min_eval_examples=min_eval_examples,
        max_batch=max_batch,
        cluster=cluster,
        discovery_uri=discovery_uri,
        **_relay_settings(peers, accept_from, peer_token_env, cluster, discovery_uri),
        max_pulls=max_pulls,
        catch_up_interval=catch_up_interval,
    )
    app = _app(settings)
    from mlos_core.http import server  # uvicorn only for serve, not for --help

    # Registered with service discovery (--discovery) while serving; removed on clean exit.
    with registration(
        discovery_uri, settings, cluster=cluster, advertise=advertise, ttl=discovery_ttl
    ):
        server.serve(app, settings, log_level=log_level)


def _relay_settings(
    peers: tuple[str, ...],
    accept_from: tuple[str, ...],
    peer_token_env: str | None,
    cluster: str | None,
    discovery_uri: str | None,
) -> dict[str, Any]:
    """The relay's settings from its options, checked: a bad peer URL, --accept-from
    without a discovery source, a peer token variable that is not set: a usage error."""
    for url in peers:
        try:
            normalize(url)
        except CoreError as exc:
            raise click.BadParameter(str(exc), param_hint="--peer") from exc
    if accept_from and not (cluster and discovery_uri):
        raise click.BadParameter(
            "needs --cluster and --discovery (the other cluster's members are read from the "
            "same discovery source)",
            param_hint="--accept-from",
        )
    token = None
    if peer_token_env is not None:
        token = os.environ.get(peer_token_env, "").strip()
        if not token:
            raise click.BadParameter(
                f"environment variable {peer_token_env} is not set or empty",
                param_hint="--peer-token-env",
            )
    return {"peers": peers, "accept_from": accept_from, "peer_token": token}


def relay_for(core: Core) -> Relay:
    """The relay of ``core``: its peers listed by the discovery source (with --cluster and
    --discovery), and the cluster's desired state when that source is etcd."""
    settings = core.settings
    members = desired = None
    if settings.cluster and settings.discovery_uri:
        members = DiscoveryMembers(settings)
        scheme = settings.discovery_uri.split(":", 1)[0].lower()
        if scheme in ETCD_SCHEMES:
            desired = EtcdDesiredState(settings.discovery_uri, settings.cluster)
    return Relay(core, members=members, desired=desired)


def _start_logging(log_level: str, host: str, tokens_file: Path | None) -> None:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    warning = bind_warning(host, tokens_file)
    if warning:
        logging.getLogger("mlos_core").warning(warning)


def _app(settings: Settings) -> ASGIApp:
    """The core with its model sources, served by the HTTP app."""
    from mlos_core.http.app import create_app  # Starlette only for serve, not for --help

    try:
        core = Core(settings, model_sources(settings))
        return create_app(core, relay_for(core))
    except (TokensFileError, OSError, ConfigError) as exc:  # ConfigError: a trusted key
        raise click.ClickException(f"cannot start: {exc}") from exc


def main() -> None:
    cli(prog_name="mlos-core")
