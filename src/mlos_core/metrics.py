"""Prometheus counters, rendered by hand in the text exposition format (no dependency)."""

from __future__ import annotations

import threading
from collections import defaultdict


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.uploads: dict[tuple[str, str], int] = defaultdict(int)
        self.upload_bytes = 0
        self.dedup_bytes = 0
        self.errors: dict[str, int] = defaultdict(int)

    def request(self, method: str, status: int) -> None:
        with self._lock:
            self.requests[(method, status)] += 1
            if status >= 400:
                self.errors[str(status)] += 1

    def upload(self, kind: str, ok: bool) -> None:
        with self._lock:
            self.uploads[(kind, "ok" if ok else "error")] += 1

    def received(self, nbytes: int) -> None:
        with self._lock:
            self.upload_bytes += nbytes

    def deduplicated(self, nbytes: int) -> None:
        with self._lock:
            self.dedup_bytes += nbytes

    def render(self, *, models: int, open_uploads: int) -> str:
        lines = [
            "# HELP mlos_http_requests_total HTTP requests by method and status.",
            "# TYPE mlos_http_requests_total counter",
        ]
        for (method, status), n in sorted(self.requests.items()):
            lines.append(f'mlos_http_requests_total{{method="{method}",status="{status}"}} {n}')
        lines += [
            "# HELP mlos_errors_total Requests answered with a 4xx/5xx status.",
            "# TYPE mlos_errors_total counter",
        ]
        for code, count in sorted(self.errors.items()):
            lines.append(f'mlos_errors_total{{status="{code}"}} {count}')
        lines += [
            "# HELP mlos_uploads_total Model uploads finished, by kind and result.",
            "# TYPE mlos_uploads_total counter",
        ]
        for (kind, result), n in sorted(self.uploads.items()):
            lines.append(f'mlos_uploads_total{{kind="{kind}",result="{result}"}} {n}')
        lines += [
            "# HELP mlos_upload_bytes_total Model bytes received.",
            "# TYPE mlos_upload_bytes_total counter",
            f"mlos_upload_bytes_total {self.upload_bytes}",
            "# HELP mlos_dedup_bytes_total Bytes not sent because the server already held them.",
            "# TYPE mlos_dedup_bytes_total counter",
            f"mlos_dedup_bytes_total {self.dedup_bytes}",
            "# HELP mlos_models Models registered.",
            "# TYPE mlos_models gauge",
            f"mlos_models {models}",
            "# HELP mlos_open_uploads Resumable uploads open.",
            "# TYPE mlos_open_uploads gauge",
            f"mlos_open_uploads {open_uploads}",
        ]
        return "\n".join(lines) + "\n"
