"""Plain helpers for the tests (no fixtures): write an axon config file, run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def write_config(
    home: Path,
    targets: dict[str, Any] | None = None,
    *,
    clusters: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``home/config.yaml`` (``home`` is an AXON_HOME) and return its path.

    ``targets`` become ``mlos_targets:``, ``clusters`` ``clusters:``; ``extra`` adds other
    top-level sections as they are (``registry=...``). A section left as None is not written.
    The file is these values dumped as YAML, in the order given, so a test states data, not
    indentation. Tests of the parser itself, which need exact (or broken) text, write it.
    """
    body: dict[str, Any] = {}
    if targets is not None:
        body["mlos_targets"] = targets
    if clusters is not None:
        body["clusters"] = clusters
    body.update(extra)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_axon(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> CliRun:
    """Run ``axon ARGS`` as a real subprocess (exit codes and stderr exactly as users see)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "axon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def progress_env(interval: float) -> dict[str, str]:
    """The environment of an ``axon`` run whose stderr (no terminal) gets plain progress
    lines every ``interval`` seconds: ``AXON_PROGRESS`` left out (auto), the interval set."""
    env = {k: v for k, v in os.environ.items() if k != "AXON_PROGRESS"}
    env["AXON_PROGRESS_INTERVAL"] = str(interval)
    return env


def start_publish(ref: object, target: str, *, interval: float) -> subprocess.Popen[str]:
    """``axon publish REF -t TARGET`` started with progress lines (:func:`progress_env`);
    stdout and stderr piped, as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "axon", "publish", str(ref), "-t", target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=progress_env(interval),
    )


def run_publish(ref: object, target: str, *, interval: float, timeout: float = 180) -> CliRun:
    """``axon publish REF -t TARGET`` run to its end with progress lines
    (:func:`progress_env`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "axon", "publish", str(ref), "-t", target],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=progress_env(interval),
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def error_lines(err: str) -> list[str]:
    """The ``axon: error`` lines of a run's stderr."""
    return [line for line in err.splitlines() if line.startswith("axon: error")]
