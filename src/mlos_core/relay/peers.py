"""Who an instance may pull from: its peers.

A peer is a base URL (``http://10.0.0.6:8080``) that is one of

- a static ``--peer URL``;
- a member of this instance's ``--cluster`` as its ``--discovery`` source lists it;
- a member of an ``--accept-from CLUSTER`` (same discovery source): promotion's sources.

A pull naming any other URL is refused (:class:`NotAPeer`): the server never reaches an
address it was not configured with. URLs are compared after :func:`normalize`. The members
listing is handed in (:class:`MemberSource`; the command line builds it from the discovery
source), read in a worker thread, and kept for :data:`REFRESH` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from mlos_core.errors import BadRequest, Forbidden

log = logging.getLogger("mlos_core.relay")

REFRESH = 10.0  # seconds a members listing is used before it is read again
DEFAULT_PORTS = {"http": 80, "https": 443}


class NotAPeer(Forbidden):
    code = "not_a_peer"


class MemberSource(Protocol):
    """The endpoints of a cluster's members (blocking; called in a worker thread). Raises
    ``ConnectionError`` (or ``ValueError``) when the discovery source cannot be read."""

    def endpoints(self, cluster: str) -> list[str]: ...


def normalize(url: str) -> str:
    """``scheme://host:port/path`` of a peer URL: host in lower case, the default port filled
    in, no trailing ``/``. BadRequest (``invalid_source``) for anything but a plain http(s)
    URL (no user, query or fragment)."""
    if not isinstance(url, str) or not url.strip() or len(url) > 2048:
        raise BadRequest(
            f"a source must be a peer's base URL such as http://10.0.0.6:8080, got "
            f"{str(url)[:80]!r}",
            code="invalid_source",
        )
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        scheme not in DEFAULT_PORTS
        or not parts.hostname
        or port == -1
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
    ):
        raise BadRequest(
            f"source {url[:200]!r} is not a plain http(s) base URL (scheme://host[:port][/path],"
            " no user, query or fragment)",
            code="invalid_source",
        )
    host = parts.hostname
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}{parts.path.rstrip('/')}"


def try_normalize(url: str) -> str | None:
    try:
        return normalize(url)
    except BadRequest:
        return None


class Peers:
    """The peer set of one instance: static URLs plus the members of its clusters."""

    def __init__(
        self,
        static: Iterable[str],
        *,
        clusters: Sequence[str] = (),
        members: MemberSource | None = None,
        own: str | None = None,
    ) -> None:
        self.static = [normalize(u) for u in static]
        self.clusters = [c for c in clusters if c]
        self.members = members if self.clusters else None
        self.own = try_normalize(own) if own else None
        self._listed: list[str] = []
        self._listed_at = -REFRESH
        self._lock = asyncio.Lock()
        self.error: str | None = None  # why the last listing failed, if it did

    def set_own(self, own: str | None) -> None:
        self.own = try_normalize(own) if own else None

    @property
    def dynamic(self) -> bool:
        return self.members is not None

    async def current(self, *, refresh: bool = False) -> list[str]:
        """Every peer URL, normalized, in a stable order (static first), without this
        instance itself."""
        if self.members is not None:
            async with self._lock:
                stale = time.monotonic() - self._listed_at >= (1.0 if refresh else REFRESH)
                if stale:
                    self._listed = await asyncio.to_thread(self._list)
                    self._listed_at = time.monotonic()
        out: list[str] = []
        for url in [*self.static, *self._listed]:
            if url not in out and url != self.own:
                out.append(url)
        return out

    def _list(self) -> list[str]:
        assert self.members is not None
        found: list[str] = []
        errors = []
        for cluster in self.clusters:
            try:
                endpoints = self.members.endpoints(cluster)
            except (ConnectionError, ValueError, OSError) as exc:
                errors.append(f"cluster {cluster}: {exc}")
                continue
            for endpoint in endpoints:
                url = try_normalize(endpoint)
                if url is None:
                    log.warning("cluster %s lists member %r: not a URL, ignored", cluster, endpoint)
                elif url not in found:
                    found.append(url)
        if errors:
            self.error = "; ".join(errors)
            log.warning("relay: cannot list peers: %s (keeping the last listing)", self.error)
            return found or self._listed
        self.error = None
        return found

    async def check(self, url: str) -> str:
        """``url`` normalized, if it is a peer; NotAPeer otherwise (the listing is read again
        once before refusing: a member that just joined is a peer)."""
        wanted = normalize(url)
        if wanted in await self.current():
            return wanted
        if self.dynamic and wanted in await self.current(refresh=True):
            return wanted
        if wanted == self.own:
            raise NotAPeer(
                f"source {url[:200]} is this instance itself; name another instance that holds "
                "the model"
            )
        raise NotAPeer(
            f"source {url[:200]} is not a peer of this instance (peers: --peer URL, the members "
            "of --cluster and of each --accept-from cluster; GET /v1/relay lists them); nothing "
            "was started",
            source=url[:200],
        )
