"""Filesystem publish of a 1 GiB model vs ``cp -r`` followed by ``sync`` (a durable copy).

Each copies the same cached model directory (page cache warm for all) to a fresh directory
on the same disk:

* ``cp -r + sync``: the baseline;
* ``axon publish``: the whole command (``--target`` a configured filesystem target,
  ``--no-notify``), so start-up, config, validation and the atomic swap are all counted;
* ``axon publish --full-verify``: the same, re-hashing every byte while validating and
  while copying (without it, the copy trusts the sha256 validation just vouched for, as
  long as each file keeps the identity it had then);
* ``library``: :func:`axon.publish.prepare_model` + ``FilesystemTransport`` in a child
  process (no CLI);
* ``axon publish (unchanged)``: the same publish again: nothing may be written.

A virtual disk's speed drifts while the host absorbs earlier writes, so each round runs the
tools in a rotated order, and every copy is deleted and synced away before the next run.
``AXON_BENCH_ROUNDS`` rounds (default 3 here); the table shows the fastest run of each and
the note the median ratio. ``AXON_BENCH_PUBLISH_MB`` changes the size (default 1024).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import MiB, Row, make_file, timed_run

REF = "bench/publish-fs@v1"

_LIBRARY = """
import sys
from axon.cache import Cache
from axon.publish import prepare_model
from modelpkg.refs import ModelRef
from axon.transports.filesystem import FilesystemTransport
from pathlib import Path
model = prepare_model(Cache.from_config(), ModelRef.parse(sys.argv[2]))
with FilesystemTransport(Path(sys.argv[1])) as t:
    session = t.open(model.ref, model.manifest)
    for entry in session.needed:
        session.send(entry, model.source(entry), verified=model.verified.get(entry.path))
    session.commit()
"""


def axon_bin() -> str:
    return str(Path(sys.executable).with_name("axon"))


def install_model(workdir: Path, size: int, ref: str) -> tuple[dict[str, str], Path]:
    """A 1 GiB model installed in a private AXON_HOME; returns (env, cached model dir)."""
    src = workdir / "model-src"
    make_file(src / "model.safetensors", size)
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    env = {**os.environ, "AXON_HOME": str(workdir / "home")}
    subprocess.run([axon_bin(), "install", str(src), "--as", ref, "-q"], env=env, check=True)
    ns, rest = ref.split("/", 1)
    name, version = rest.split("@")
    cached = workdir / "home" / "cache" / "models" / ns / name / version
    if not (cached / "manifest.yaml").exists():
        found = list((workdir / "home").rglob("manifest.yaml"))
        if not found:
            raise RuntimeError("axon install did not produce a cached model")
        cached = found[0].parent
    return env, cached


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(text)


def rounds(default: int = 2) -> int:
    """Each tool runs this many times, alternating; the best run counts (shared machines)."""
    return max(1, int(os.environ.get("AXON_BENCH_ROUNDS", str(default))))


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """(fastest seconds, highest peak RSS) of several runs."""
    return min(r[0] for r in runs), max(r[1] for r in runs)


def median_ratio(runs: list[tuple[float, float]], base: list[tuple[float, float]]) -> float:
    return statistics.median(r[0] for r in runs) / statistics.median(b[0] for b in base)


def rotated(names: list[str], i: int) -> list[str]:
    """Round ``i``'s order: each tool goes first in turn (none always follows another)."""
    k = i % len(names)
    return names[k:] + names[:k]


def run(workdir: Path) -> list[Row]:
    workdir = workdir.resolve()
    size = int(os.environ.get("AXON_BENCH_PUBLISH_MB", "1024")) * MiB
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.iterdir() if p.is_file())
    dst = workdir / "axon-models"
    write_config(
        workdir / "home",
        "mlos_targets:\n  benchfs:\n    endpoint: http://127.0.0.1:9\n"
        f"    access_method: filesystem\n    storage_path: {dst}\n",
    )
    publish = [axon_bin(), "publish", REF, "--target", "benchfs", "--no-notify", "-q"]
    out = workdir / "out"
    tools: dict[str, list[str]] = {
        "cp": ["bash", "-c", 'cp -r "$0" "$1" && sync', str(cached), str(out)],
        "axon": publish,
        "full": [*publish, "--full-verify"],
        "library": [sys.executable, "-c", _LIBRARY, str(dst), REF],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    for i in range(rounds(3)):
        for name in rotated(list(tools), i):
            dst.mkdir(exist_ok=True)
            os.sync()
            runs[name].append(timed_run(tools[name], env=env))
            shutil.rmtree(out, ignore_errors=True)  # a fresh copy every run
            shutil.rmtree(dst, ignore_errors=True)
    os.sync()
    dst.mkdir()
    timed_run(publish, env=env)
    again_s, again_rss = timed_run(publish, env=env)
    cp_s = best(runs["cp"])[0]
    rows = []
    for name, label in (
        ("axon", "fs: axon publish (1 GiB)"),
        ("full", "fs: axon publish --full-verify"),
        ("library", "fs: library (prepare + transport)"),
    ):
        s, rss = best(runs[name])
        note = f"best of {len(runs[name])}; median {median_ratio(runs[name], runs['cp']):.2f}x"
        rows.append(Row(label, s, total, "cp -r + sync", cp_s, rss, note))
    rows.append(
        Row("fs: axon publish unchanged", again_s, 0, peak_rss_mb=again_rss, note="< 0.5 s")
    )
    return rows
