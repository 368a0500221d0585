"""mlos-core killed with SIGKILL at observed points of uploads, then restarted; and several
publishers of one model racing each other while a reader reads it.

Kills are aimed, in turn, before the first byte of an upload lands on the server, at a
random fraction of its bytes in ``.mlos/partial``, or once every blob is whole and the
server is building and swapping in the version (:func:`~tests.stress.harness.kill_on_progress`
with a :class:`~tests.stress.harness.ServerProbe`). The publisher must then end by itself,
with exit 7 and a message naming the server (or 0 when the server answered first); after
the restart the previous version (or the new one) is whole, leftovers are cleaned, and the
publish re-runs cleanly. In a race one complete version wins, and a reader reading the model
dir and the HTTP API all the while only ever sees whole versions; each round starts from a
third content, so that reader reads across at least one swap.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from modelpkg.layout import is_leftover
from modelpkg.manifest import Manifest
from tests.fixtures.mlos import Server, ServerFactory
from tests.stress.checkers import (
    check_fs_root,
    check_registered,
    check_served,
    read_model_dir,
    tree_digest,
    which_version,
)
from tests.stress.figures import record, scale, tally
from tests.stress.harness import (
    PHASES,
    Home,
    Kill,
    MiB,
    ServerProbe,
    Victim,
    calibrate,
    kill_on_progress,
    kill_trials,
    make_home,
    make_homes,
    published,
    rerun_replaces,
    run_axon,
    start_axon,
    tally_kills,
    transfer_points,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REF = "hf/crash@v1"
TRIALS = scale(3, 12)  # each aimed at PHASES[trial % 3]
ATTEMPTS = 4  # kills per trial at most, until one lands in the phase aimed at


def _content(models_dir: Path) -> dict[str, str]:
    digest = tree_digest(models_dir / "hf" / "crash" / "v1")
    return {k: v for k, v in digest.items() if k != "manifest.yaml"}


def _leftovers(models_dir: Path) -> list[str]:
    staging = models_dir / ".mlos" / "staging"
    found = [str(p) for p in staging.iterdir()] if staging.is_dir() else []
    for dirpath, dirs, _files in os.walk(models_dir):
        dirs[:] = [d for d in dirs if d != ".mlos"]
        found += [os.path.join(dirpath, d) for d in dirs if is_leftover(d)]
    return found


def _server_victim(srv: Server) -> Victim:
    def stop() -> None:
        if srv.running:
            os.kill(srv.pid, signal.SIGSTOP)

    def kill() -> bool:
        alive = srv.running
        srv.kill()
        return alive

    return Victim(f"mlos-core at {srv.url}", stop, kill)


def test_kill_9_of_mlos_core_mid_upload(mlos_server: ServerFactory, tmp_path: Path) -> None:
    srv = mlos_server(no_fsync=False)
    args = ["publish", REF, "-t", srv.url, "-q", "--retries", "0", "--timeout", "10"]
    weights = scale(4 * MiB, 16 * MiB)
    count = 0

    def new_home() -> Home:
        nonlocal count
        count += 1
        return make_home(tmp_path, REF, count, weights)

    current = new_home()
    calibration = calibrate(
        current, args, ServerProbe(srv.models_dir, current.ref, current.manifest())
    )
    rng = random.Random(88)
    exits: dict[str, int] = {}
    partial: list[str] = []

    def attempt(trial: int, want: str) -> Kill:
        nonlocal current
        home = new_home()
        probe = ServerProbe(srv.models_dir, home.ref, home.manifest())
        proc = start_axon(home, *args, stderr=subprocess.PIPE)
        kill = kill_on_progress(
            _server_victim(srv), proc, probe, want, rng, timeline=calibration, build=True
        )
        where = f"trial {trial}, {kill}"
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{where}: the publisher hung after the server died")
        code = proc.returncode
        if kill.phase == "exited":  # the publish was done before the point: no kill
            assert code == 0, f"{where}: publisher exit {code}: {err}"
        else:  # exit 7 naming the server, or 0 when the server answered before it died
            exits[str(code)] = exits.get(str(code), 0) + 1
            assert code in (0, 7), f"{where}: publisher exit {code}: {err}"
            if code:
                assert srv.url in err and "Traceback" not in err, f"{where}: unclear error: {err}"
            srv.start()
        n, problems = check_fs_root(srv.models_dir)
        problems += check_registered(srv.url, srv.models_dir)
        partial.extend(f"{where}: {p}" for p in problems)
        if n != 1:  # the old model or the new one, always exactly one
            partial.append(f"{where}: {n} models visible")
        if _content(srv.models_dir) not in (published(current), published(home)):
            partial.append(f"{where}: neither the old nor the new content")
        assert _leftovers(srv.models_dir) == [], f"trial {trial}: leftovers after restart"
        current = rerun_replaces(current, home, args, lambda: _content(srv.models_dir), where)
        return kill

    kills = kill_trials(TRIALS, ATTEMPTS, attempt)
    counts = tally_kills(kills)
    tally("kill_server", "phases", counts)
    tally("kill_server", "publisher_exits", exits)
    record("kill_server", "transfer_kills_at", transfer_points(kills))
    commits = [k for k in kills if k.phase == "commit"]
    building = sum(k.building for k in commits)
    record("kill_server", "commit_kills_while_building", f"{building}/{len(commits)}")
    record("kill_server", "trials", TRIALS)
    record("kill_server", "partial_models_seen", len(partial), add=True)
    assert partial == [], f"a reader saw {len(partial)} partial/mixed model(s): {partial}"
    missing = [p for p in PHASES if counts[p] == 0]
    assert not missing, f"no kill landed in {missing} in {ATTEMPTS} tries: {kills}"


class Reader(threading.Thread):
    """Reads one model again and again until stopped, and once more after: on disk through
    the checkers' whole-model check (one directory fd per read), and over the HTTP API (the
    manifest served and the registry entry). Every read must be exactly one of
    ``versions``. ``ready`` is set once the first read is done."""

    def __init__(
        self, model_dir: Path, url: str, model_id: str, versions: dict[str, Manifest]
    ) -> None:
        super().__init__(name="model-reader", daemon=True)
        self.model_dir, self.url, self.model_id = model_dir, url, model_id
        self.versions = versions
        self.halt, self.ready = threading.Event(), threading.Event()
        self.disk_reads = self.http_reads = self.gaps = 0
        self.disk_seen: list[str] = []  # the versions disk reads saw, in order
        self.http_seen: list[str] = []  # and HTTP reads
        self.problems: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=10) as client:
                while True:
                    last = self.halt.is_set()  # one more read after the race: its end state
                    self._read_disk()
                    label, problems = check_served(client, self.model_id, self.versions)
                    self.http_reads += 1
                    self.problems += [f"over HTTP: {p}" for p in problems]
                    _note(self.http_seen, label)
                    self.ready.set()
                    if last:
                        break
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.ready.set()

    def _read_disk(self) -> None:
        manifest, problems = read_model_dir(self.model_dir)
        self.disk_reads += 1
        self.problems += problems
        if manifest is None:
            self.gaps += problems == []  # between two renames (no RENAME_EXCHANGE): no dir
            return
        label = which_version(manifest, self.versions)
        if label is None:
            self.problems.append(f"{self.model_dir}: a whole model of no published version")
        _note(self.disk_seen, label)

    @property
    def swaps(self) -> tuple[int, int]:
        """Changes of version seen between two reads: on disk, over HTTP."""
        return max(0, len(self.disk_seen) - 1), max(0, len(self.http_seen) - 1)


def _note(seen: list[str], label: str | None) -> None:
    if label is not None and (not seen or seen[-1] != label):
        seen.append(label)


@pytest.mark.parametrize("kind", ["api", "filesystem"])
def test_concurrent_publishers_one_complete_version_wins(
    kind: str, mlos_server: ServerFactory, tmp_path: Path
) -> None:
    weights = scale(2 * MiB, 8 * MiB)
    a, b = make_homes(tmp_path, REF, weights)
    c = make_home(tmp_path, REF, 0, weights)  # each round starts from c: a or b must win
    srv = mlos_server(no_fsync=True)
    if kind == "api":
        target = srv.url
    else:
        target = "inst"
        conf = {
            "endpoint": srv.url,
            "access_method": "filesystem",
            "storage_path": str(srv.models_dir),
        }
        for home in (a, b, c):
            home.write_config({"inst": conf})
    args = ["publish", REF, "-t", target, "-q"]
    versions = {"a": a.manifest(), "b": b.manifest(), "c": c.manifest()}
    model_dir = srv.models_dir / "hf" / "crash" / "v1"
    rounds, racers = scale(1, 5), scale(3, 8)
    disk_reads = http_reads = disk_swaps = http_swaps = gaps = 0
    problems: list[str] = []
    exits: dict[str, int] = {}
    for _ in range(rounds):
        first = run_axon(c, *args)  # the model is there, as neither racer's content
        assert first.returncode == 0, first.stderr
        reader = Reader(model_dir, srv.url, a.ref.id, versions)
        reader.start()
        assert reader.ready.wait(60), "the reader did not read"
        procs = [start_axon((b, a)[i % 2], *args, stderr=subprocess.PIPE) for i in range(racers)]
        try:
            codes = [p.wait(timeout=300) for p in procs]
        finally:
            reader.halt.set()
            reader.join(timeout=60)
        assert reader.error is None, f"the reader failed: {reader.error!r}"
        errors = [p.stderr.read() if p.stderr else "" for p in procs]
        assert 0 in codes, errors
        for code in codes:
            exits[str(code)] = exits.get(str(code), 0) + 1
        n, found = check_fs_root(srv.models_dir)
        found += check_registered(srv.url, srv.models_dir)
        assert found == [] and n == 1, found
        assert _content(srv.models_dir) in (published(a), published(b))
        # the reader read c first and a or b last: it read across at least one swap
        assert reader.swaps[0] >= 1 and reader.swaps[1] >= 1, (
            f"the reader saw no swap: {reader.disk_seen} {reader.http_seen}"
        )
        disk_reads += reader.disk_reads
        http_reads += reader.http_reads
        disk_swaps += reader.swaps[0]
        http_swaps += reader.swaps[1]
        gaps += reader.gaps
        problems += reader.problems
    record("concurrent_publishers", f"{kind}_rounds", rounds)
    record("concurrent_publishers", "racers_per_round", racers)
    tally("concurrent_publishers", f"{kind}_racer_exits", exits)
    record("concurrent_publishers", f"{kind}_reads", f"disk:{disk_reads},http:{http_reads}")
    record("concurrent_publishers", f"{kind}_swaps_seen", f"disk:{disk_swaps},http:{http_swaps}")
    record("concurrent_publishers", f"{kind}_gaps_seen", gaps)
    record("concurrent_publishers", "partial_views_seen", len(problems), add=True)
    assert problems == [], f"a reader saw {len(problems)} partial/mixed view(s): {problems[:20]}"
