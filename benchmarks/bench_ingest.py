"""mlos-core ingest: a 1 GiB model uploaded over loopback, sha256 verification on.

Compared in the same run with writing the same bytes durably to the same disk
(``dd bs=4M conv=fdatasync``). Reports throughput, the ratio to dd (target: ingest takes at
most 2x dd's time, i.e. >= 50% of durable disk speed) and the server's peak RSS (VmHWM,
target < 150 MB). The client is curl (streams the file, negligible CPU), so the figure is the
server's. Both upload forms send the file's size and sha256 in the manifest: the server
hashes every byte it receives and checks it against them.

* resumable: ``POST /v1/uploads`` (open), ``PUT`` of the blob with curl, commit;
* one-shot: ``curl -F`` multipart ``POST /models/upload`` (manifest + file).

Each upload gets a new server (no deduplication against an earlier run) and the three tools
run ``AXON_BENCH_ROUNDS`` rounds (default 3) in rotated order, everything synced before
each timed run; the table shows medians. ``AXON_BENCH_INGEST_MB`` changes the size (default
1024; ``AXON_BENCH_QUICK=1``: 16).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    MiB,
    Mlos,
    Row,
    Sample,
    command,
    make_file,
    on_fresh_mlos,
    rounds,
    run_rounds,
    size_from_env,
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _manifest(size: int, digest: str) -> dict[str, object]:
    return {
        "apiVersion": "axon.mlos.io/v1",
        "kind": "Model",
        "metadata": {},
        "spec": {"format": {"files": [{"path": "weights.bin", "size": size, "sha256": digest}]}},
    }


def _resumable(server: Mlos, src: Path, manifest: dict[str, object], digest: str) -> Sample:
    url = server.url
    start = time.perf_counter()
    opened = httpx.post(
        f"{url}/v1/uploads", json={"model_id": "bench/ingest@v1", "manifest": manifest}
    )
    opened.raise_for_status()
    uid = opened.json()["upload_id"]
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-T", str(src), "-X", "PUT",
         "-H", "Content-Type: application/octet-stream", "-H", "Expect:",
         f"{url}/v1/uploads/{uid}/blobs/{digest}"],
        check=True,
    )  # fmt: skip
    httpx.post(f"{url}/v1/uploads/{uid}/commit", timeout=120).raise_for_status()
    return Sample(time.perf_counter() - start, server.peak_rss_mb())


def _multipart(server: Mlos, src: Path, manifest: Path) -> Sample:
    start = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", "Expect:",
         "-F", "model_id=bench/ingest-mp@v1", "-F", f"manifest=<{manifest}",
         "-F", f"model_files=@{src};filename=weights.bin", f"{server.url}/models/upload"],
        check=True,
    )  # fmt: skip
    return Sample(time.perf_counter() - start, server.peak_rss_mb())


def run(workdir: Path) -> list[Row]:
    size = size_from_env("AXON_BENCH_INGEST_MB", 1024)
    src = make_file(workdir / "src.bin", size)
    digest = _sha256(src)
    manifest = _manifest(size, digest)
    manifest_file = workdir / "manifest.json"
    manifest_file.write_text(json.dumps(manifest))
    dd_out = workdir / "dd.out"
    runs = run_rounds(
        {
            "dd": command(
                ["dd", f"if={src}", f"of={dd_out}", "bs=4M", "conv=fdatasync", "status=none"],
                reset=lambda: dd_out.unlink(),
            ),
            "put": on_fresh_mlos(workdir, lambda s: _resumable(s, src, manifest, digest)),
            "multipart": on_fresh_mlos(workdir, lambda s: _multipart(s, src, manifest_file)),
        },
        rounds(3),
    )
    dd = runs["dd"]
    mb = size // MiB

    def note(name: str) -> str:
        return f"{100 * dd.median / runs[name].median:.0f}% of durable disk speed; server RSS"

    return [
        dd.row(f"dd bs=4M conv=fdatasync ({mb} MiB)", size, note="baseline"),
        runs["put"].row(
            f"ingest resumable PUT, sha256 ({mb} MiB)", size, ("dd fdatasync", dd), note("put")
        ),
        runs["multipart"].row(
            f"ingest multipart POST, sha256 ({mb} MiB)",
            size,
            ("dd fdatasync", dd),
            note("multipart"),
        ),
    ]
