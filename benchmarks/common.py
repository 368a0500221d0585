"""Shared benchmark helpers: test data, timing, peak memory of a child process, the table."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass
class Row:
    """One measurement: ``name``, seconds, bytes moved, and optionally the baseline it is
    compared with (its name and seconds) and the peak RSS in MB of the measured process."""

    name: str
    seconds: float
    nbytes: int = 0
    baseline: str | None = None
    baseline_seconds: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline_seconds:
            return self.seconds / self.baseline_seconds
        return None

    @property
    def mb_per_s(self) -> float | None:
        return self.nbytes / MiB / self.seconds if self.nbytes and self.seconds else None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "bytes": self.nbytes,
            "MiB_per_s": round(self.mb_per_s, 1) if self.mb_per_s else None,
            "baseline": self.baseline,
            "baseline_seconds": round(self.baseline_seconds, 3) if self.baseline_seconds else None,
            "ratio": round(self.ratio, 2) if self.ratio else None,
            "peak_rss_mb": round(self.peak_rss_mb, 1) if self.peak_rss_mb else None,
            "note": self.note,
        }


def print_rows(rows: list[Row]) -> None:
    head = (
        f"{'benchmark':44} {'seconds':>8} {'MiB/s':>8} {'baseline':>26} {'ratio':>6} {'RSS MB':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        base = (
            f"{r.baseline} {r.baseline_seconds:.2f}s" if r.baseline and r.baseline_seconds else ""
        )
        ratio = f"{r.ratio:.2f}x" if r.ratio else ""
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else ""
        note = f"  {r.note}" if r.note else ""
        print(
            f"{r.name:44} {r.seconds:8.2f} {(r.mb_per_s or 0):8.1f} {base:>26} "
            f"{ratio:>6} {rss:>7}{note}"
        )


def make_file(path: Path, size: int, *, seed: int = 0) -> Path:
    """Write ``size`` bytes of incompressible data, streaming (never all in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = (
        os.urandom(4 * MiB)
        if seed == 0
        else (bytes([seed % 251]) * 16 + os.urandom(16)) * (4 * MiB // 32)
    )
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n
    return path


def drop_caches_if_possible() -> None:
    """Sync (and drop the page cache when root), so each run starts from the same state."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        pass


def timed_run(cmd: list[str], **kw: object) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of that child)."""
    seconds, _cpu, rss = timed_run_cpu(cmd, **kw)
    return seconds, rss


_GNU_TIME = "/usr/bin/time"


@functools.cache
def _gnu_time() -> str | None:
    """GNU time, when installed: it reports its child's own peak RSS (see timed_run_cpu)."""
    try:
        out = subprocess.run(
            [_GNU_TIME, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is None or "GNU" not in out.stdout + out.stderr:
        print(
            f"note: no GNU time at {_GNU_TIME} (apt-get install time): peak RSS is not measured",
            file=sys.stderr,
        )
        return None
    return _GNU_TIME


def timed_run_cpu(cmd: list[str], **kw: object) -> tuple[float, float, float]:
    """Run ``cmd``; return (wall seconds, CPU seconds (user + system), peak RSS in MB) of that
    child. On a busy machine the wall time mostly measures the scheduler, the CPU time the work.

    Uses ``wait4`` so the CPU time is this child's own, not that of earlier children. The peak
    RSS is not taken from there: Linux carries a process's high-water mark across ``exec``,
    so a child spawned from this (large) Python process would report at least this process's
    RSS. GNU time, itself small, forks the command and reports the command's own peak
    (``%M``); without GNU time the RSS is 0 (not measured).
    """
    time_bin = _gnu_time()
    fd, report = tempfile.mkstemp(prefix="axon-bench-rss-")
    os.close(fd)
    argv = [time_bin, "-f", "%M", "-o", report, *cmd] if time_bin else cmd
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        lines = Path(report).read_text().split()
        rss_kb = int(lines[-1]) if time_bin and lines else 0
    finally:
        os.unlink(report)
    return seconds, usage.ru_utime + usage.ru_stime, rss_kb / 1024.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; 0.0 when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def peak_rss_mb_of(pid: int) -> float:
    """VmHWM of a live process, in MB (read before it exits)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0
