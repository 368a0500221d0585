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
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

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
