"""Service-discovery registration: an instance announces itself while it runs.

``mlos-core serve --cluster prod --advertise http://10.0.0.5:8080 --discovery URI`` publishes
this instance's record (upstream MLOS Core's ``mlos_instance_info_t``)::

    {"instance_id": ..., "endpoint": ..., "cluster_name": ..., "storage_path": ...}

Backends (the same URIs ``axon`` discovers with):

- ``etcd://host:port[,host:port][/root]``: the record is put at
  ``<root>/clusters/<cluster>/instances/<instance_id>`` (root ``/mlos``) under a lease of
  ``ttl`` seconds, renewed every ``ttl/3``. A clean shutdown revokes the lease (the key goes at
  once); a killed instance's key goes when the lease expires. If the lease was lost (etcd
  down for longer than the TTL), the next renewal grants a new one and writes the key again.
- ``consul://host:port``: the local agent registers service ``mlos-core`` (ID = instance id,
  tag ``mlos-cluster=<cluster>``, the record as Meta) with an HTTP check on ``/health`` every
  ``ttl/3`` seconds; critical for a minute -> consul deregisters it. Every ``ttl/3`` we check
  the agent still has the service and register it again if not. Clean shutdown deregisters.
  ``CONSUL_HTTP_TOKEN`` is sent as the ACL token.
- ``k8s://...``: nothing to do: the Service's selector lists ready pods by itself.

Registration never stops the server from serving: failures are logged and retried.

The other way round, :func:`list_members` asks the same source which instances of this
instance's cluster are registered (``GET /v1/cluster/members``): etcd's records under the
cluster's prefix, consul's ``mlos-core`` services tagged with the cluster (with their check
status); without a discovery source the member list is this instance alone.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import signal
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

import httpx

if TYPE_CHECKING:
    from mlos_core.settings import Settings

log = logging.getLogger("mlos_core.discovery")

DEFAULT_TTL = 10.0


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    endpoint: str
    cluster_name: str
    storage_path: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Registrar(Protocol):
    def register(self) -> None: ...
    def keepalive(self) -> None: ...
    def deregister(self) -> None: ...


def _split(item: str, default_port: int) -> str:
    parts = urlsplit(f"//{item}")
    if not parts.hostname:
        raise ValueError(f"no host in {item!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or default_port}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


class EtcdRegistrar:
    """Record under a lease, kept alive through etcd's JSON gateway."""

    def __init__(self, uri: str, record: InstanceRecord, ttl: float, timeout: float) -> None:
        parts = urlsplit(uri)
        scheme = "https" if parts.scheme.endswith("+https") else "http"
        self.bases = [f"{scheme}://{_split(i.strip(), 2379)}" for i in parts.netloc.split(",")]
        root = parts.path.rstrip("/") or "/mlos"
        self.key = f"{root}/clusters/{record.cluster_name}/instances/{record.instance_id}"
        self.record = record
        self.ttl = max(2, round(ttl))  # etcd's minimum useful lease is a couple of seconds
        self.timeout = timeout
        self.lease: str | None = None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        for base in self.bases:
            try:
                response = httpx.post(f"{base}{path}", json=body, timeout=self.timeout)
                response.raise_for_status()
                data: dict[str, Any] = response.json()
                return data
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{base}: {exc}")
        raise ConnectionError("etcd unreachable: " + "; ".join(errors))

    def register(self) -> None:
        self.lease = str(self._post("/v3/lease/grant", {"TTL": self.ttl})["ID"])
        body = {"key": _b64(self.key), "value": _b64(self.record.to_json()), "lease": self.lease}
        self._post("/v3/kv/put", body)
        log.info("registered %s in etcd (lease %s, ttl %ss)", self.key, self.lease, self.ttl)

    def keepalive(self) -> None:
        if self.lease is None:
            self.register()
            return
        answer = self._post("/v3/lease/keepalive", {"ID": self.lease}).get("result", {})
        if int(answer.get("TTL", 0)) <= 0:  # lease expired while we could not renew it
            log.warning("etcd lease %s expired; registering %s again", self.lease, self.key)
            self.register()

    def deregister(self) -> None:
        if self.lease is not None:
            self._post("/v3/lease/revoke", {"ID": self.lease})
            log.info("deregistered %s from etcd", self.key)
            self.lease = None


class ConsulRegistrar:
    """Agent service registration with an HTTP health check."""

    def __init__(self, uri: str, record: InstanceRecord, ttl: float, timeout: float) -> None:
        parts = urlsplit(uri)
        scheme = "https" if parts.scheme.endswith("+https") else "http"
        self.base = f"{scheme}://{_split(parts.netloc, 8500)}"
        self.record = record
        self.ttl = ttl
        self.timeout = timeout
        token = os.environ.get("CONSUL_HTTP_TOKEN")
        self.headers = {"X-Consul-Token": token} if token else {}

    def payload(self) -> dict[str, Any]:
        interval = f"{max(1, round(self.ttl / 3))}s"
        meta = {k: v or "" for k, v in asdict(self.record).items()}
        return {
            "ID": self.record.instance_id,
            "Name": "mlos-core",
            "Tags": [f"mlos-cluster={self.record.cluster_name}"],
            "Meta": meta,
            "Check": {
                "HTTP": f"{self.record.endpoint}/health",
                "Interval": interval,
                "Timeout": interval,
                "DeregisterCriticalServiceAfter": "1m",
            },
        }

    def _put(self, path: str, body: dict[str, Any] | None = None) -> None:
        try:
            response = httpx.put(
                f"{self.base}{path}", json=body, headers=self.headers, timeout=self.timeout
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ConnectionError(f"consul agent {self.base}: {exc}") from exc

    def register(self) -> None:
        self._put("/v1/agent/service/register", self.payload())
        log.info("registered service %s with consul", self.record.instance_id)

    def keepalive(self) -> None:
        """The agent runs the health check itself; we only put the service back if the agent
        lost it (agent restarted without its data dir, or reaped it after a long outage)."""
        path = f"/v1/agent/service/{quote(self.record.instance_id, safe='')}"
        try:
            response = httpx.get(f"{self.base}{path}", headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"consul agent {self.base}: {exc}") from exc
        if response.status_code == 404:
            log.warning("consul agent lost service %s; registering again", self.record.instance_id)
            self.register()

    def deregister(self) -> None:
        self._put(f"/v1/agent/service/deregister/{quote(self.record.instance_id, safe='')}")
        log.info("deregistered service %s from consul", self.record.instance_id)


class NoRegistrar:
    """Kubernetes: the Service lists ready pods; an instance registers nothing."""

    def register(self) -> None:
        log.info("kubernetes discovery: nothing to register, the Service's endpoints list this pod")

    def keepalive(self) -> None:
        pass

    def deregister(self) -> None:
        pass


def registrar_for(uri: str, record: InstanceRecord, ttl: float, timeout: float = 5.0) -> Registrar:
    """The registrar for a discovery URI; ValueError for a scheme we cannot register with."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("etcd", "etcd+http", "etcd+https"):
        return EtcdRegistrar(uri, record, ttl, timeout)
    if scheme in ("consul", "consul+http", "consul+https"):
        return ConsulRegistrar(uri, record, ttl, timeout)
    if scheme in ("k8s", "kubernetes"):
        return NoRegistrar()
    raise ValueError(
        f"cannot register with {uri!r}: use etcd://, consul:// or k8s:// (dns+srv records are"
        " published by the DNS server's owner)"
    )


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


class Registration:
    """Registers at ``start()``, renews every ``ttl/3`` in a thread, removes at ``stop()``."""

    def __init__(self, registrar: Registrar, ttl: float) -> None:
        self.registrar = registrar
        self.interval = max(0.5, ttl / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery-keepalive", daemon=True)
        self._old_sigterm: Any = None

    def start(self) -> Registration:
        self._attempt(self.registrar.register)
        self._thread.start()
        return self

    def _attempt(self, action: Any) -> bool:
        try:
            action()
            return True
        except (ConnectionError, KeyError, ValueError) as exc:
            log.warning(
                "discovery: %s failed: %s (retrying in %.1fs)", action.__name__, exc, self.interval
            )
            return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._attempt(self.registrar.keepalive)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._attempt(self.registrar.deregister)

    def __enter__(self) -> Registration:
        # uvicorn handles SIGTERM, then re-raises it once the server has stopped; with the
        # default handler that would kill us before __exit__ deregisters. Make it an exit.
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)


def registered(
    uri: str | None,
    *,
    cluster: str | None,
    instance_id: str,
    advertise: str,
    storage_path: str | None,
    ttl: float = DEFAULT_TTL,
) -> AbstractContextManager[Registration | None]:
    """A context manager keeping this instance registered with ``uri`` while inside it
    (nothing when ``uri`` is None). ValueError at once for a URI we cannot register with."""
    if uri is None:
        return nullcontext()
    if not cluster:
        raise ValueError("--discovery needs --cluster NAME")
    record = InstanceRecord(instance_id, advertise.rstrip("/"), cluster, storage_path)
    return Registration(registrar_for(uri, record, ttl), ttl)


# ---- the members of this instance's cluster (GET /v1/cluster/members) ---------------------
class DiscoveryUnavailable(ConnectionError):
    """The discovery source could not be asked (unreachable, refused, answered garbage)."""


@dataclass(frozen=True)
class ClusterMember:
    """One member as the discovery source lists it. ``status`` is the source's word for it:
    ``registered`` (an etcd record, alive while its lease is), consul's check status
    (``passing``, ``warning``, ``critical``), ``self`` (no discovery source)."""

    instance_id: str
    endpoint: str  # the URL it advertised, no trailing slash
    storage_path: str | None
    status: str
    is_self: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MemberList:
    """What :func:`list_members` found: the members sorted by id, and one warning per record
    that could not be used (one bad record never hides the others)."""

    cluster: str
    source: str  # "etcd", "consul" or "static"
    members: list[ClusterMember]
    warnings: list[str]


def _record_member(data: Any, cluster: str, status: str) -> ClusterMember:
    """A member from one instance record; ValueError saying what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    instance_id, endpoint = data.get("instance_id"), data.get("endpoint")
    if not isinstance(instance_id, str) or not instance_id.strip():
        raise ValueError("instance_id is missing or not a non-empty string")
    if not isinstance(endpoint, str):
        raise ValueError("endpoint is missing or not a string")
    try:
        parts = urlsplit(endpoint)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"endpoint {endpoint[:200]!r} is not an http(s) URL")
    if data.get("cluster_name") != cluster:
        raise ValueError(
            f"cluster_name is {str(data.get('cluster_name'))[:100]!r}, not {cluster!r}"
        )
    storage_path = data.get("storage_path") or None
    if storage_path is not None and not isinstance(storage_path, str):
        raise ValueError("storage_path is not a string")
    return ClusterMember(instance_id, endpoint.rstrip("/"), storage_path, status)


def _etcd_members(uri: str, cluster: str, timeout: float) -> tuple[list[ClusterMember], list[str]]:
    placeholder = InstanceRecord("-", "-", cluster, None)
    registrar = EtcdRegistrar(uri, placeholder, DEFAULT_TTL, timeout)
    prefix = registrar.key.rsplit("/", 1)[0] + "/"
    end = prefix[:-1] + "0"  # the key after every key under prefix ('0' is '/' + 1)
    answer = registrar._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(end)})
    kvs = answer.get("kvs", [])
    if not isinstance(kvs, list):
        raise DiscoveryUnavailable("etcd's range answer has no kvs list")
    members, warnings = [], []
    for kv in kvs:
        try:
            name = base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")
        except (ValueError, AttributeError):
            name = "?"
        try:
            data = json.loads(base64.b64decode(kv.get("value", "")))
            members.append(_record_member(data, cluster, "registered"))
        except (ValueError, AttributeError) as exc:
            warnings.append(f"{name[:200]}: malformed record: {exc}")
    return members, warnings


def _consul_members(
    uri: str, cluster: str, timeout: float
) -> tuple[list[ClusterMember], list[str]]:
    placeholder = InstanceRecord("-", "-", cluster, None)
    registrar = ConsulRegistrar(uri, placeholder, DEFAULT_TTL, timeout)
    try:
        response = httpx.get(
            f"{registrar.base}/v1/health/service/mlos-core",
            params={"tag": f"mlos-cluster={cluster}"},
            headers=registrar.headers,
            timeout=timeout,
        )
        response.raise_for_status()
        entries = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise DiscoveryUnavailable(f"consul agent {registrar.base}: {exc}") from exc
    if not isinstance(entries, list):
        raise DiscoveryUnavailable(f"consul agent {registrar.base}: the answer is not a list")
    members, warnings = [], []
    for entry in entries:
        service = entry.get("Service") if isinstance(entry, dict) else None
        sid = str(service.get("ID", "?"))[:200] if isinstance(service, dict) else "?"
        try:
            if not isinstance(service, dict):
                raise ValueError("entry has no Service object")
            checks = entry.get("Checks") or []
            states = {c.get("Status") for c in checks if isinstance(c, dict)}
            status = next((s for s in ("critical", "warning") if s in states), "passing")
            members.append(_record_member(service.get("Meta"), cluster, status))
        except (ValueError, AttributeError) as exc:
            warnings.append(f"service {sid}: malformed record: {exc}")
    return members, warnings


K8S_SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _k8s_api() -> tuple[str, dict[str, str], str | bool]:
    """(API server URL, headers, TLS verify) as client-go's in-cluster config finds them;
    ``MLOS_K8S_API`` (and ``MLOS_K8S_TOKEN``) outside a cluster, e.g. ``kubectl proxy``."""
    explicit = os.environ.get("MLOS_K8S_API")
    if explicit:
        token = os.environ.get("MLOS_K8S_TOKEN")
        return explicit.rstrip("/"), {"Authorization": f"Bearer {token}"} if token else {}, True
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        raise DiscoveryUnavailable(
            "not running in a pod (no KUBERNETES_SERVICE_HOST) and MLOS_K8S_API is not set"
        )
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = _read_text(f"{K8S_SERVICE_ACCOUNT}/token")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ca = f"{K8S_SERVICE_ACCOUNT}/ca.crt"
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}:{port}", headers, ca if os.path.exists(ca) else True


def _k8s_members(uri: str, cluster: str, timeout: float) -> tuple[list[ClusterMember], list[str]]:
    """The endpoints of the Service ``k8s://namespace/service[?port=&scheme=&storage_path=]``
    (its EndpointSlices): each pod once, ``ready`` or ``not ready``."""
    parts = urlsplit(uri)
    namespace, service = parts.netloc, parts.path.strip("/")
    namespace = namespace or _read_text(f"{K8S_SERVICE_ACCOUNT}/namespace") or ""
    if not namespace or not service or "/" in service:
        raise DiscoveryUnavailable(f"{uri!r} is not k8s://namespace/service")
    opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    base, headers, verify = _k8s_api()
    url = f"{base}/apis/discovery.k8s.io/v1/namespaces/{quote(namespace, safe='')}/endpointslices"
    try:
        response = httpx.get(
            url,
            params={"labelSelector": f"kubernetes.io/service-name={service}"},
            headers=headers,
            verify=verify,
            timeout=timeout,
        )
        response.raise_for_status()
        items = response.json().get("items") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise DiscoveryUnavailable(f"kubernetes API {base}: {exc}") from exc
    members: dict[str, ClusterMember] = {}
    ranks: dict[str, tuple[bool, bool]] = {}
    warnings: list[str] = []
    scheme = opts.get("scheme", "http")
    for item in items if isinstance(items, list) else []:
        try:
            ports = [
                p for p in item.get("ports") or [] if opts.get("port") in (None, p.get("name"))
            ]
            if not ports:
                warnings.append(
                    f"slice {item.get('metadata', {}).get('name')}: no port {opts.get('port')!r}"
                )
                continue
            port = int(ports[0]["port"])
            for ep in item.get("endpoints") or []:
                ip = str(ipaddress.ip_address((ep.get("addresses") or [""])[0]))
                name = str((ep.get("targetRef") or {}).get("name") or ep.get("hostname") or ip)
                ready = (ep.get("conditions") or {}).get("ready") is not False
                record = {
                    "instance_id": name,
                    "endpoint": f"{scheme}://{'[' + ip + ']' if ':' in ip else ip}:{port}",
                    "cluster_name": cluster,
                    "storage_path": opts.get("storage_path"),
                }
                member = _record_member(record, cluster, "ready" if ready else "not ready")
                # a dual-stack Service lists each pod in an IPv4 and an IPv6 slice: one
                # member per pod, ready over not ready, then IPv4 over IPv6
                rank = (ready, ":" not in ip)
                if name not in ranks or rank > ranks[name]:
                    members[name], ranks[name] = member, rank
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.append(f"service {namespace}/{service}: malformed EndpointSlice: {exc}")
    return list(members.values()), warnings


def list_members(settings: Settings, *, timeout: float = 5.0) -> MemberList:
    """The members of the cluster ``settings`` says this instance belongs to, as its
    discovery source lists them (etcd, consul, the Kubernetes Service's endpoints); this
    instance alone when it has no source.

    ValueError when the instance is in no cluster (no ``--cluster``) or its source cannot be
    listed (dns+srv: the zone's owner publishes it); DiscoveryUnavailable when the source
    cannot be asked."""
    cluster = settings.cluster
    if not cluster:
        raise ValueError("this instance runs without --cluster: it is in no cluster")
    own = settings.advertise or f"http://{settings.host}:{settings.port}"
    uri = settings.discovery_uri
    scheme = urlsplit(uri).scheme.lower() if uri else ""
    if scheme in ("etcd", "etcd+http", "etcd+https"):
        source = "etcd"
        try:
            members, warnings = _etcd_members(uri or "", cluster, timeout)
        except ConnectionError as exc:
            raise DiscoveryUnavailable(str(exc)) from exc
    elif scheme in ("consul", "consul+http", "consul+https"):
        source = "consul"
        members, warnings = _consul_members(uri or "", cluster, timeout)
    elif scheme in ("k8s", "kubernetes"):
        source = "kubernetes"
        members, warnings = _k8s_members(uri or "", cluster, timeout)
    elif scheme:
        raise ValueError(
            f"this instance cannot list the members of a {scheme}:// discovery source (ask "
            "it directly: `axon targets show CLUSTER` with the same discovery: URI)"
        )
    else:
        source = "static"
        storage = str(settings.models_dir)
        members, warnings = [ClusterMember(settings.instance_id, own, storage, "self")], []
    members = [
        ClusterMember(m.instance_id, m.endpoint, m.storage_path, m.status, is_self=True)
        if m.instance_id == settings.instance_id or m.endpoint == own
        else m
        for m in members
    ]
    members.sort(key=lambda m: m.instance_id)
    return MemberList(cluster, source, members, warnings)
