"""The server's counters: requests by status, uploads by result, bytes received and not sent.

The core and the HTTP middleware count; :mod:`mlos_core.http.metrics` renders them for
Prometheus.
"""

from __future__ import annotations

import threading
from collections import defaultdict


class Metrics:
    """Thread-safe counters (uploads are counted from worker threads too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.uploads: dict[tuple[str, str], int] = defaultdict(int)
        self.upload_bytes = 0
        self.dedup_bytes = 0
        self.errors: dict[str, int] = defaultdict(int)
        # models refused for their signature, by (source, reason)
        self.signature_refusals: dict[tuple[str, str], int] = defaultdict(int)
        self.blobs_rewritten = 0  # blobs another tool rewrote in place (storage/damage.py)
        # files of signed directories placed by another tool, hashed (storage/ondisk.py)
        self.hashed_files = 0
        self.hashed_bytes = 0

    def request(self, method: str, status: int) -> None:
        with self._lock:
            self.requests[(method, status)] += 1
            if status >= 400:
                self.errors[str(status)] += 1

    def upload(self, kind: str, ok: bool) -> None:
        with self._lock:
            self.uploads[(kind, "ok" if ok else "error")] += 1

    def refused(self, source: str, reason: str) -> None:
        with self._lock:
            self.signature_refusals[(source, reason)] += 1

    def rewritten(self, nblobs: int) -> None:
        with self._lock:
            self.blobs_rewritten += nblobs

    def hashed(self, nbytes: int) -> None:
        with self._lock:
            self.hashed_files += 1
            self.hashed_bytes += nbytes

    def received(self, nbytes: int) -> None:
        with self._lock:
            self.upload_bytes += nbytes

    def deduplicated(self, nbytes: int) -> None:
        with self._lock:
            self.dedup_bytes += nbytes
