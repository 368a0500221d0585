"""What each tenant has sent: the other half of per-tenant deduplication.

With a tokens file, content is deduplicated per tenant: a tenant links a blob the store holds
without sending it only when it has proven it has the bytes, i.e. the blob is a file of one
of its own models (visible or previous: :meth:`VersionStore.held_in
<mlos_core.storage.versions.VersionStore.held_in>`), or it sent the bytes for an upload still
open. This module keeps the second record: per tenant, the sha256 of the blobs it sent, each
verified (the bytes of a blob the store held already are dropped once verified: storage stays
shared). Where it lives: :mod:`modelpkg.layout` (``tenants/<tenant>/sent``, one sha256 a line,
appended as blobs complete), so it survives a restart; garbage collection keeps only what the
tenant's open uploads still list (:meth:`SentIndex.retain`): once an upload is committed its
content is the tenant's through the model, once aborted or expired it must be sent again.

A tenant's name comes from the tokens file and may be anything: its directory is the name
when that is a safe file name, else a digest of it (:func:`tenant_key`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from modelpkg.atomic import atomic_write_text
from modelpkg.layout import TENANT_SENT_FILE, TENANTS_DIR

log = logging.getLogger("mlos_core.tenancy")

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def tenant_key(name: str) -> str:
    """The directory name of tenant ``name``: itself when safe, else ``~`` + a digest."""
    if _SAFE.fullmatch(name):
        return name
    return "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class SentIndex:
    """Per tenant key, the sha256 of the blobs that tenant sent (see module doc)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / TENANTS_DIR
        self._lock = threading.Lock()
        self._sent: dict[str, set[str]] = {}
        self._load()

    def _file(self, key: str) -> Path:
        return self.dir / key / TENANT_SENT_FILE

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for d in self.dir.iterdir():
            try:
                lines = self._file(d.name).read_text(encoding="ascii").split()
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:  # unreadable: the tenant sends again
                log.warning("%s unreadable (%s): starting empty", self._file(d.name), exc)
                continue
            self._sent[d.name] = {line for line in lines if _SHA256.fullmatch(line)}

    def has(self, key: str, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._sent.get(key, ())

    def add(self, key: str, sha256: str) -> None:
        """Record that tenant ``key`` sent ``sha256`` (its bytes verified)."""
        with self._lock:
            sent = self._sent.setdefault(key, set())
            if sha256 in sent:
                return
            path = self._file(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            # one short append: a line cut by a crash is skipped when read (not a sha256)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{sha256}\n".encode("ascii"))
            finally:
                os.close(fd)
            sent.add(sha256)

    def retain(self, listed: Mapping[str, Iterable[str]]) -> int:
        """Keep, per tenant key, only the sha256 its open uploads list (``listed``); return
        how many records were dropped. Files are rewritten only when they shrink."""
        dropped = 0
        with self._lock:
            for key, sent in list(self._sent.items()):
                keep = sent.intersection(listed.get(key, ()))
                if len(keep) == len(sent):
                    continue
                dropped += len(sent) - len(keep)
                self._sent[key] = keep
                text = "".join(f"{sha}\n" for sha in sorted(keep))
                atomic_write_text(self._file(key), text, durable=False)
        return dropped
