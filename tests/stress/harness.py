"""Shared pieces of the stress tests: two versions of one model in two axon homes, the real
``axon`` CLI as a subprocess, a kill -9 at a random moment, and a YAML alias bomb."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axon.cache import Cache
from axon.install import install_source
from modelpkg.refs import ModelRef
from tests.fixtures.models import write_model_dir
from tests.helpers import write_config
from tests.stress.checkers import tree_digest

MiB = 1024 * 1024


@dataclass
class Home:
    """An AXON_HOME holding ``ref`` with its own content (``label`` a or b)."""

    path: Path
    ref: ModelRef
    label: str

    @property
    def model_dir(self) -> Path:
        return self.path / "cache" / "models" / self.ref.relpath

    def content(self) -> dict[str, str]:
        digest = tree_digest(self.model_dir)
        return {k: v for k, v in digest.items() if k != "manifest.yaml"}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["AXON_HOME"] = str(self.path)
        env.pop("MLOS_CORE_ENDPOINT", None)
        return env

    def write_config(self, targets: dict[str, Any], **extra: Any) -> None:
        write_config(self.path, targets, **extra)


def make_homes(tmp_path: Path, ref: str, weights: int) -> tuple[Home, Home]:
    """Two homes with the same reference and different content: b has one more file, so a
    reader that sees a mix of a and b is caught by size, sha256 or an unlisted file."""
    homes = []
    for i, label in enumerate("ab"):
        src = tmp_path / f"src-{label}"
        extra = {"extra-b.bin": os.urandom(64 * 1024)} if label == "b" else None
        write_model_dir(src, weights_size=weights + i * 4096, seed=i + 1, extra=extra)
        home = tmp_path / f"home-{label}"
        home.mkdir()
        model = install_source(str(src), as_ref=ref, cache=Cache(home / "cache"))
        homes.append(Home(home, model.ref, label))
    return homes[0], homes[1]


def axon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "axon", *args]


def run_axon(home: Home, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        axon_cmd(*args), capture_output=True, text=True, timeout=timeout, env=home.env()
    )


def kill_at_random(
    home: Home,
    args: list[str],
    within: float,
    rng: random.Random,
    *,
    spread: tuple[float, float] = (0.2, 1.1),
) -> float:
    """Start ``axon ARGS``, kill -9 it after a random delay in ``spread`` x ``within``;
    return the delay (the process may have finished already: that is a trial too)."""
    delay = rng.uniform(*spread) * within
    proc = subprocess.Popen(
        axon_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=home.env()
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return delay


def timed(home: Home, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = run_axon(home, *args)
    return time.monotonic() - started, done


def billion_laughs(levels: int = 9) -> str:
    """A ~700-byte manifest whose nested aliases expand to 10**levels strings."""
    lines = ["apiVersion: v1", "kind: Model", "x0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\nspec: {format: {files: []}}\n"
