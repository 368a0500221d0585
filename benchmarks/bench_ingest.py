"""mlos-core ingest of 1 GiB over loopback, sha256 verified, against what the machine can do.

In the same run, on the same disk, with the same bytes:

* **the physical limit** of a verified ingest: the slower of the disk (``dd bs=4M
  conv=fdatasync``) and one sha256 stream (``openssl dgst -sha256`` of the file, from the
  page cache); each the *best* of its runs (the disk is noisy; a run never pays for another's
  writeback: everything is synced first);
* **nginx** accepting ``PUT`` to a file (``dav_methods PUT``, benchmarks/nginx.py), timed
  with ``curl -T``: what a fast server does with the same upload (no hashing, no fsync);
* **a bare ASGI server** (uvicorn + httptools + uvloop and a minimal app writing the body
  to a file, no hashing, no fsync; benchmarks/asgi_sink.py), timed with ``curl -T``: what
  the ASGI body path alone costs;
* **mlos-core**, a new server per run (fsync on): ``resumable`` is ``POST /v1/uploads``
  (open), ``PUT`` of the blob with curl, commit; ``multipart`` is one ``curl -F`` ``POST
  /models/upload`` (manifest + file). Both send the file's size and sha256 in the manifest:
  the server hashes every byte it receives and checks it.
* ``axon publish`` of a 1 GiB model (installed in a private AXON_HOME) to a new mlos-core:
  the whole command, client RSS by GNU time.

The tools run ``AXON_BENCH_ROUNDS`` rounds (default 3) in rotated order. Rows show each
tool's **best** run (every run and the median in the note): other load on the machine and the
disk's noise only ever add time, so the best run is the closest to what each can do, and
the limit is a best run too; ratios to the limit, nginx and the ASGI server, and peak RSS
(mlos-core: the server's VmHWM; axon: the client's). Targets: mlos-core >= 0.6x the limit's
speed, ``axon publish`` <= 1.5x ``curl -T`` into nginx and <= 2x the limit, RSS < 150 MB.
``AXON_BENCH_INGEST_MB`` changes the size (default 1024; ``AXON_BENCH_QUICK=1``: 16).
Without nginx (scripts/system-deps.sh installs it) its row is left out, with a note.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.asgi_sink import AsgiSink, start_asgi_sink
from benchmarks.common import (
    MiB,
    Mlos,
    Row,
    Runs,
    Sample,
    Target,
    Tool,
    axon_bin,
    command,
    install_model,
    make_file,
    on_fresh_mlos,
    rounds,
    run_rounds,
    sample_of,
    size_from_env,
)
from benchmarks.nginx import Nginx, nginx_bin, start_nginx

REF = "bench/ingest-publish@v1"
_CURL_PUT = ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", "Expect:", "-T"]


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
    cpu = server.cpu_seconds()
    start = time.perf_counter()
    opened = httpx.post(
        f"{url}/v1/uploads", json={"model_id": "bench/ingest@v1", "manifest": manifest}
    )
    opened.raise_for_status()
    uid = opened.json()["upload_id"]
    subprocess.run(
        [*_CURL_PUT, str(src), "-X", "PUT", "-H", "Content-Type: application/octet-stream",
         f"{url}/v1/uploads/{uid}/blobs/{digest}"],
        check=True,
    )  # fmt: skip
    httpx.post(f"{url}/v1/uploads/{uid}/commit", timeout=120).raise_for_status()
    seconds = time.perf_counter() - start
    return Sample(seconds, server.peak_rss_mb(), server.cpu_seconds() - cpu)


def _multipart(server: Mlos, src: Path, manifest: Path) -> Sample:
    cpu = server.cpu_seconds()
    start = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-H", "Expect:",
         "-F", "model_id=bench/ingest-mp@v1", "-F", f"manifest=<{manifest}",
         "-F", f"model_files=@{src};filename=weights.bin", f"{server.url}/models/upload"],
        check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return Sample(seconds, server.peak_rss_mb(), server.cpu_seconds() - cpu)


def _best(runs: Runs) -> float:
    return min(runs.seconds)


def run(workdir: Path) -> list[Row]:
    workdir = workdir.resolve()
    size = size_from_env("AXON_BENCH_INGEST_MB", 1024)
    mb = size // MiB
    src = make_file(workdir / "src.bin", size)
    digest = _sha256(src)
    manifest = _manifest(size, digest)
    manifest_file = workdir / "manifest.json"
    manifest_file.write_text(json.dumps(manifest))
    env, _cached = install_model(workdir, size, REF)
    dd_out = workdir / "dd.out"

    tools: dict[str, Tool] = {
        "dd": command(
            ["dd", f"if={src}", f"of={dd_out}", "bs=4M", "conv=fdatasync", "status=none"],
            reset=lambda: dd_out.unlink(),
        ),
        "sha256": command(["openssl", "dgst", "-sha256", str(src)], stdout=subprocess.DEVNULL),
    }
    server_rss: list[float] = []  # of the servers axon published to (the row has axon's)
    server_cpu: list[float] = []  # ... and the CPU seconds each used for the publish

    def publish(server: Mlos) -> Sample:
        cpu = server.cpu_seconds()
        sample = sample_of([axon_bin(), "publish", REF, "--target", server.url, "-q"], env=env)
        server_rss.append(server.peak_rss_mb())
        server_cpu.append(server.cpu_seconds() - cpu)
        return sample

    with contextlib.ExitStack() as stack:  # the baseline servers stop whatever happens
        if nginx_bin() is not None:
            nginx: Nginx = start_nginx(workdir / "nginx-root")
            stack.callback(nginx.stop)
            tools["nginx"] = Tool(
                lambda: sample_of([*_CURL_PUT, str(src), nginx.url_of("src.bin")]),
                reset=lambda: (nginx.root / "src.bin").unlink(missing_ok=True),
            )
        else:
            print("note: no nginx (scripts/system-deps.sh): no nginx row", file=sys.stderr)
        sink_dir = workdir / "asgi-root"
        sink: AsgiSink = start_asgi_sink(sink_dir)
        stack.callback(shutil.rmtree, sink_dir, ignore_errors=True)
        stack.callback(sink.stop)
        tools["asgi"] = Tool(
            lambda: sample_of([*_CURL_PUT, str(src), sink.url_of("src.bin")]),
            reset=lambda: (sink_dir / "src.bin").unlink(missing_ok=True),
        )
        tools["put"] = on_fresh_mlos(workdir, lambda s: _resumable(s, src, manifest, digest))
        tools["multipart"] = on_fresh_mlos(workdir, lambda s: _multipart(s, src, manifest_file))
        tools["publish"] = on_fresh_mlos(workdir, publish)
        runs = run_rounds(tools, rounds(3))
    return _rows(runs, size, mb, max(server_rss), statistics.median(server_cpu))


SPEED = 0.6  # mlos-core's ingest speed, at least this fraction of the limit's


def _rows(
    runs: dict[str, Runs], size: int, mb: int, server_rss: float, server_cpu: float
) -> list[Row]:
    best = {name: _best(r) for name, r in runs.items()}
    dd, sha = best["dd"], best["sha256"]
    limit = max(dd, sha)
    limit_name = "limit: disk (dd)" if dd >= sha else "limit: sha256"
    others = [(name, best[name]) for name in ("nginx", "asgi") if name in runs]

    def compare(seconds: float) -> str:
        parts = [f"{limit / seconds:.2f}x the limit's speed"]
        parts += [f"{t / seconds:.2f}x {name}'s" for name, t in others]
        return ", ".join(parts)

    def row(
        name: str,
        key: str,
        note: str = "",
        target: float | None = None,
        baseline: tuple[str, float] = (limit_name, limit),
    ) -> Row:
        r = Row(name, best[key], size, *baseline, runs[key].rss or None, runs=runs[key].seconds)
        r.note = "; ".join(p for p in (_best_note(runs[key]), note, compare(r.seconds)) if p)
        r.target = Target(target) if target else None
        return r

    def curl_row(name: str, key: str) -> Row:
        r = row(name, key, "no hash, no fsync")
        r.peak_rss_mb = None  # GNU time measured curl, not the server
        return r

    rows = [
        Row(f"dd bs=4M conv=fdatasync ({mb} MiB)", dd, size, note=_best_note(runs["dd"])),
        Row(f"openssl dgst -sha256 ({mb} MiB)", sha, size, note=_best_note(runs["sha256"])),
    ]
    if "nginx" in runs:
        rows.append(curl_row(f"nginx PUT, curl -T ({mb} MiB)", "nginx"))
    rows.append(curl_row(f"bare ASGI server, curl -T ({mb} MiB)", "asgi"))
    # speed >= SPEED x the limit's: time <= limit / SPEED
    aim = round(1 / SPEED, 2)

    # Where the time goes on a machine of few cores: the CPU seconds the server spent (all
    # its threads, user + system; the median of the runs), against one sha256 stream's.
    def server(key: str) -> str:
        return f"server RSS; server CPU {runs[key].cpu:.2f} s (sha256 alone: {sha:.2f} s)"

    rows.append(row(f"ingest resumable PUT, sha256 ({mb} MiB)", "put", server("put"), aim))
    rows.append(
        row(f"ingest multipart POST, sha256 ({mb} MiB)", "multipart", server("multipart"), aim)
    )
    rows.append(
        row(
            f"axon publish, API ({mb} MiB)",
            "publish",
            f"client RSS; client CPU {runs['publish'].cpu:.2f} s, server CPU {server_cpu:.2f} s",
            2.0,
        )
    )
    if "nginx" in runs:
        vs_nginx = row(
            f"axon publish, API ({mb} MiB), vs nginx",
            "publish",
            target=1.5,
            baseline=("curl -T into nginx", best["nginx"]),
        )
        vs_nginx.peak_rss_mb = None
        rows.append(vs_nginx)
    ingest_rss = max(runs["put"].rss, runs["multipart"].rss, server_rss)
    rows.append(
        Row(
            "mlos-core peak RSS, any ingest above",
            0.0,
            peak_rss_mb=ingest_rss,
            note="absolute: the largest VmHWM of the servers",
            target=Target(150, "rss", strict=True),
        )
    )
    rows.append(
        Row(
            "axon publish peak RSS (client)",
            0.0,
            peak_rss_mb=runs["publish"].rss,
            note="absolute: GNU time",
            target=Target(150, "rss", strict=True),
        )
    )
    return rows


def _best_note(runs: Runs) -> str:
    seconds = ", ".join(f"{s:.2f}" for s in runs.seconds)
    return f"best of {len(runs.samples)} ({seconds} s; median {runs.median:.2f} s)"
