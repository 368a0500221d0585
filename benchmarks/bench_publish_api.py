"""API publish of a 1 GiB model vs ``curl`` into the same kind of ``mlos-core``.

Every run gets a new ``mlos-core serve`` on a loopback port (fsync on, as in production),
so no run finds blobs an earlier one uploaded (the server deduplicates by sha256) and none
pays for a server grown by the others. Both tools send the same files of the same installed
model under the same model id, with the upload protocol of docs/upload-protocol.md:

* ``curl``: the baseline, a shell script of three curl commands, all timed: open the upload
  (``POST /v1/uploads`` with the model's manifest), ``PUT`` every file's bytes to its blob
  URL (one curl, one connection), then ``POST .../commit``;
* ``axon publish``: the whole command (``--target http://127.0.0.1:PORT -q``): start-up,
  config, validation through the hash index, open, streamed PUTs, commit and register.

The two run ``AXON_BENCH_ROUNDS`` rounds (default 3) in rotated order; page caches are
dropped (when root) before each timed run so both read from disk alike; the table shows
medians. Then, absolute times (no tool does that work, so no ratio): the unchanged
re-publish (one open, one commit, no bytes), and the bare interpreter start-up for
reference. ``AXON_BENCH_PUBLISH_MB`` changes the size (default 1024;
``AXON_BENCH_QUICK=1``: 16).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from benchmarks.common import (
    Mlos,
    Row,
    Sample,
    axon_bin,
    command,
    install_model,
    on_fresh_mlos,
    rounds,
    run_rounds,
    sample_of,
    size_from_env,
    start_mlos,
)
from modelpkg.manifest import Manifest

REF = "bench/publish-api@v1"

_CURL = """set -eo pipefail
url=$1 open=$2; shift 2
id=$(curl -sS -f -X POST -H 'Content-Type: application/json' --data-binary "@$open" \\
  "$url/v1/uploads" | sed -n 's/.*"upload_id": *"\\([^"]*\\)".*/\\1/p')
test -n "$id"
puts=()
while [ $# -gt 0 ]; do puts+=(-T "$1" "$url/v1/uploads/$id/blobs/$2"); shift 2; done
curl -sS -f -H 'Expect:' -H 'Upload-Offset: 0' "${puts[@]}" >/dev/null
curl -sS -f -o /dev/null -X POST "$url/v1/uploads/$id/commit"
"""


def curl_publish(workdir: Path, cached: Path) -> list[str]:
    """The curl baseline's command, but for the server's URL (its first argument to add):
    open, one PUT per distinct content, commit."""
    manifest = Manifest.load(cached)
    opening = workdir / "open.json"
    text = (cached / "manifest.yaml").read_text()
    opening.write_text(json.dumps({"model_id": REF, "manifest": text}))
    blobs = {f.sha256: f.path for f in manifest.files}
    files = [arg for sha, path in blobs.items() for arg in (str(cached / path), sha)]
    return [str(opening), *files]


def run(workdir: Path) -> list[Row]:
    workdir = workdir.resolve()
    size = size_from_env("AXON_BENCH_PUBLISH_MB", 1024)
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.iterdir() if p.is_file())
    curl_args = curl_publish(workdir, cached)

    def publish(url: str) -> list[str]:
        return [axon_bin(), "publish", REF, "--target", url, "-q"]

    def curl(server: Mlos) -> Sample:
        return sample_of(["bash", "-c", _CURL, "curl-publish", server.url, *curl_args])

    def axon(server: Mlos) -> Sample:
        return sample_of(publish(server.url), env=env)

    runs = run_rounds(
        {"curl": on_fresh_mlos(workdir, curl), "axon": on_fresh_mlos(workdir, axon)},
        rounds(3),
        cold=True,
    )
    server = start_mlos(workdir / "again-models")
    try:
        command(publish(server.url), env=env).timed()  # in place: the next ones send nothing
        again = run_rounds({"again": command(publish(server.url), env=env)}, rounds(3))["again"]
    finally:
        server.stop()
        shutil.rmtree(server.models, ignore_errors=True)
    python = run_rounds({"python": command([sys.executable, "-c", "pass"])}, 3)["python"]
    cpu = f"{again.cpu:.2f} s CPU; " if again.cpu is not None else ""
    return [
        runs["axon"].row(
            f"api: axon publish ({size // (1024 * 1024)} MiB)",
            total,
            ("curl open+PUT+commit", runs["curl"]),
            "fresh server each run",
        ),
        again.row(
            "api: axon publish unchanged (0 B sent)",
            note=f"absolute, whole command; {cpu}target < 0.5 s",
        ),
        python.row("api: python -c pass (reference)", note="absolute: interpreter start-up"),
    ]
