"""Installing and hashing a 1 GiB model, each against a standard tool doing the same work in
the same run:

* ``axon install`` (copy + hash + fsync) vs ``cp -r && sync`` of the same directory;
* ``axon verify`` with a cold hash index (every byte read and hashed) vs
  ``openssl dgst -sha256`` on the same file;
* ``axon verify`` of the unchanged model (warm index: no file byte may be read): an absolute
  time, the whole command; no tool does that work, so no ratio.

The source and the cached file are read once before timing (page cache warm for every tool),
and everything written so far is synced before each timed run, so no run pays for the
writeback of the test data or of another run: the figures compare the copying and hashing
work, not the disk's backlog. Each pair runs ``AXON_BENCH_ROUNDS`` rounds (default 3) in
rotated order; the table shows medians. ``AXON_BENCH_HASH_BYTES`` changes the size (default
1 GiB; ``AXON_BENCH_QUICK=1``: 16 MiB).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.common import (
    Row,
    Runs,
    Sample,
    Tool,
    command,
    make_file,
    rounds,
    run_rounds,
    sample_of,
    size_from_env,
)

REF = "bench/hash-model@v1"


def _axon(*args: str) -> list[str]:
    return [sys.executable, "-m", "axon", *args]


def _warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        while fh.read(8 * 1024 * 1024):
            pass


def _cpu(runs: Runs, base: Runs | None = None) -> str:
    """The note's CPU part: on a busy machine the wall time measures the scheduler too."""
    if runs.cpu is None:
        return ""
    vs = f" vs {base.cpu:.2f}s" if base is not None and base.cpu is not None else ""
    return f"cpu {runs.cpu:.2f}s{vs}"


class _Verify:
    """``axon verify REF --json``, checked: ok, and the number of bytes it read."""

    def __init__(self, workdir: Path, env: dict[str, str], index: Path) -> None:
        self.out = workdir / "verify.json"
        self.env = env
        self.index = index
        self.bytes_read: list[int] = []

    def forget_index(self) -> None:
        """A cold index: every byte must be hashed again."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.index}{suffix}").unlink(missing_ok=True)

    def timed(self) -> Sample:
        with open(self.out, "w") as fh:
            sample = sample_of(_axon("verify", REF, "--json"), env=self.env, stdout=fh)
        report = json.loads(self.out.read_text())
        if not report["ok"]:
            raise RuntimeError(f"axon verify {REF} failed: {report}")
        self.bytes_read.append(int(report["bytes_hashed"]))
        return sample


def run(workdir: Path) -> list[Row]:
    size = size_from_env("AXON_BENCH_HASH_BYTES", 1024, unit=1)
    mb = f"{size / (1024 * 1024):.0f} MiB"
    openssl = shutil.which("openssl")
    src = workdir / "src"
    weights = make_file(src / "model.safetensors", size)
    (src / "config.json").write_text('{"model_type": "bert"}')
    _warm(weights)

    homes = iter(range(1_000_000))
    home = workdir / "home"

    def install() -> Sample:
        nonlocal home
        home = workdir / f"home-{next(homes)}"  # a fresh cache every run
        env = {**os.environ, "AXON_HOME": str(home)}
        return sample_of(_axon("install", str(src), "--as", REF, "-q"), env=env)

    copy = workdir / "copy"
    copying = run_rounds(
        {
            "cp": command(
                ["sh", "-c", 'cp -r "$0" "$1" && sync', str(src), str(copy)],
                reset=lambda: shutil.rmtree(copy),
            ),
            "install": Tool(install, reset=lambda: shutil.rmtree(home)),
        },
        rounds(),
    )
    env = {**os.environ, "AXON_HOME": str(workdir / "home")}
    subprocess.run(_axon("install", str(src), "--as", REF, "-q"), env=env, check=True)
    shutil.rmtree(src)  # keep only the cached copy on disk
    cached = workdir / "home" / "cache" / "models" / "bench" / "hash-model" / "v1"
    target = cached / weights.name
    _warm(target)
    verify = _Verify(workdir, env, workdir / "home" / "cache" / ".hash-index.sqlite")

    tools = {"cold": Tool(verify.timed, setup=verify.forget_index)}
    if openssl:
        tools["openssl"] = command(
            [openssl, "dgst", "-sha256", str(target)], stdout=subprocess.DEVNULL
        )
    hashing = run_rounds(tools, rounds())
    cold_read = set(verify.bytes_read)
    verify.bytes_read.clear()
    warm = run_rounds({"warm": Tool(verify.timed)}, rounds())["warm"]
    warm_read = set(verify.bytes_read)
    if warm_read != {0}:
        raise RuntimeError(f"axon verify of an unchanged model read bytes: {warm_read}")

    cp, installing = copying["cp"], copying["install"]
    cold, ssl = hashing["cold"], hashing.get("openssl")
    return [
        installing.row(
            f"axon install {mb} dir (copy+hash+fsync)",
            size,
            ("cp -r && sync", cp),
            _cpu(installing, cp),
        ),
        cold.row(
            f"axon verify, cold index (hash {mb})",
            size,
            ("openssl dgst -sha256", ssl) if ssl else None,
            f"{_cpu(cold, ssl)}; read {', '.join(map(str, sorted(cold_read)))} B",
        ),
        warm.row(
            "axon verify, unchanged (warm index)",
            0,
            note=f"absolute, whole command; {_cpu(warm)}; read 0 B",
        ),
    ]
