"""Server settings: the contract between the ``mlos-core serve`` command and the app."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from modelpkg import layout
from modelpkg.layout import STATE_DIR
from modelpkg.refs import DEFAULT_NAMESPACE

DEFAULT_MODELS_DIR = Path(layout.DEFAULT_MODELS_DIR)
DEFAULT_PORT = 8080
DEFAULT_UPLOAD_TTL = 24 * 3600.0
DEFAULT_MAX_FILES = 100_000  # files of one model (Hugging Face's advice for one repository)
DEFAULT_MAX_DUPLICATES = 10_000  # files of one model with the same content
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
DEFAULT_MAX_HEADER_SIZE = 32 * 1024

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_size(text: str) -> int:
    """``"10G"``, ``"512MiB"``, ``"1000"`` -> bytes (binary units). ValueError otherwise."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 500M, 10G, 1073741824)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class Settings:
    """Everything the app needs to know; built by the CLI (or a test) once at start."""

    models_dir: Path = DEFAULT_MODELS_DIR
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tokens_file: Path | None = None
    # directories outside models_dir that POST /models/register may point into (absolute)
    register_roots: tuple[Path, ...] = ()
    instance_id: str = "mlos-core"
    max_upload_size: int | None = None  # bytes of one model (all files); None = no limit
    upload_ttl: float = DEFAULT_UPLOAD_TTL  # seconds an idle resumable upload is kept
    max_files: int = DEFAULT_MAX_FILES  # files one manifest may list
    max_duplicates: int = DEFAULT_MAX_DUPLICATES  # files of one manifest with one sha256
    body_timeout: float = 120.0  # seconds without a body byte before a request is dropped
    # connections (mlos_core.http.server): cap, request head size, deadlines
    max_connections: int | None = None  # None: derived from the open-files limit
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE  # request line + headers, bytes
    header_timeout: float = 10.0  # seconds for a request head to arrive
    keep_alive_timeout: float = 30.0  # seconds an idle connection is kept between requests
    min_body_rate: int = 500  # bytes/s a body must average (body_timeout s in hand); 0: off
    durable: bool = True  # fsync before making anything visible (off only for benchmarks)
    # an instance reading S3 storage: the command line hands the core an S3 sync for these
    # (mlos_core.integrations.s3_sync), pulled at start-up and on every scan
    models_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_profile: str | None = None
    # a cluster member (--cluster, --discovery): GET /v1/cluster/members lists the members
    # the discovery source knows (mlos_core.integrations.discovery.list_members)
    cluster: str | None = None
    discovery_uri: str | None = None
    advertise: str | None = None  # the URL this instance registers (set when it registers)

    # running models (mlos_core.inference): datasets for evaluation, loaded-model cap, threads
    datasets_dir: Path | None = None  # <dir>/<dataset>/*.npz or <dir>/<ns>/<dataset>/*.npz
    max_loaded_models: int = 4  # sessions kept loaded (least recently used out)
    inference_threads: int | None = None  # threads of each session; None: the CPU count
    min_eval_examples: int = 10  # an evaluation over fewer examples is refused
    max_batch: int = 1  # requests queued for one model run together (1: off)
    # PEM public keys / CA certificates trusted to sign every namespace (--trusted-keys);
    # with it every model must be signed (mlos_core.signatures)
    trusted_keys: Path | None = None

    # relay (mlos_core.relay): pull sources besides the cluster's members, the secret peers
    # read each other's blobs with, pulls running at once, catch-up to the desired state
    peers: tuple[str, ...] = ()  # --peer URLs
    accept_from: tuple[str, ...] = ()  # other clusters (same discovery) accepted as sources
    peer_token: str | None = None  # from --peer-token-env; sent to peers, accepted for reads
    max_pulls: int = 2  # pulls fetching at once; more wait queued
    catch_up_interval: float = 30.0  # seconds between two reads of the desired state

    # the namespace of a model id written without one (federated-model@v1.0), in URL paths
    # and request bodies (--default-namespace): Core.parse_ref; it must match axon's
    default_namespace: str = DEFAULT_NAMESPACE

    @property
    def state_dir(self) -> Path:
        """Server housekeeping (blobs, staging, uploads) lives on the models filesystem."""
        return self.models_dir / STATE_DIR
