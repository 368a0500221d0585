"""Resumable upload sessions (docs/upload-protocol.md), persisted so they survive a restart.

Where upload records live: :mod:`modelpkg.layout`. One JSON file per open upload, named by
its id; its mtime is the last activity, so an upload idle longer than ``--upload-ttl``
expires. The bytes themselves live in the blob store (as partial blobs while being
received), shared by every upload that needs the same content.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlos_core.errors import CoreError, CorruptState, NotFound
from modelpkg.atomic import atomic_write_text
from modelpkg.layout import UPLOADS_DIR
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.refs import ModelRef

_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")
CACHED = 16  # parsed upload records kept (the most recently used)


@dataclass
class Upload:
    upload_id: str
    model_id: str
    tenant: str
    manifest: dict[str, Any]
    created: float = field(default_factory=time.time)
    staged: str | None = None  # prepared (complete, not visible) model dir

    @property
    def ref(self) -> ModelRef:
        return ModelRef.parse(self.model_id)

    # read once per record: a manifest may list 100,000 files
    @functools.cached_property
    def _manifest(self) -> Manifest:
        return Manifest(self.manifest)

    @functools.cached_property
    def _files(self) -> list[FileEntry]:
        return self._manifest.files

    def manifest_obj(self) -> Manifest:
        return self._manifest

    def blobs(self) -> dict[str, int]:
        """sha256 -> size of every unique content of the model."""
        return {f.sha256: f.size for f in self._files}

    def paths_by_blob(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in self._files:
            out.setdefault(f.sha256, []).append(f.path)
        return out


def new_upload_id() -> str:
    return "u-" + secrets.token_hex(12)


def expires_at(last_activity: float, ttl: float) -> str:
    return datetime.fromtimestamp(last_activity + ttl, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class UploadStore:
    def __init__(self, state_dir: Path, *, ttl: float) -> None:
        self.dir = state_dir / UPLOADS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        # parsed records by id, with the (inode, size) of the file each was read from: every
        # request names its upload, and parsing a manifest of 100,000 files per request made
        # a publish cost O(files^2). save() replaces the file (a new inode); touch() keeps it.
        self._cache: collections.OrderedDict[str, tuple[tuple[int, int], Upload]] = (
            collections.OrderedDict()
        )
        self._cache_lock = threading.Lock()

    def _remember(self, upload_id: str, identity: tuple[int, int], upload: Upload) -> None:
        with self._cache_lock:
            self._cache[upload_id] = (identity, upload)
            self._cache.move_to_end(upload_id)
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)

    def _path(self, upload_id: str) -> Path:
        if not upload_id.startswith("u-") or len(upload_id) > 64 or set(upload_id) - _ID_CHARS:
            raise NotFound(f"no upload {upload_id[:70]!r} (bad id)", code="unknown_upload")
        return self.dir / f"{upload_id}.json"

    def save(self, upload: Upload) -> None:
        record = {f.name: getattr(upload, f.name) for f in fields(upload)}  # no deep copy
        path = self._path(upload.upload_id)
        atomic_write_text(path, json.dumps(record), durable=False)
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            self._remember(upload.upload_id, (st.st_ino, st.st_size), upload)

    def get(self, upload_id: str) -> Upload:
        path = self._path(upload_id)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                identity = (st.st_ino, st.st_size)
                with self._cache_lock:
                    cached = self._cache.get(upload_id)
                    if cached is not None and cached[0] == identity:
                        self._cache.move_to_end(upload_id)
                        return cached[1]
                raw = json.loads(fh.read())
            upload = Upload(**raw)
        except FileNotFoundError:
            raise NotFound(
                f"no upload {upload_id!r}: it was committed, aborted or expired; "
                "open a new one with POST /v1/uploads",
                code="unknown_upload",
            ) from None
        except (ValueError, TypeError) as exc:
            raise CorruptState(
                f"upload {upload_id} state unreadable", code="corrupt_upload"
            ) from exc
        self._remember(upload_id, identity, upload)
        return upload

    def touch(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._path(upload_id))

    def last_activity(self, upload_id: str) -> float:
        try:
            return os.stat(self._path(upload_id)).st_mtime
        except FileNotFoundError:
            return time.time()

    def delete(self, upload_id: str) -> None:
        self._path(upload_id).unlink(missing_ok=True)
        with self._cache_lock:
            self._cache.pop(upload_id, None)

    def all(self) -> list[Upload]:
        out = []
        for p in self.dir.glob("u-*.json"):
            try:
                out.append(self.get(p.stem))
            except CoreError:
                p.unlink(missing_ok=True)
        return out

    def count(self) -> int:
        """How many uploads are open (their records are not read: /stats and /metrics)."""
        return sum(1 for _ in self.dir.glob("u-*.json"))

    def expired(self) -> list[Upload]:
        now = time.time()
        return [u for u in self.all() if now - self.last_activity(u.upload_id) > self.ttl]
