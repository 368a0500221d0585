"""One pull: a model fetched from peers into this instance (docs/relay.md, "How a pull runs").

The pull is an upload whose bytes the server fetches itself: it opens an upload for the
tenant (or takes up the open one of the same build), asks what the tenant lacks, fetches each
missing blob from a peer (``GET /v1/blobs/{sha256}``, ``Range`` from the bytes held) through
the upload's own writer (:func:`mlos_core.storage.receive.receive_blob`: hashed and written in
two lanes, bounded memory, into the store only when the sha256 matches), then commits (or
prepares) exactly as an upload does. Nothing is visible until every byte was verified.

A source that fails is left for the next: the sources given, then (``fallback``) the other
peers. A source whose bytes do not hash to their sha256 is not asked again by this job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from mlos_core.core import Core, parse_manifest
from mlos_core.errors import ChecksumMismatch, CoreError
from mlos_core.storage.batch import IN_FLIGHT
from mlos_core.storage.receive import BodyInterrupted, receive_blob
from mlos_core.storage.uploads import Upload
from modelpkg.manifest import MAX_MANIFEST_BYTES, Manifest
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from mlos_core.relay import Relay

log = logging.getLogger("mlos_core.relay")

READ_TIMEOUT = 30.0  # seconds without a byte from a source before it is given up on
CONNECT_TIMEOUT = 10.0
SMALL_BLOB = 8 * 1024 * 1024
PARALLEL = 4  # blobs fetched at once (only one of them over SMALL_BLOB)
# the request header naming, percent-encoded, the tenant a peer's request reads for
ON_BEHALF = "X-Mlos-Tenant"
TOUCH_EVERY = 4 * 1024 * 1024  # bytes between two marks of the upload's activity
ERROR_READ = 64 * 1024  # bytes of a source's error answer read for its message
FINAL = ("committed", "prepared", "failed", "cancelled")
ROUNDS = 3  # rounds over the sources for one blob before the pull fails
PENDING_PAUSE = 0.2  # seconds before a blob a source is still receiving is asked for again
ROUND_PAUSE = 1.0  # seconds before the second round, twice that before the third


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_pull_id() -> str:
    return "p-" + secrets.token_hex(12)


class SourceFailed(Exception):
    """One source could not give what was asked; ``bad``: ask it nothing more in this job."""

    def __init__(self, source: str, code: str, message: str, *, bad: bool = False) -> None:
        super().__init__(message)
        self.source = source
        self.code = code
        self.message = message
        self.bad = bad


class SourceCut(BodyInterrupted):
    """The source's answer stopped before its end (connection reset, peer killed, a read
    timeout): the bytes that arrived are kept, as for a cut upload."""


class _Pending(Exception):
    """The source is receiving the blob and has none of its bytes yet (``blob_pending``)."""


class NoSource(CoreError):
    code = "no_source"


@dataclass
class _Blob:
    """One blob being fetched: a mismatch is blamed on a source only when it sent every
    byte of the blob in one answer."""

    sha256: str
    size: int
    what: str  # "path (sha256 abc...) of ns/name@v": for messages
    resumed: bool = False  # the last request went on from bytes held before it
    refetched: set[str] = field(default_factory=set)  # sources asked again from byte 0


@dataclass
class PullJob:
    """What a pull was asked for and how far it is (the ``GET /v1/pulls/{id}`` document)."""

    ref: ModelRef
    digest: str
    tenant: str
    sources: list[str]
    commit: bool = True
    fallback: bool = True
    manifest: Manifest | None = None
    authorization: str | None = None  # sent to sources (never shown)
    origin: str = "request"  # request | catch-up
    pull_id: str = field(default_factory=new_pull_id)
    state: str = "queued"
    upload_id: str | None = None
    source: str | None = None
    tried: list[dict[str, str]] = field(default_factory=list)
    blobs_total: int = 0
    blobs_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_fetched: int = 0
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    finished: float | None = None  # monotonic, for expiry
    code: str | None = None
    message: str | None = None
    result: dict[str, Any] | None = None
    bad: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "success",
            "pull_id": self.pull_id,
            "model_id": self.ref.id,
            "manifest_sha256": self.digest,
            "upload_id": self.upload_id,
            "commit": self.commit,
            "state": self.state,
            "source": self.source,
            "tried": list(self.tried),
            "blobs_total": self.blobs_total,
            "blobs_done": self.blobs_done,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "bytes_fetched": self.bytes_fetched,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "code": self.code,
            "message": self.message,
            "result": self.result,
        }

    def notify(self) -> None:
        """Wake whoever waits for a change (``?wait=``), then arm a new event."""
        self.changed.set()
        self.changed = asyncio.Event()

    def end(self, state: str, code: str | None = None, message: str | None = None) -> None:
        self.state, self.code, self.message = state, code, message
        self.finished_at = now_iso()
        self.finished = time.monotonic()
        self.notify()

    def note_failure(self, failure: SourceFailed) -> None:
        self.tried.append(
            {"source": failure.source, "code": failure.code, "message": failure.message[:500]}
        )
        if failure.bad:
            self.bad.add(failure.source)


def model_path(ref: ModelRef) -> str:
    return quote(ref.id, safe="/@")


def _short(text: str, n: int = 300) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= n else cleaned[: n - 3] + "..."


async def _error_text(response: httpx.Response) -> str:
    """The ``message`` of a source's error answer (its first 64 KiB), else its status line."""
    body = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= ERROR_READ:
                break
    try:
        data = json.loads(bytes(body[:ERROR_READ]))
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return _short(f"{response.status_code} {data.get('code', '')}: {data['message']}")
    except ValueError:
        pass
    return f"HTTP {response.status_code}"


class Puller:
    """Runs pull jobs for one relay (one HTTP client, shared)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.core: Core = relay.core

    # ---- the job ---------------------------------------------------------------------
    async def run(self, job: PullJob) -> None:
        try:
            async with self.relay.slots:
                if job.final:
                    return
                job.state = "running"
                job.notify()
                await self._run(job)
        except asyncio.CancelledError:
            if not job.final:
                job.end("cancelled", "cancelled", "the pull was cancelled; bytes received kept")
            raise
        except CoreError as exc:
            job.end("failed", exc.code, str(exc))
        except Exception as exc:  # a bug or an OSError: the job fails, the server goes on
            log.exception("pull %s of %s failed", job.pull_id, job.ref.id)
            job.end("failed", "pull_failed", f"{type(exc).__name__}: {_short(str(exc))}")
        finally:
            self.relay.metrics.pull_ended(job)
            if job.origin == "catch-up" and self.relay.catch_up is not None:
                self.relay.catch_up.wake()  # report it current at once, not a round later
            if job.state == "failed":
                log.warning(
                    "pull %s of %s failed: %s %s", job.pull_id, job.ref.id, job.code, job.message
                )
            elif job.state in ("committed", "prepared"):
                log.info(
                    "pull %s of %s %s (%d bytes fetched, from %s)",
                    job.pull_id,
                    job.ref.id,
                    job.state,
                    job.bytes_fetched,
                    job.source or "-",
                )

    async def candidates(self, job: PullJob) -> list[str]:
        """The sources in the order to try: those given, then (fallback) every other peer;
        never one this job found bad."""
        order = list(job.sources)
        if job.fallback:
            for url in await self.relay.peers.current():
                if url not in order:
                    order.append(url)
        return [u for u in order if u not in job.bad]

    async def _run(self, job: PullJob) -> None:
        core = self.core
        if job.manifest is None:
            job.manifest = await self._find_manifest(job)
        upload = await self.open_upload(job)
        described = await asyncio.to_thread(core.describe, upload)
        needed = described["needed"]
        job.blobs_total = len(needed)
        job.bytes_total = sum(n["size"] for n in needed)
        job.bytes_done = sum(n["offset"] for n in needed)
        job.notify()
        core.pin(n["sha256"] for n in needed)  # kept while fetched, until the version links
        try:
            await self._fetch_all(job, upload, needed)
            if job.commit:
                job.result = await core.commit(upload)
                job.end("committed")
            else:
                async with core.model_lock(upload.ref):
                    await asyncio.to_thread(core.prepare, upload)
                job.end("prepared")
        finally:
            core.unpin(n["sha256"] for n in needed)

    async def open_upload(self, job: PullJob) -> Upload:
        """The upload the job fills: the open one of the same model, tenant and build, or a
        new one (checked as an upload's open: limits, overlap, free space)."""
        core = self.core
        assert job.manifest is not None
        manifest = job.manifest
        for upload in await asyncio.to_thread(core.uploads.all):
            if (
                upload.model_id == job.ref.id
                and upload.tenant == job.tenant
                and upload.manifest_obj().digest() == job.digest
            ):
                job.upload_id = upload.upload_id
                return upload
        await IN_FLIGHT.settle(core, job.tenant, {f.sha256 for f in manifest.files})
        async with core.gc_lock:
            upload = core.open_upload(job.ref, manifest, job.tenant)
        job.upload_id = upload.upload_id
        return upload

    # ---- manifest --------------------------------------------------------------------
    async def _find_manifest(self, job: PullJob) -> Manifest:
        for source in await self.candidates(job):
            try:
                manifest = await self._manifest_from(job, source)
            except SourceFailed as failure:
                job.note_failure(failure)
                job.notify()
                continue
            return manifest
        raise NoSource(
            f"no peer shows {job.ref.id} with manifest digest {job.digest[:12]}: "
            + (self._tried_text(job) or "no peers to ask (GET /v1/relay lists them)"),
        )

    async def _manifest_from(self, job: PullJob, source: str) -> Manifest:
        url = f"{source}/v1/models/{model_path(job.ref)}/manifest"
        try:
            async with self.relay.client.stream("GET", url, headers=self._headers(job)) as response:
                if response.status_code != 200:
                    raise self._refusal(source, response, await _error_text(response))
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise SourceFailed(
                            source, "bad_manifest", f"{url}: manifest over {MAX_MANIFEST_BYTES} B"
                        )
        except httpx.HTTPError as exc:
            raise SourceFailed(source, "source_unreachable", f"{url}: {_short(str(exc))}") from exc
        try:
            manifest = parse_manifest(bytes(body), job.ref, strict=True)
        except CoreError as exc:
            raise SourceFailed(source, "bad_manifest", f"{url}: {exc}", bad=True) from exc
        if manifest.digest() != job.digest:
            raise SourceFailed(
                source,
                "other_build",
                f"{source} shows {job.ref.id} as the build {manifest.digest()[:12]}, not "
                f"{job.digest[:12]}",
            )
        return manifest

    # ---- blobs -----------------------------------------------------------------------
    async def _fetch_all(self, job: PullJob, upload: Upload, needed: list[dict[str, Any]]) -> None:
        """Fetch every needed blob: :data:`PARALLEL` workers take them smallest first, a
        blob over :data:`SMALL_BLOB` one at a time (memory stays bounded whatever the model).
        The first failure stops the others and is raised."""
        queue = sorted(needed, key=lambda n: n["size"], reverse=True)  # popped from the end
        large = asyncio.Semaphore(1)

        async def worker() -> None:
            while queue:
                need = queue.pop()
                gate = large if need["size"] > SMALL_BLOB else contextlib.nullcontext()
                async with gate:
                    held = await self._fetch_blob(
                        job, upload, need["sha256"], need["size"], need["paths"]
                    )
                if not held:  # a source is receiving it: take the others first, come back
                    queue.insert(0, need)
                    await asyncio.sleep(PENDING_PAUSE)
                    continue
                job.blobs_done += 1
                job.notify()

        workers = [asyncio.create_task(worker()) for _ in range(min(PARALLEL, len(queue)))]
        try:
            for done in asyncio.as_completed(workers):
                await done
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _fetch_blob(
        self, job: PullJob, upload: Upload, sha: str, size: int, paths: list[str]
    ) -> bool:
        """Fetch one blob until it is held (True): each source in turn (the one that served
        last first), each asked once more after a cut that brought bytes; up to
        :data:`ROUNDS` rounds over the sources, a pause between them (a restarting peer comes
        back). False when no source has it yet but one is receiving it (``blob_pending``):
        the caller comes back to it later."""
        what = f"{paths[0]} (sha256 {sha[:12]}) of {job.ref.id}"
        blob = _Blob(sha, size, what)
        for round_no in range(ROUNDS):
            sources = await self.candidates(job)
            if job.source in sources:
                sources.remove(job.source)
                sources.insert(0, job.source)
            pending = False
            for source in sources:
                if source in job.bad:
                    continue
                outcome = await self._try_source(job, upload, source, blob)
                if outcome == "held":
                    return True
                pending = pending or outcome == "pending"
            if pending:
                return False
            if not await self.candidates(job):
                break
            if round_no + 1 < ROUNDS:
                await asyncio.sleep(ROUND_PAUSE * (round_no + 1))
        raise NoSource(f"{what}: every source failed; {self._tried_text(job)}")

    async def _try_source(self, job: PullJob, upload: Upload, source: str, blob: _Blob) -> str:
        """``"held"`` once the blob is held; ``"pending"`` when the source is receiving it
        and has none of it yet; ``"next"`` to go on with the next source."""
        for _attempt in range(2):
            try:
                held, moved = await self._fetch_from(job, upload, source, blob)
            except _Pending:
                return "pending"
            except SourceFailed as failure:
                job.note_failure(failure)
                job.notify()
                return "next"
            except ChecksumMismatch:
                if blob.resumed and source not in blob.refetched:
                    # bytes held before this request (another source, an earlier pull, a
                    # cut liar) made the mismatch as much as this one: blame nobody, the
                    # partial is dropped, fetch the whole blob again from this source
                    blob.refetched.add(source)
                    continue
                log.warning(
                    "peer %s served bytes for %s that do not hash to its sha256: dropped, "
                    "that peer is not asked again by pull %s",
                    source,
                    blob.what,
                    job.pull_id,
                )
                job.note_failure(
                    SourceFailed(
                        source,
                        "checksum_mismatch",
                        f"{source} served {blob.what} with bytes of another content; dropped",
                        bad=True,
                    )
                )
                job.notify()
                return "next"
            if held:
                return "held"
            if not moved:
                break  # cut before a byte came: no point asking it again now
        job.note_failure(SourceFailed(source, "source_cut", f"{source}: cut in {blob.what}"))
        job.notify()
        return "next"

    async def _fetch_from(
        self, job: PullJob, upload: Upload, source: str, blob: _Blob
    ) -> tuple[bool, bool]:
        """One request for the blob to ``source``: (held afterwards, bytes moved).
        SourceFailed for a refusal; ChecksumMismatch (bytes dropped) for wrong content."""
        core = self.core
        sha, size = blob.sha256, blob.size
        async with core.blob_lock(upload, sha):
            if core.holds(upload.tenant, sha, size):
                return True, False
            offset = core.blob_offset(upload, sha, size)
            blob.resumed = offset > 0
            writer = core.blob_writer(upload, sha, size, offset)
            if offset >= size:  # all bytes arrived once, never checked: check them now
                await asyncio.to_thread(writer.open)
                await asyncio.to_thread(writer.finish)
                return True, False
            headers = self._headers(job)
            if offset:
                headers["Range"] = f"bytes={offset}-"
            query = f"model={quote(job.ref.id, safe='')}&follow=1&size={size}"
            url = f"{source}/v1/blobs/{sha}?{query}"
            before = job.bytes_fetched
            unmarked = 0

            def on_bytes(n: int) -> None:
                nonlocal unmarked
                job.bytes_fetched += n
                job.bytes_done += n
                unmarked += n
                self.relay.metrics.pulled(n)
                if unmarked >= TOUCH_EVERY:
                    core.uploads.touch(upload.upload_id)
                    unmarked = 0

            try:
                async with self.relay.client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 503:
                        text = await _error_text(response)
                        if "blob_pending" in text:
                            raise _Pending()
                        raise self._refusal(source, response, text)
                    skip = self._check_answer(url, response, offset, size)
                    if isinstance(skip, str):
                        raise self._refusal(source, response, skip or await _error_text(response))
                    job.source = source
                    settings = core.settings
                    idle = min(READ_TIMEOUT, settings.body_timeout)
                    pace = _Pace(source, url, settings.min_body_rate, settings.body_timeout)
                    chunks = _source_chunks(response, skip, pace)
                    complete = await receive_blob(chunks, writer, on_bytes, idle=idle)
            except BodyInterrupted:  # cut: what arrived is kept, resumed from there
                return False, job.bytes_fetched > before
            except httpx.HTTPError as exc:
                text = _short(str(exc)) or type(exc).__name__
                raise SourceFailed(source, "source_unreachable", f"{url}: {text}") from exc
            finally:
                core.uploads.touch(upload.upload_id)
            return complete, job.bytes_fetched > before

    def _check_answer(
        self, url: str, response: httpx.Response, offset: int, size: int
    ) -> int | str:
        """Bytes to skip at the start of the body (a 200 to a range request), or the reason
        the answer is refused ('' to read the source's own message)."""
        status = response.status_code
        if status not in (200, 206):
            return ""
        length = response.headers.get("content-length")
        if status == 206:
            crange = response.headers.get("content-range", "")
            if crange != f"bytes {offset}-{size - 1}/{size}":
                return f"{url}: Content-Range {crange[:80]!r}, asked for bytes {offset}-{size - 1}"
            expected = size - offset
            skip = 0
        else:
            expected, skip = size, offset
        if length is not None and length != str(expected):
            return f"{url}: Content-Length {length[:40]}, the blob has {expected} bytes to send"
        return skip

    def _refusal(self, source: str, response: httpx.Response, text: str) -> SourceFailed:
        status = response.status_code
        if status in (401, 403):
            return SourceFailed(
                source,
                "source_refused",
                f"{source} refused our credentials ({text}): give both instances the same "
                "--peer-token-env secret",
                bad=True,
            )
        if status == 404:
            return SourceFailed(source, "source_lacks", f"{source}: {text}")
        if 300 <= status < 400:
            return SourceFailed(
                source, "source_redirect", f"{source} redirects ({status}); not followed", bad=True
            )
        if status in (200, 206):
            return SourceFailed(source, "bad_answer", text, bad=True)
        return SourceFailed(source, "source_error", f"{source}: {text}")

    def _headers(self, job: PullJob) -> dict[str, str]:
        """The peer token and the tenant the pull is for (the source serves only what that
        tenant holds there), or without a peer token the caller's own token."""
        headers = {"Accept-Encoding": "identity"}
        token = self.relay.peer_token
        if token:
            headers["Authorization"] = f"Bearer {token}"
            headers[ON_BEHALF] = quote(job.tenant, safe="")
        elif job.authorization:
            headers["Authorization"] = job.authorization
        return headers

    def _tried_text(self, job: PullJob) -> str:
        return "; ".join(f"{t['source']}: {t['code']}: {t['message']}" for t in job.tried[-8:])


class _Pace:
    """A source's answer must average ``rate`` bytes/s with ``grace`` seconds in hand, as an
    upload's body must (``--min-body-rate``, ``--body-timeout``): a peer that drips its bytes
    is left for another rather than holding the pull for hours."""

    def __init__(self, source: str, url: str, rate: int, grace: float) -> None:
        self.source, self.url, self.rate, self.grace = source, url, rate, grace
        self.start = time.monotonic()
        self.received = 0

    def check(self, n: int) -> None:
        self.received += n
        if not self.rate:
            return
        elapsed = time.monotonic() - self.start
        if elapsed > self.grace and self.received < self.rate * (elapsed - self.grace):
            raise SourceFailed(
                self.source,
                "source_too_slow",
                f"{self.url}: {self.received} bytes in {elapsed:.0f} s, under the "
                f"{self.rate} bytes/s a body must average (--min-body-rate); the bytes "
                "received are kept",
            )


async def _source_chunks(response: httpx.Response, skip: int, pace: _Pace) -> AsyncIterator[bytes]:
    """The answer's body as storage receives it, the first ``skip`` bytes left out; a cut
    answer becomes :class:`SourceCut` (storage keeps what arrived)."""
    try:
        async for chunk in response.aiter_raw():
            pace.check(len(chunk))
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            yield chunk
    except httpx.HTTPError as exc:
        raise SourceCut(str(exc)) from exc
