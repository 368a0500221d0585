"""Shared benchmark helpers: sizes, test data, the installed model, an mlos-core server,
timing (peak memory of a child process), rounds in rotated order, and the table."""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

MiB = 1024 * 1024
GiB = 1024 * MiB

QUICK = os.environ.get("AXON_BENCH_QUICK", "") not in ("", "0")
"""``AXON_BENCH_QUICK=1``: small sizes and 2 rounds, to check that the benchmarks run (the
figures mean little). An explicit size or ``AXON_BENCH_ROUNDS`` still wins."""
QUICK_MB = 16


def size_from_env(var: str, default_mb: int, *, unit: int = MiB) -> int:
    """Bytes: ``$var`` units when set, else :data:`QUICK_MB` MiB in quick mode, else
    ``default_mb`` MiB."""
    if os.environ.get(var):
        return int(os.environ[var]) * unit
    return (QUICK_MB if QUICK else default_mb) * MiB


def rounds(default: int = 3) -> int:
    """How many times each tool of a benchmark runs (``AXON_BENCH_ROUNDS``; 2 in quick mode)."""
    return max(1, int(os.environ.get("AXON_BENCH_ROUNDS", "2" if QUICK else str(default))))


_UNITS = {"ratio": "x", "seconds": " s", "rss": " MB"}


@dataclass(frozen=True)
class Target:
    """What a row must reach: its ``ratio``, its ``seconds`` or its peak RSS in MB (``rss``)
    at most ``limit`` (below it when ``strict``)."""

    limit: float
    of: Literal["ratio", "seconds", "rss"] = "ratio"
    strict: bool = False

    def value(self, row: Row) -> float | None:
        return {"ratio": row.ratio, "seconds": row.seconds, "rss": row.peak_rss_mb}[self.of]

    def met(self, row: Row) -> bool | None:
        """Whether ``row`` meets it; None when the row lacks the figure."""
        value = self.value(row)
        if value is None:
            return None
        return value < self.limit if self.strict else value <= self.limit

    def __str__(self) -> str:
        return f"{'<' if self.strict else '<='} {self.limit:g}{_UNITS[self.of]}"


@dataclass
class Row:
    """One measurement: ``name``, seconds, bytes moved, and optionally the baseline it is
    compared with (its name and seconds), the peak RSS in MB of the measured process and the
    :class:`Target` it must meet. ``runs`` holds every run's seconds when ``seconds`` is
    their median."""

    name: str
    seconds: float
    nbytes: int = 0
    baseline: str | None = None
    baseline_seconds: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)
    target: Target | None = None

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
            "runs": [round(s, 3) for s in self.runs],
            **(
                {"target": str(self.target), "meets_target": self.target.met(self)}
                if self.target
                else {}
            ),
        }


LEGEND = (
    "seconds: the median of the runs (their count and spread in the note) unless the note says\n"
    "otherwise; ratio = seconds / the baseline's seconds, both moving the same bytes in this\n"
    "run (below 1: axon is faster); a row without a baseline is an absolute time, not a ratio;\n"
    "RSS: peak resident memory (MB) of the measured process."
)


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
        speed = f"{r.mb_per_s:.1f}" if r.mb_per_s else ""
        print(f"{r.name:44} {r.seconds:8.2f} {speed:>8} {base:>26} {ratio:>6} {rss:>7}{note}")
    print(LEGEND)


TARGETS_LEGEND = (
    "measured: the figure the target is about (ratio to the row's baseline, seconds, or peak\n"
    "RSS in MB), as in the table above; meets target: yes / NO, or ? when not measured."
)


def print_targets(rows: list[Row]) -> None:
    """A summary of the rows that have a :class:`Target`: the figure, the target, whether
    it is met."""
    aimed = [r for r in rows if r.target]
    if not aimed:
        return
    head = f"{'summary':44} {'measured':>10} {'target':>10} {'meets target':>13}"
    print(f"\n{head}\n{'-' * len(head)}")
    for r in aimed:
        assert r.target is not None
        value = r.target.value(r)
        shown = f"{value:.2f}{_UNITS[r.target.of]}" if value is not None else "-"
        met = {True: "yes", False: "NO", None: "?"}[r.target.met(r)]
        print(f"{r.name:44} {shown:>10} {r.target!s:>10} {met:>13}")
    print(TARGETS_LEGEND)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- timing ---------------------------------------------------------------------------------
class Sample(NamedTuple):
    """One timed run: wall seconds, peak RSS (MB) of the measured process, CPU seconds of
    the child (None when the measured work is not one child's)."""

    seconds: float
    rss_mb: float
    cpu: float | None = None


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


def sample_of(cmd: list[str], **kw: object) -> Sample:
    """:func:`timed_run_cpu` as a :class:`Sample`."""
    seconds, cpu, rss = timed_run_cpu(cmd, **kw)
    return Sample(seconds, rss, cpu)


def _nothing() -> None:
    return None


@dataclass
class Tool:
    """One contender of a benchmark round. ``setup`` prepares a run (untimed: start a server,
    make a destination), ``timed`` runs and times it, ``reset`` removes what it left (untimed)
    so that the next run, of any tool, starts from the same state."""

    timed: Callable[[], Sample]
    setup: Callable[[], object] = _nothing
    reset: Callable[[], object] = _nothing


def command(cmd: list[str], *, reset: Callable[[], object] = _nothing, **kw: object) -> Tool:
    """A tool that is one command (``kw`` as for :func:`subprocess.Popen`)."""
    return Tool(lambda: sample_of(cmd, **kw), reset=reset)


@dataclass
class Runs:
    """Every run of one tool."""

    samples: list[Sample] = field(default_factory=list)

    @property
    def seconds(self) -> list[float]:
        return [s.seconds for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rss(self) -> float:
        return max(s.rss_mb for s in self.samples)

    @property
    def cpu(self) -> float | None:
        cpus = [s.cpu for s in self.samples if s.cpu is not None]
        return statistics.median(cpus) if cpus else None

    def spread(self) -> str:
        """``median of 3 (2.10-2.31 s)``, or ``1 run``."""
        if len(self.samples) == 1:
            return "1 run"
        return f"median of {len(self.samples)} ({min(self.seconds):.2f}-{max(self.seconds):.2f} s)"

    def row(
        self,
        name: str,
        nbytes: int = 0,
        baseline: tuple[str, Runs] | None = None,
        note: str = "",
        target: Target | None = None,
    ) -> Row:
        """The row of these runs: their median, compared with the median of ``baseline``'s
        runs (its label, its runs) when given; the spread first in the note."""
        return Row(
            name,
            self.median,
            nbytes,
            baseline[0] if baseline else None,
            baseline[1].median if baseline else None,
            self.rss or None,
            "; ".join(part for part in (self.spread(), note) if part),
            self.seconds,
            target,
        )


def rotated(names: list[str], i: int) -> list[str]:
    """Round ``i``'s order: each tool goes first in turn (none always follows another)."""
    k = i % len(names)
    return names[k:] + names[:k]


def run_rounds(tools: Mapping[str, Tool], n: int, *, cold: bool = False) -> dict[str, Runs]:
    """Run every tool ``n`` times, round ``i`` in :func:`rotated` order.

    Before each timed run, after its setup, everything written so far is synced (and, with
    ``cold``, the page cache dropped when root), so no run pays for the writeback of another
    or of the test data. A virtual disk's speed also drifts while the host absorbs earlier
    writes, which used to favour whichever tool ran first: hence the rotation.
    """
    runs = {name: Runs() for name in tools}
    for i in range(n):
        for name in rotated(list(tools), i):
            tool = tools[name]
            tool.setup()
            if cold:
                drop_caches_if_possible()
            else:
                os.sync()
            try:
                runs[name].samples.append(tool.timed())
            finally:
                tool.reset()
    os.sync()
    return runs


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


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the model, axon and mlos-core -----------------------------------------------------------
def axon_bin() -> str:
    return str(Path(sys.executable).with_name("axon"))


def install_model(workdir: Path, size: int, ref: str) -> tuple[dict[str, str], Path]:
    """A model (``size`` bytes of weights + two small files) installed in a private
    AXON_HOME; returns (env, cached model dir). Synced: no run pays for writing it."""
    src = workdir / "model-src"
    make_file(src / "model.safetensors", size)
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    installed = install_dir(workdir, src, ref)
    shutil.rmtree(src)
    os.sync()
    return installed


def install_dir(workdir: Path, src: Path, ref: str) -> tuple[dict[str, str], Path]:
    """The model directory ``src`` installed as ``ref`` in the AXON_HOME ``workdir/home``;
    returns (env, cached model dir)."""
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


@dataclass
class Mlos:
    """A ``mlos-core serve`` child on a loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    models: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 30.0) -> Mlos:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"mlos-core did not start: {self.log.read_text()}")

    def peak_rss_mb(self) -> float:
        return peak_rss_mb_of(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used so far (all its threads)."""
        return cpu_seconds_of(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_mlos(models: Path, *flags: str, wait: bool = True) -> Mlos:
    """``mlos-core serve`` on a free loopback port for ``models`` (created), fsync on unless
    ``flags`` say otherwise; its log next to the models dir. ``wait``: until healthy."""
    port = free_port()
    models.mkdir(parents=True, exist_ok=True)
    log = models.with_name(f"{models.name}.log")
    cmd = [sys.executable, "-m", "mlos_core", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--models-dir", str(models), "--log-level", "warning", *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Mlos(proc, port, models, log)
    return server.wait_healthy() if wait else server


def on_fresh_mlos(root: Path, work: Callable[[Mlos], Sample], *flags: str) -> Tool:
    """A tool that runs ``work`` against a new mlos-core of its own (started by the setup;
    stopped, its models dir and log removed by the reset), so no run finds blobs another run
    uploaded (the server deduplicates) or a server grown by earlier runs."""
    numbers = itertools.count()
    servers: list[Mlos] = []

    def setup() -> None:
        servers.append(start_mlos(root / f"models-{next(numbers)}", *flags))

    def reset() -> None:
        server = servers.pop()
        server.stop()
        shutil.rmtree(server.models, ignore_errors=True)
        server.log.unlink(missing_ok=True)

    return Tool(lambda: work(servers[-1]), setup, reset)
