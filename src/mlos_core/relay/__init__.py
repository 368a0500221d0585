"""Relay: this instance pulls models from its peers and serves its blobs to them
(docs/relay.md).

:class:`Relay` is built once per app (:func:`mlos_core.http.app.create_app`), started and
stopped in the app's lifespan. It holds the peer set (:mod:`.peers`), the pull jobs
(:mod:`.pull`, at most ``--max-pulls`` running at once) and, for a member of a discovered
cluster, the catch-up loop (:mod:`.catchup`) that pulls what the cluster's desired state lists.
The discovery listing and the desired state are handed in by the command line (the relay does
not know what is behind them), as the core is handed its model sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import stat
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from mlos_core.core import Core
from mlos_core.errors import NotFound
from mlos_core.relay.catchup import CatchUp, DesiredSource
from mlos_core.relay.peers import MemberSource, Peers
from mlos_core.relay.pull import CONNECT_TIMEOUT, ON_BEHALF, READ_TIMEOUT, Puller, PullJob
from mlos_core.tenants import ANONYMOUS
from modelpkg.errors import ManifestError
from modelpkg.manifest import MANIFEST_NAME, Manifest
from modelpkg.refs import ModelRef

__all__ = ["ON_BEHALF", "DesiredSource", "MemberSource", "PullJob", "Relay"]

log = logging.getLogger("mlos_core.relay")

KEEP_FINISHED = 3600.0  # seconds a finished job stays readable
MAX_JOBS = 1000  # finished jobs kept at most
PLACED_CACHED = 16  # manifests of placed models kept for serving their files


class RelayMetrics:
    """Thread-safe counters: bytes pulled and served, pulls by origin and result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pulled_bytes = 0
        self.served_bytes = 0
        self.pulls: dict[tuple[str, str], int] = defaultdict(int)

    def pulled(self, n: int) -> None:
        with self._lock:
            self.pulled_bytes += n

    def served(self, n: int) -> None:
        with self._lock:
            self.served_bytes += n

    def pull_ended(self, job: PullJob) -> None:
        with self._lock:
            self.pulls[(job.origin, job.state)] += 1


class Relay:
    def __init__(
        self,
        core: Core,
        *,
        members: MemberSource | None = None,
        desired: DesiredSource | None = None,
    ) -> None:
        settings = core.settings
        self.core = core
        self.settings = settings
        self.peer_token = settings.peer_token
        clusters = [settings.cluster, *settings.accept_from] if settings.cluster else []
        self.peers = Peers(
            settings.peers,
            clusters=[c for c in clusters if c] if members is not None else [],
            members=members,
            own=settings.advertise,
        )
        self.metrics = RelayMetrics()
        self.jobs: dict[str, PullJob] = {}
        self.puller = Puller(self)
        self.catch_up = CatchUp(self, desired) if desired is not None else None
        self._slots: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        # model id -> (manifest file identity, sha256 -> (path, size)) of placed models
        self._placed: dict[str, tuple[tuple[int, int, int], dict[str, list[tuple[str, int]]]]] = {}

    # ---- life cycle ------------------------------------------------------------------
    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.max_pulls)
        return self._slots

    @property
    def client(self) -> httpx.AsyncClient:
        """One client for every request to peers: no redirects, no proxies from the
        environment (peers are addressed directly), identity encoding."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._client

    async def start(self) -> None:
        self.peers.set_own(self.settings.advertise)
        if self.catch_up is not None:
            self._task = asyncio.create_task(self.catch_up.loop(), name="relay-catch-up")

    async def stop(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- jobs ------------------------------------------------------------------------
    def running_for(
        self, model_id: str, digest: str, tenant: str, *, commit: bool = True
    ) -> PullJob | None:
        """The pull of that build for that tenant still queued or running, if any."""
        for job in self.jobs.values():
            if (
                not job.final
                and job.ref.id == model_id
                and job.digest == digest
                and job.tenant == tenant
                and job.commit == commit
            ):
                return job
        return None

    def submit(self, job: PullJob) -> PullJob:
        """Start ``job`` (queued for a slot)."""
        self._expire()
        self.jobs[job.pull_id] = job
        job.task = asyncio.create_task(self.puller.run(job), name=f"pull-{job.pull_id}")
        return job

    def get(self, pull_id: str) -> PullJob:
        self._expire()
        job = self.jobs.get(pull_id)
        if job is None:
            raise NotFound(
                f"no pull {pull_id[:80]!r} on this instance (finished pulls are kept an hour, "
                "and none survives a restart: start the pull again, it resumes)",
                code="unknown_pull",
            )
        return job

    async def cancel(self, job: PullJob) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(BaseException):
                await job.task
        if not job.final:
            job.end("cancelled", "cancelled", "the pull was cancelled; bytes received kept")

    def _expire(self) -> None:
        now = time.monotonic()
        finished = sorted(
            (j for j in self.jobs.values() if j.finished is not None),
            key=lambda j: j.finished or 0.0,
        )
        over = len(finished) - MAX_JOBS
        for i, job in enumerate(finished):
            if i < over or now - (job.finished or now) > KEEP_FINISHED:
                self.jobs.pop(job.pull_id, None)

    # ---- who may read a blob ---------------------------------------------------------
    def reader(self, authorization: str | None, on_behalf: str | None) -> str:
        """The tenant a read is made for (with a tokens file): the caller's own, or, for the
        peer token, the tenant named in :data:`ON_BEHALF` (the tenant the peer's pull is
        for; '' when none is named: nothing is readable then). A peer pulls what the
        requesting tenant could obtain by upload, never more. Unauthorized without a token
        or with an unknown one."""
        if self.is_peer(authorization):
            return (on_behalf or "").strip()
        return self.core.tenants.authenticate(authorization).name

    def may_read(self, authorization: str | None, sha256: str, on_behalf: str | None) -> bool:
        """May the caller read blob ``sha256``? Without a tokens file: yes. With one: when
        the tenant it reads for (:meth:`reader`) holds the content here, by the rule of
        per-tenant dedup (a file of one of its models, or a blob it sent; False: the caller
        learns nothing, the answer is the one for a blob the store lacks)."""
        if not self.core.tenants.enabled:
            return True
        tenant = self.reader(authorization, on_behalf)
        return bool(tenant) and self.core.holds(tenant, sha256)

    def may_read_model(
        self, authorization: str | None, namespace: str, on_behalf: str | None
    ) -> bool:
        """May the caller read the files of a model of ``namespace``? Without a tokens file:
        yes; with one: when the tenant it reads for (:meth:`reader`) owns the namespace."""
        tenants = self.core.tenants
        if not tenants.enabled:
            return True
        tenant = tenants.by_name.get(self.reader(authorization, on_behalf))
        return tenant is not None and tenant.owns(namespace)

    def is_peer(self, authorization: str | None) -> bool:
        """Does the request carry this instance's peer token (``--peer-token-env``)?"""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        peer = self.peer_token or ""
        if not peer or scheme.lower() != "bearer" or not token:
            return False
        return hmac.compare_digest(token.encode(), peer.encode())

    def open_placed(self, ref: ModelRef, sha256: str) -> tuple[int, int] | None:
        """(fd, size) of a file with content ``sha256`` in ``ref``'s visible version, when
        the blob store lacks it (a version placed in the models dir by a copy, SSH or a
        shared filesystem, and found by a scan). Only a regular file inside the model's own
        directory, reached through no symbolic link, of the size its manifest says; the
        puller checks the bytes against the sha256 anyway. Blocking."""
        root = self.core.versions.path_for(ref)
        manifest_path = root / MANIFEST_NAME
        try:
            st = os.stat(manifest_path)
        except OSError:
            return None
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._placed.get(ref.id)
        if cached is None or cached[0] != identity:
            try:
                manifest = Manifest.load(manifest_path)
                files: dict[str, list[tuple[str, int]]] = {}
                for f in manifest.files:
                    files.setdefault(f.sha256, []).append((f.path, f.size))
            except (ManifestError, OSError):
                return None
            self._placed[ref.id] = cached = (identity, files)
            while len(self._placed) > PLACED_CACHED:
                self._placed.pop(next(iter(self._placed)))
        real_root = os.path.realpath(root)
        for rel, size in cached[1].get(sha256, ()):
            opened = _open_own_file(real_root, rel, size)
            if opened is not None:
                return opened
        return None

    def incoming(
        self, authorization: str | None, on_behalf: str | None, sha256: str, size: int
    ) -> Path | str | None:
        """For a follower (``?follow=1``) of a blob this instance does not hold yet: the
        partial file it is being received into (the largest, when several tenants receive
        it), ``"pending"`` when an upload active within ``--body-timeout`` lists it with that
        size but no byte of it has arrived, None otherwise (nothing to follow). With tokens
        only the partial blobs of the tenant read for (:meth:`reader`). Blocking."""
        core = self.core
        scopes: list[str | None] = [None]
        if core.tenants.enabled:
            tenant = self.reader(authorization, on_behalf)
            if not tenant:
                return None
            scopes = [core.scope(tenant)]
        active = time.time() - self.settings.body_timeout
        listed = [
            u
            for u in core.uploads.all()
            if u.blobs().get(sha256) == size
            and core.scope(u.tenant) in scopes
            and core.uploads.last_activity(u.upload_id) >= active
        ]
        if not listed:
            return None
        best: tuple[int, Path] | None = None
        for scope in {core.scope(u.tenant) for u in listed}:
            path = core.blobs.partial_path(sha256, scope)
            try:
                held = os.stat(path).st_size
            except OSError:
                continue
            if best is None or held > best[0]:
                best = (held, path)
        return best[1] if best is not None else "pending"

    def owner_of(self, namespace: str) -> str | None:
        """The tenant a catch-up pull of ``namespace`` is made for: the one owning it (a
        tenant of that namespace before an operator's ``"*"``); None when no tenant owns it."""
        tenants = self.core.tenants
        if not tenants.enabled:
            return ANONYMOUS.name
        owners = [t for t in tenants.by_name.values() if t.owns(namespace)]
        owners.sort(key=lambda t: t.owns_every_namespace)
        return owners[0].name if owners else None

    # ---- reports ---------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "status": "success",
            "instance_id": settings.instance_id,
            "advertise": settings.advertise or f"http://{settings.host}:{settings.port}",
            "cluster": settings.cluster,
            "pull": True,
            "blobs": True,
            "cut_through": True,  # GET /v1/blobs/{sha}?follow=1 serves blobs still arriving
            "peers": await self.peers.current(),
            "accept_from": list(settings.accept_from),
            "catching_up": self.catch_up.catching_up if self.catch_up else False,
        }

    def health(self) -> dict[str, Any]:
        running = [j for j in self.jobs.values() if j.state == "running"]
        out: dict[str, Any] = {
            "pulls_running": len(running),
            "pulls_queued": sum(1 for j in self.jobs.values() if j.state == "queued"),
            "pull_bytes_done": sum(j.bytes_done for j in running),
            "pull_bytes_total": sum(j.bytes_total for j in running),
        }
        if self.catch_up is not None:
            report = self.catch_up.report()
            out["catching_up"] = report["catching_up"]
            out["catch_up"] = report
        return out

    def metrics_text(self) -> str:
        m = self.metrics
        lines: list[str] = []

        def metric(name: str, text: str, kind: str) -> None:
            lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))

        metric("mlos_relay_pulled_bytes_total", "Model bytes fetched from peers.", "counter")
        lines.append(f"mlos_relay_pulled_bytes_total {m.pulled_bytes}")
        metric("mlos_relay_served_bytes_total", "Blob bytes served to peers.", "counter")
        lines.append(f"mlos_relay_served_bytes_total {m.served_bytes}")
        metric("mlos_relay_pulls_total", "Pulls finished, by origin and result.", "counter")
        for (origin, state), n in sorted(m.pulls.items()):
            lines.append(f'mlos_relay_pulls_total{{origin="{origin}",result="{state}"}} {n}')
        health = self.health()
        metric("mlos_relay_pulls_running", "Pulls fetching now.", "gauge")
        lines.append(f"mlos_relay_pulls_running {health['pulls_running']}")
        metric("mlos_relay_pulls_queued", "Pulls waiting for a slot (--max-pulls).", "gauge")
        lines.append(f"mlos_relay_pulls_queued {health['pulls_queued']}")
        if self.catch_up is not None:
            report = self.catch_up.report()
            metric(
                "mlos_relay_desired_models", "Models the cluster's desired state lists.", "gauge"
            )
            lines.append(f"mlos_relay_desired_models {report['desired']}")
            metric("mlos_relay_lagging_models", "Desired models not held as listed.", "gauge")
            lines.append(f"mlos_relay_lagging_models {len(report['lagging'])}")
            metric("mlos_relay_catching_up", "1 while desired models are missing.", "gauge")
            lines.append(f"mlos_relay_catching_up {int(report['catching_up'])}")
        return "\n".join(lines) + "\n"


def _open_own_file(real_root: str, rel: str, size: int) -> tuple[int, int] | None:
    """(fd, size) of ``rel`` under ``real_root`` when it is a regular file of ``size`` bytes
    reached through no symbolic link; None otherwise."""
    path = os.path.join(real_root, rel)
    if os.path.realpath(path) != os.path.normpath(path):
        return None  # a link on the way: not the model's own file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        os.close(fd)
        return None
    return fd, size
