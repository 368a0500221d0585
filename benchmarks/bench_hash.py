"""Installing and hashing a 1 GiB model, each against a standard tool in the same run:

* ``axon install`` (copy + hash + fsync) vs ``cp -r && sync``;
* ``axon verify`` with a cold hash index vs ``openssl dgst -sha256`` on the same file;
* ``axon verify`` of the unchanged model (warm index: no file bytes should be read at all).

The source and the cached file are read once before timing, so the figures compare the
hashing/copying work, not the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.common import GiB, Row, make_file, timed_run_cpu

MODEL_BYTES = int(os.environ.get("AXON_BENCH_HASH_BYTES", GiB))
REF = "bench/hash-model@v1"


def _axon(*args: str) -> list[str]:
    return [sys.executable, "-m", "axon", *args]


def _warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        while fh.read(8 * 1024 * 1024):
            pass


def _verify(
    workdir: Path, env: dict[str, str], name: str
) -> tuple[float, float, float, dict[str, object]]:
    out = workdir / f"{name}.json"
    with open(out, "w") as fh:
        seconds, cpu, rss = timed_run_cpu(_axon("verify", REF, "--json"), env=env, stdout=fh)
    return seconds, cpu, rss, json.loads(out.read_text())


def run(workdir: Path) -> list[Row]:
    openssl = shutil.which("openssl")
    env = {**os.environ, "AXON_HOME": str(workdir / "axon-home")}
    src = workdir / "src"
    weights = make_file(src / "model.safetensors", MODEL_BYTES)
    (src / "config.json").write_text('{"model_type": "bert"}')
    _warm(weights)
    copy_s, copy_cpu, _ = timed_run_cpu(["sh", "-c", f"cp -r '{src}' '{workdir / 'copy'}' && sync"])
    shutil.rmtree(workdir / "copy")
    install_s, install_cpu, install_rss = timed_run_cpu(
        _axon("install", str(src), "--as", REF, "-q"), env=env
    )
    shutil.rmtree(src)  # keep only the cached copy on disk
    cached = workdir / "axon-home" / "cache" / "models" / "bench" / "hash-model" / "v1"
    target = cached / weights.name
    index = workdir / "axon-home" / "cache" / ".hash-index.sqlite"
    _warm(target)
    rows = [
        Row(
            "axon install 1 GiB dir (copy+hash+fsync)",
            install_s,
            MODEL_BYTES,
            baseline="cp -r && sync",
            baseline_seconds=copy_s,
            peak_rss_mb=install_rss,
            note=f"cpu {install_cpu:.2f}s vs {copy_cpu:.2f}s",
        )
    ]
    base_s = base_cpu = None
    if openssl:
        base_s, base_cpu, _ = timed_run_cpu(
            [openssl, "dgst", "-sha256", str(target)], stdout=subprocess.DEVNULL
        )
    baseline = "openssl dgst -sha256" if base_s else None
    vs = f" vs {base_cpu:.2f}s" if base_cpu is not None else ""
    for suffix in ("", "-wal", "-shm"):  # a cold index: every byte must be hashed
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    cold_s, cold_cpu, cold_rss, cold = _verify(workdir, env, "cold")
    assert cold["ok"], cold
    rows.append(
        Row(
            "axon verify, cold index (hash 1 GiB)",
            cold_s,
            MODEL_BYTES,
            baseline=baseline,
            baseline_seconds=base_s,
            peak_rss_mb=cold_rss,
            note=f"cpu {cold_cpu:.2f}s{vs}; read {cold['bytes_hashed']} B",
        )
    )
    warm_s, warm_cpu, warm_rss, warm = _verify(workdir, env, "warm")
    assert warm["ok"], warm
    rows.append(
        Row(
            "axon verify, unchanged model (warm index)",
            warm_s,
            0,
            baseline=baseline,
            baseline_seconds=base_s,
            peak_rss_mb=warm_rss,
            note=f"cpu {warm_cpu:.2f}s; read {warm['bytes_hashed']} B (whole command)",
        )
    )
    return rows
