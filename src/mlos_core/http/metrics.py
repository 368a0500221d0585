"""``GET /metrics``: the server's counters in Prometheus' text exposition format, written
by hand (no client library needed for a handful of counters)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse

from mlos_core.http.request import core_of
from mlos_core.metrics import Metrics


async def metrics(request: Request) -> PlainTextResponse:
    core = core_of(request)
    text = render(core.metrics, models=len(core.registry), open_uploads=core.uploads.count())
    relay = getattr(request.app.state, "relay", None)
    if relay is not None:  # bytes pulled and served, catch-up (docs/relay.md)
        text += relay.metrics_text()
    inference = getattr(request.app.state, "inference", None)
    if inference is not None:  # once a model was run (docs/inference.md)
        text += inference.metrics_text()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def render(counters: Metrics, *, models: int, open_uploads: int) -> str:
    """The exposition text: each metric's HELP and TYPE lines, then its samples."""
    lines: list[str] = []
    _metric(lines, "mlos_http_requests_total", "HTTP requests by method and status.", "counter")
    for (method, status), n in sorted(counters.requests.items()):
        lines.append(f'mlos_http_requests_total{{method="{method}",status="{status}"}} {n}')
    _metric(lines, "mlos_errors_total", "Requests answered with a 4xx/5xx status.", "counter")
    for code, n in sorted(counters.errors.items()):
        lines.append(f'mlos_errors_total{{status="{code}"}} {n}')
    _metric(lines, "mlos_uploads_total", "Model uploads finished, by kind and result.", "counter")
    for (kind, result), n in sorted(counters.uploads.items()):
        lines.append(f'mlos_uploads_total{{kind="{kind}",result="{result}"}} {n}')
    _metric(lines, "mlos_upload_bytes_total", "Model bytes received.", "counter")
    lines.append(f"mlos_upload_bytes_total {counters.upload_bytes}")
    dedup = "Bytes not sent because the server already held them."
    _metric(lines, "mlos_dedup_bytes_total", dedup, "counter")
    lines.append(f"mlos_dedup_bytes_total {counters.dedup_bytes}")
    refused = "Models refused for their signature, by source and reason."
    _metric(lines, "mlos_signature_refusals_total", refused, "counter")
    for (source, reason), n in sorted(counters.signature_refusals.items()):
        lines.append(f'mlos_signature_refusals_total{{source="{source}",reason="{reason}"}} {n}')
    hashed = "Files of signed model directories another tool placed, hashed against the manifest."
    _metric(lines, "mlos_signature_hashed_files_total", hashed, "counter")
    lines.append(f"mlos_signature_hashed_files_total {counters.hashed_files}")
    _metric(lines, "mlos_signature_hashed_bytes_total", "Bytes of those files.", "counter")
    lines.append(f"mlos_signature_hashed_bytes_total {counters.hashed_bytes}")
    rewritten = "Blobs another tool rewrote in place, taken out of the store."
    _metric(lines, "mlos_blobs_rewritten_total", rewritten, "counter")
    lines.append(f"mlos_blobs_rewritten_total {counters.blobs_rewritten}")
    _metric(lines, "mlos_models", "Models registered.", "gauge")
    lines.append(f"mlos_models {models}")
    _metric(lines, "mlos_open_uploads", "Resumable uploads open.", "gauge")
    lines.append(f"mlos_open_uploads {open_uploads}")
    return "\n".join(lines) + "\n"


def _metric(lines: list[str], name: str, help_text: str, kind: str) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
