"""Helpers shared by the tests/test_publish_*.py files: run the real CLI, write a config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


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


def write_config(home: Path, targets: dict[str, Any], **extra: Any) -> Path:
    """Write ``$AXON_HOME/config.yaml`` with these ``mlos_targets``."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump({"mlos_targets": targets, **extra}))
    return path


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("axon: error")]
