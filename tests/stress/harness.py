"""Shared pieces of the stress tests: model contents in axon homes, the real ``axon`` CLI as a
subprocess, kill -9 at an observed point of a write, and a YAML alias bomb.

Killing at an observed point
----------------------------
A :class:`Probe` looks at a target from outside, the way an operator would, and answers
:class:`Seen`: how many bytes of the content being written have landed there (partial files,
a staging dir, blobs, objects: whatever that kind of target shows) and whether the new
version is what readers see. :func:`kill_on_progress` polls a probe every few ms while a
process works and sends SIGKILL at the point asked for, one of :data:`PHASES`:

* ``before``: the process runs, no byte of the new content is at the target yet (a random
  moment of the start-up, as long as a calibration run took to land its first byte);
* ``transfer``: a random fraction of the bytes has landed (at least one, not all);
* ``commit``: every byte has landed and the new version is not visible yet, a random part
  of the way to visible (a server probe also sees the server build it in its staging dir:
  a kill can wait for that).

At that point the victim is frozen (SIGSTOP), the target looked at in full, then the victim
killed: the kill record (:class:`Kill`) says where the kill landed, one of the three,
``after`` (the new version was visible already: killed while registering or exiting), or
``exited`` (the process ended before that point: no kill). A kill counts only when the
victim was alive when the signal arrived (reaped with -SIGKILL).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from axon.cache import Cache
from axon.install import install_source
from modelpkg.layout import (
    BLOBS_DIR,
    ONESHOT_PREFIX,
    PARTIAL_BLOBS_DIR,
    PARTIAL_DIR,
    S3_BLOBS,
    STAGING_DIR,
    STAGING_TAG,
    STATE_DIR,
    sibling_prefix,
)
from modelpkg.manifest import MANIFEST_NAME, Manifest
from modelpkg.refs import ModelRef
from modelpkg.s3 import S3Settings
from tests.fixtures.models import write_model_dir
from tests.helpers import write_config
from tests.stress.checkers import tree_digest

MiB = 1024 * 1024

PHASES = ("before", "transfer", "commit")  # where a kill is aimed
LANDINGS = (*PHASES, "after", "exited")  # where a kill can land


@dataclass
class Home:
    """An AXON_HOME holding ``ref`` with its own content (``label`` names it)."""

    path: Path
    ref: ModelRef
    label: str

    @property
    def model_dir(self) -> Path:
        return self.path / "cache" / "models" / self.ref.relpath

    def content(self) -> dict[str, str]:
        digest = tree_digest(self.model_dir)
        return {k: v for k, v in digest.items() if k != "manifest.yaml"}

    def manifest(self) -> Manifest:
        return Manifest.load(self.model_dir / MANIFEST_NAME)

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


def make_home(
    tmp_path: Path, ref: str, n: int, weights: int, *, shards: int = 4, shard_size: int = 256 * 1024
) -> Home:
    """Home number ``n``, holding ``ref`` with content nothing else has: a target that holds
    a content already (a blob store, a bucket) is sent nothing, and a kill needs bytes in
    flight. The weights and ``shards`` random files make several blobs, so a transfer is seen
    in steps; odd ``n`` has one more file, so a reader that sees a mix of two neighbours is
    caught by size, sha256 or an unlisted file."""
    src = tmp_path / f"src-{n}"
    extra = {f"shard-{j}.bin": os.urandom(shard_size) for j in range(shards)}
    if n % 2:
        extra["extra-odd.bin"] = os.urandom(64 * 1024)
    write_model_dir(src, weights_size=weights + (n % 7) * 4096, seed=n, extra=extra)
    home = tmp_path / f"home-{n}"
    home.mkdir()
    model = install_source(str(src), as_ref=ref, cache=Cache(home / "cache"))
    shutil.rmtree(src)
    return Home(home, model.ref, str(n))


def axon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "axon", *args]


def run_axon(home: Home, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        axon_cmd(*args), capture_output=True, text=True, timeout=timeout, env=home.env()
    )


def start_axon(
    home: Home, *args: str, stderr: int | IO[Any] = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """``axon ARGS`` running in the background (stdout discarded; ``stderr`` as given)."""
    return subprocess.Popen(
        axon_cmd(*args), stdout=subprocess.DEVNULL, stderr=stderr, env=home.env(), text=True
    )


# ---- probes: what a target shows of a write in progress ---------------------------------
@dataclass(frozen=True)
class Seen:
    landed: int  # bytes of the new content at the target (not necessarily visible)
    visible: bool  # the new version is what readers see
    building: bool = False  # the target is building the version (probes that can see it)


class Probe:
    """One content being written to one target: ``total`` is what the target lacked when the
    probe was made (what must land), :meth:`seen` what has landed so far (``full``: all of
    it, now; a probe whose looks are slow may otherwise move a step per look)."""

    total = 0

    def seen(self, full: bool = False) -> Seen:
        raise NotImplementedError


def _size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return 0


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a manifest: it changes when a new version is swapped in."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_mtime_ns)


def _blobs(manifest: Manifest) -> dict[str, int]:
    """sha256 -> size of each distinct content of ``manifest``."""
    return {f.sha256: f.size for f in manifest.files}


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


class _Stages:
    """The staging dirs of one write: named ``prefix...`` in ``parent``, new since made. A
    staging dir renamed into place at ``final`` (same inode) still holds the write's bytes
    and is looked at there; a name that comes to hold another dir (an exchange put the old
    version there) is not."""

    def __init__(self, parent: Path, prefix: str, final: Path) -> None:
        self.parent, self.prefix, self.final = parent, prefix, final
        self.old = {d for d in _listdir(parent) if d.startswith(prefix)}
        self.inodes: dict[str, int] = {}  # staging dir name -> its inode when first seen

    def dirs(self) -> list[Path]:
        out = []
        for name in _listdir(self.parent):
            if not name.startswith(self.prefix) or name in self.old:
                continue
            ino = _inode(self.parent / name)
            if ino is not None and self.inodes.setdefault(name, ino) == ino:
                out.append(self.parent / name)
        if _inode(self.final) in self.inodes.values():
            out.append(self.final)
        return out


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except (FileNotFoundError, NotADirectoryError):
        return None


class StagedDirProbe(Probe):
    """A models root written through the staged-directory protocol (filesystem, NFS, SSH,
    shared dirs): bytes land in ``.<version>.staging-<d16>/`` (``.axon-partial/<sha256>``,
    then each file's path); the version is visible once that dir is swapped in. Files the
    current version holds already are hard-linked, not sent: they are not counted."""

    def __init__(self, root: Path, ref: ModelRef, manifest: Manifest) -> None:
        final = root / ref.relpath
        self.manifest_path = final / MANIFEST_NAME
        held: set[str] = set()
        if self.manifest_path.is_file():
            held = {f.sha256 for f in Manifest.load(self.manifest_path).files}
        self.needed = {s: n for s, n in _blobs(manifest).items() if s not in held}
        self.paths = {s: [f.path for f in manifest.files if f.sha256 == s] for s in self.needed}
        self.total = sum(self.needed.values())
        self.stages = _Stages(final.parent, sibling_prefix(final.name, STAGING_TAG), final)
        self.before = _identity(self.manifest_path)

    def seen(self, full: bool = False) -> Seen:
        got = dict.fromkeys(self.needed, 0)
        for stage in self.stages.dirs():
            for sha, size in self.needed.items():
                here = [_size(stage / PARTIAL_DIR / sha)]
                here += [_size(stage / p) for p in self.paths[sha]]
                got[sha] = max(got[sha], min(max(here), size))
        now = _identity(self.manifest_path)
        return Seen(sum(got.values()), now is not None and now != self.before)


class ServerProbe(Probe):
    """An mlos-core models dir written over HTTP: bytes land in ``.mlos/partial/<sha256>``
    (the shared partial dir: a server without tenants), a complete blob moves to
    ``.mlos/blobs/sha256/``; the version is visible once the server swaps its staged dir
    in. Blobs the server holds already are not counted. While a new ``.mlos/staging/<id>/``
    is there, the server is building the version."""

    def __init__(self, models_dir: Path, ref: ModelRef, manifest: Manifest) -> None:
        state = models_dir / STATE_DIR
        self.blob_dir, self.partial_dir = state / BLOBS_DIR, state / PARTIAL_BLOBS_DIR
        self.staging_dir = state / STAGING_DIR
        self.old_stages = set(_listdir(self.staging_dir))
        self.manifest_path = models_dir / ref.relpath / MANIFEST_NAME
        blobs = _blobs(manifest)
        self.needed = {s: n for s, n in blobs.items() if _size(self._blob(s)) != n}
        self.total = sum(self.needed.values())
        self.before = _identity(self.manifest_path)

    def _blob(self, sha: str) -> Path:
        return self.blob_dir / sha[:2] / sha

    def seen(self, full: bool = False) -> Seen:
        landed = 0
        for sha, size in self.needed.items():
            done = _size(self._blob(sha)) == size
            landed += size if done else min(_size(self.partial_dir / sha), size)
        building = any(
            not d.startswith(ONESHOT_PREFIX) and d not in self.old_stages
            for d in _listdir(self.staging_dir)
        )
        now = _identity(self.manifest_path)
        return Seen(landed, now is not None and now != self.before, building)


class S3Probe(Probe):
    """A bucket prefix: bytes land as blob objects under ``.blobs/sha256/`` (a PUT appears
    whole) or, for blobs of ``multipart`` bytes or more (axon's default threshold), as the
    parts of a multipart upload in progress; the version is visible once ``manifest.yaml``
    changes (its ETag). Blobs the bucket holds already are not counted.

    Looked at with HEAD requests, not listings (a listing of a bucket that grows with every
    trial takes tens of ms on the test server, longer than a commit): axon sends the blobs
    one after the other, in manifest order, so a look asks for the next blob not seen yet
    (``full``: for every one), and for the manifest once every blob is there (axon writes
    it last)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        ref: ModelRef,
        m: Manifest,
        multipart: int = S3Settings.multipart_threshold,
    ) -> None:
        self.client, self.bucket = client, bucket
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.manifest_key = f"{base}{ref.relpath.as_posix()}/{MANIFEST_NAME}"
        self.blob_prefix = f"{base}{S3_BLOBS}/"
        self.needed = {
            f"{self.blob_prefix}{s}": n
            for s, n in _blobs(m).items()
            if self._size(f"{self.blob_prefix}{s}") != n
        }
        self.total = sum(self.needed.values())
        self.multipart = any(n >= multipart for n in self.needed.values())
        self.done: set[str] = set()  # blobs seen whole (a publish never deletes one)
        self.before = self._etag(self.manifest_key)

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            answer: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return answer

    def _size(self, key: str) -> int:
        head = self._head(key)
        return -1 if head is None else int(head["ContentLength"])

    def _etag(self, key: str) -> str:
        head = self._head(key)
        return "" if head is None else str(head["ETag"])

    def _in_parts(self) -> dict[str, int]:
        uploads = self.client.list_multipart_uploads(
            Bucket=self.bucket, Prefix=self.blob_prefix
        ).get("Uploads", [])
        out: dict[str, int] = {}
        for up in uploads:
            if up["Key"] in self.needed:
                parts = self.client.list_parts(
                    Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                ).get("Parts", [])
                out[up["Key"]] = max(out.get(up["Key"], 0), sum(p["Size"] for p in parts))
        return out

    def seen(self, full: bool = False) -> Seen:
        for key, size in self.needed.items():
            if key in self.done:
                continue
            if self._size(key) != size:
                break  # the blob being sent now (the ones after it are not there yet)
            self.done.add(key)
            if not full:
                break  # one step per look: a walk would trail the sender to the end
        landed = sum(self.needed[k] for k in self.done)
        if self.multipart:
            parts = self._in_parts()
            landed += sum(
                min(parts.get(k, 0), n) for k, n in self.needed.items() if k not in self.done
            )
        visible = False
        if len(self.done) == len(self.needed):
            etag = self._etag(self.manifest_key)
            visible = bool(etag) and etag != self.before
        return Seen(landed, visible)


class CacheProbe(Probe):
    """``axon install`` into a cache: the files are copied into a new hidden
    ``.install.staging-<id>/`` under the cache's models dir, which becomes the model dir in
    one rename. ``files``: relative path -> size of what the source holds."""

    def __init__(self, models_dir: Path, ref: ModelRef, files: Mapping[str, int]) -> None:
        self.files = dict(files)
        self.total = sum(self.files.values())
        final = models_dir / ref.relpath
        self.manifest_path = final / MANIFEST_NAME
        self.stages = _Stages(models_dir, sibling_prefix("install", STAGING_TAG), final)
        self.before = _identity(self.manifest_path)

    def seen(self, full: bool = False) -> Seen:
        landed = 0
        for stage in self.stages.dirs():
            got = sum(min(_size(stage / rel), n) for rel, n in self.files.items())
            landed = max(landed, got)
        now = _identity(self.manifest_path)
        return Seen(landed, now is not None and now != self.before)


class AllOf(Probe):
    """Several targets written by one process (a cluster's members): bytes add up, the new
    version is visible when every member shows it, building while one is building it."""

    def __init__(self, probes: Iterable[Probe]) -> None:
        self.probes = list(probes)
        self.total = sum(p.total for p in self.probes)

    def seen(self, full: bool = False) -> Seen:
        seen = [p.seen(full) for p in self.probes]
        return Seen(
            sum(s.landed for s in seen), all(s.visible for s in seen), any(s.building for s in seen)
        )


def source_sizes(src: Path) -> dict[str, int]:
    """relative path -> size of every file under ``src`` (what an install copies)."""
    out = {}
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            full = Path(dirpath) / name
            out[full.relative_to(src).as_posix()] = full.stat().st_size
    return out


# ---- watching and killing ---------------------------------------------------------------
POLL = 0.0005  # seconds between two looks at a target (commit windows are a few ms)


@dataclass(frozen=True)
class Timeline:
    """When an unkilled run's bytes started landing, had all landed (its commit started),
    was seen building the version (probes that see it), became visible, and when it exited
    (seconds from the start of the watch; None: never seen)."""

    first_byte: float | None
    commit: float | None
    building: float | None
    visible: float | None
    exited: float
    returncode: int

    def startup(self) -> float:
        """How long a kill aimed ``before`` may wait: until the first byte landed."""
        assert self.first_byte is not None, f"the probe never saw a byte land: {self}"
        return self.first_byte

    def commit_window(self, *, build: bool = False) -> float:
        """How long the commit took: from its start (``build``: from when the version was
        seen being built) until the version was visible."""
        begin = self.building if build else self.commit
        if begin is None or self.visible is None:
            return 0.0
        return max(0.0, self.visible - begin)


def watch(proc: subprocess.Popen[Any], probe: Probe, *, timeout: float = 300) -> Timeline:
    """Look at ``probe`` while ``proc`` runs to its end (a calibration run: no kill)."""
    start = time.monotonic()
    first = commit = building = visible = None
    while proc.poll() is None:
        seen = probe.seen()
        elapsed = time.monotonic() - start
        if first is None and seen.landed > 0:
            first = elapsed
        if commit is None and probe.total and seen.landed >= probe.total:
            commit = elapsed
        if building is None and seen.building:
            building = elapsed
        if visible is None and seen.visible:
            visible = elapsed
        if elapsed > timeout:
            proc.kill()
            raise AssertionError(f"still running after {timeout} s")
        time.sleep(POLL)
    return Timeline(first, commit, building, visible, time.monotonic() - start, proc.returncode)


def calibrate(home: Home, args: list[str], probe: Probe) -> Timeline:
    """Run ``axon ARGS`` to its end while watching ``probe``, no kill: the timeline the kills
    of the same kind of write are aimed with. The run must succeed."""
    with tempfile.TemporaryFile("w+") as err:
        proc = start_axon(home, *args, stderr=err)
        timeline = watch(proc, probe)
        err.seek(0)
        assert timeline.returncode == 0, f"axon {' '.join(args)} failed: {err.read()} {timeline}"
    return timeline


@dataclass(frozen=True)
class Victim:
    """The process a kill is for: ``stop`` freezes it (SIGSTOP: the point where it is killed
    is looked at while nothing moves it on), ``kill`` sends SIGKILL and answers whether
    that signal is what ended it (False: it had exited already)."""

    name: str
    stop: Callable[[], None]
    kill: Callable[[], bool]


def process_victim(proc: subprocess.Popen[Any], name: str = "axon") -> Victim:
    def kill() -> bool:
        proc.kill()  # no signal once it is reaped: its pid cannot have been reused
        proc.wait(timeout=30)
        return proc.returncode == -signal.SIGKILL

    return Victim(name, lambda: proc.send_signal(signal.SIGSTOP), kill)


@dataclass(frozen=True)
class Kill:
    """Where one kill landed (see the module docstring)."""

    want: str
    phase: str
    landed: int  # bytes landed when the victim was frozen, just before the signal
    total: int
    elapsed: float  # seconds from the start of the watch to the signal
    landed_after: int  # bytes landed at a look after it (requests in flight may land)
    building: bool = False  # the target was building the version (probes that see it)

    def __str__(self) -> str:
        building = ", the version being built" if self.building else ""
        return (
            f"kill aimed at {self.want}, landed {self.phase} after {self.elapsed:.3f} s "
            f"({self.landed}/{self.total} bytes landed{building}, "
            f"{self.landed_after} after the kill)"
        )


def landing(seen: Seen, total: int) -> str:
    if seen.visible:
        return "after"
    if seen.landed == 0:
        return "before"
    return "transfer" if seen.landed < total else "commit"


def kill_on_progress(
    victim: Victim,
    driver: subprocess.Popen[Any],
    probe: Probe,
    want: str,
    rng: random.Random,
    *,
    timeline: Timeline,
    build: bool = False,
    timeout: float = 300,
) -> Kill:
    """SIGKILL ``victim`` when ``probe`` shows the point ``want`` (:data:`PHASES`) of the
    write ``driver`` (a running process: the victim itself, or a client of it) is doing.
    ``timeline``: a calibration run of the same write (:func:`watch`).

    ``before``: at a random moment in the first 20-90 % of the calibration's start-up (until
    its first byte landed), or as soon as a byte lands; ``transfer``: once a random 5-95 %
    of the bytes landed; ``commit``: once all have (``build``: and the target is seen
    building the version), plus a random 0-50 % of what the calibration took from that
    point until visible. Every kind stops waiting when
    the new version shows up. Returns where the kill landed; ``exited`` when ``driver``
    ended first (then nothing is killed)."""
    assert want in PHASES, want
    total = probe.total
    assert total > 0, "the target holds this content already: nothing would be in flight"
    deadline = rng.uniform(0.2, 0.9) * timeline.startup()
    threshold = max(1, int(rng.uniform(0.05, 0.95) * total))
    into_commit = rng.uniform(0.0, 0.5) * timeline.commit_window(build=build)
    committing: float | None = None  # when the commit point was first seen
    start = time.monotonic()
    while True:
        seen = probe.seen()
        elapsed = time.monotonic() - start
        if seen.visible:
            break
        if want == "before" and (seen.landed > 0 or elapsed >= deadline):
            break
        if want == "transfer" and seen.landed >= threshold:
            break
        if want == "commit" and seen.landed >= total and (seen.building or not build):
            committing = elapsed if committing is None else committing
            if elapsed - committing >= into_commit:
                break
        if driver.poll() is not None:
            return Kill(want, "exited", seen.landed, total, elapsed, seen.landed)
        if elapsed > timeout:
            victim.kill()
            raise AssertionError(f"{victim.name}: no {want} point after {timeout} s ({seen})")
        time.sleep(POLL)
    victim.stop()
    seen = probe.seen(full=True)  # where it is frozen: where the kill lands
    killed = victim.kill()
    after = probe.seen(full=True).landed
    phase = landing(seen, total) if killed else "exited"
    return Kill(want, phase, seen.landed, total, elapsed, after, seen.building)


def kill_trials(
    trials: int,
    attempts: int,
    attempt: Callable[[int, str], Kill],
    *,
    after_trial: Callable[[], None] | None = None,
) -> list[Kill]:
    """Trial ``t`` aims at ``PHASES[t % 3]``: ``attempt(t, phase)`` kills one run at that
    phase, checks what it left and returns the :class:`Kill`; it is called again until a
    kill lands in the phase aimed at, at most ``attempts`` times. ``after_trial`` runs
    after each trial. The kills, in order."""
    kills: list[Kill] = []
    for trial in range(trials):
        want = PHASES[trial % len(PHASES)]
        for _attempt in range(attempts):
            kill = attempt(trial, want)
            kills.append(kill)
            if kill.phase == want:
                break
        if after_trial is not None:
            after_trial()
    return kills


def published(home: Home) -> dict[str, str]:
    """What a target holds of ``home``'s model once published: every file but axon's own
    (``.axon*``)."""
    return {k: v for k, v in home.content().items() if not k.startswith(".axon")}


def rerun_replaces(
    current: Home,
    home: Home,
    args: Iterable[str],
    content: Callable[[], dict[str, str]],
    where: str,
) -> Home:
    """The killed publish of ``home`` (``args``), run again, completes and the target holds
    exactly its content (``content()`` reads what the target holds); ``current``, the home
    it replaced, is removed. Returns ``home``: the current one now."""
    rerun = run_axon(home, *args)
    assert rerun.returncode == 0, f"{where}: re-run failed: {rerun.stderr}"
    assert content() == published(home)
    shutil.rmtree(current.path)
    return home


def tally_kills(kills: Iterable[Kill]) -> dict[str, int]:
    """Kills per landing, every landing named (zeros too) in :data:`LANDINGS` order."""
    counts = dict.fromkeys(LANDINGS, 0)
    for kill in kills:
        counts[kill.phase] += 1
    return counts


def transfer_points(kills: Iterable[Kill]) -> str:
    """Where the kills that landed in ``transfer`` hit, in % of the bytes: ``"<1%,12%,50%"``."""
    points = sorted(100 * k.landed // k.total for k in kills if k.phase == "transfer")
    return ",".join(f"{p}%" if p else "<1%" for p in points) or "none"


def billion_laughs(levels: int = 9) -> str:
    """A ~700-byte manifest whose nested aliases expand to 10**levels strings."""
    lines = ["apiVersion: v1", "kind: Model", "x0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\nspec: {format: {files: []}}\n"
