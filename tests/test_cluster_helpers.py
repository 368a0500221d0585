"""Cluster publishing, the parts that need no server: --min-success arithmetic, option
checks, the round-robin state file, result aggregation and exit codes."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from axon.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, OptionError
from axon.publish import PublishOptions
from axon.publish.cluster import ClusterResult
from axon.publish.options import parse_min_success
from axon.publish.results import FAILED, PUBLISHED, UNUSED, InstanceResult
from axon.publish.rollout import InstanceLine
from axon.publish.round_robin import round_robin_claim, round_robin_record, round_robin_start


@pytest.mark.parametrize(
    ("value", "wanted", "required"),
    [(None, 3, 3), ("2", 3, 2), (1, 3, 1), ("60%", 3, 2), ("100%", 3, 3), ("1%", 10, 1),
     ("66.7%", 3, 3), ("50%", 4, 2), ("50%", 5, 3)],
)  # fmt: skip
def test_min_success_counts_and_percentages(value: object, wanted: int, required: int) -> None:
    assert parse_min_success(value, wanted) == required  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "4", "abc", "0%", "101%", "-1", "%"])
def test_min_success_rejects_impossible_values(value: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_min_success(value, 3)
    assert info.value.exit_code == EXIT_USAGE
    assert "--min-success" in str(info.value)


def test_contradicting_options_are_refused_before_anything_moves() -> None:
    """When the options are built (exit 2); the cluster's own strategy when it is known."""
    with pytest.raises(OptionError, match="cannot be combined") as info:
        PublishOptions(atomic=True, batch_size=2)
    assert info.value.exit_code == EXIT_USAGE
    with pytest.raises(OptionError, match="need strategy 'all'"):
        PublishOptions(batch_size=2, strategy="round-robin")
    with pytest.raises(OptionError, match="need strategy 'all'"):
        PublishOptions(batch_size=2).check("round-robin")  # the cluster's strategy
    with pytest.raises(OptionError, match="unknown cluster strategy"):
        PublishOptions(strategy="random")
    with pytest.raises(OptionError, match="must be at least 1"):
        PublishOptions(max_parallel=0)
    with pytest.raises(OptionError, match="neither a count nor a percentage"):
        PublishOptions(min_success="most")
    PublishOptions(atomic=True).check("all")  # fine


def test_cluster_options_are_publish_options_fields() -> None:
    opts = PublishOptions(
        atomic=True, strategy="all", max_parallel=3, min_success="2", fail_fast=True
    )
    assert (opts.strategy, opts.max_parallel, opts.fail_fast, opts.min_success, opts.atomic) == (
        "all",
        3,
        True,
        "2",
        True,
    )
    assert PublishOptions(s3={"part_size": 5 << 20}).s3 == {"part_size": 5 << 20}
    with pytest.raises(TypeError):  # no catch-all: every option is a field
        PublishOptions(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(OptionError, match="unknown S3 setting"):
        PublishOptions(s3={"part_sise": 1})
    from axon.cli.publish_cmds import build_options

    cli = build_options(fail_fast=True, min_success="50%", batch_size=2, atomic=False)
    assert (cli.fail_fast, cli.min_success, cli.batch_size, cli.atomic) == (True, "50%", 2, False)
    assert (cli.strategy, cli.max_parallel, cli.s3) == (None, None, None)  # the cluster's own
    timed = build_options(timeout=3.0)
    assert (timed.timeout, timed.override_timeout) == (3.0, True)


def test_round_robin_position_persists_per_cluster(axon_home: Path) -> None:
    assert round_robin_start("prod", 3) == 0
    round_robin_record("prod", 0, 3, "core-1")
    round_robin_record("edge", 1, 2, "edge-2")
    assert round_robin_start("prod", 3) == 1
    assert round_robin_start("edge", 2) == 0  # wraps
    round_robin_record("prod", 2, 3, "core-3")
    assert round_robin_start("prod", 3) == 0
    state = json.loads((axon_home / "state" / "round-robin.json").read_text())
    assert state["clusters"]["prod"]["last"] == "core-3"
    assert not list((axon_home / "state").glob(".*tmp*")), "atomic write left a temp file"


def test_round_robin_survives_a_damaged_state_file(axon_home: Path) -> None:
    path = axon_home / "state" / "round-robin.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert round_robin_start("prod", 3) == 0
    round_robin_record("prod", 1, 3, "b")
    assert json.loads(path.read_text())["clusters"]["prod"]["next"] == 2


def test_round_robin_records_from_many_threads_stay_valid_json(axon_home: Path) -> None:
    def record(i: int) -> None:
        round_robin_record(f"c{i % 4}", i, 100, f"m{i}")

    threads = [threading.Thread(target=record, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = json.loads((axon_home / "state" / "round-robin.json").read_text())
    assert sorted(state["clusters"]) == ["c0", "c1", "c2", "c3"]


def test_concurrent_round_robin_publishes_start_at_different_members(axon_home: Path) -> None:
    """Claiming a start and moving the position past it is one locked step: six concurrent
    publishes to a 3-member cluster start at each member twice."""
    starts: list[int] = []
    lock = threading.Lock()

    def claim() -> None:
        got = round_robin_claim("prod", 3)
        with lock:
            starts.append(got)

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(starts) == [0, 0, 1, 1, 2, 2]


def test_round_robin_record_keeps_a_later_claim(axon_home: Path) -> None:
    first = round_robin_claim("prod", 3)  # 0; position now 1
    second = round_robin_claim("prod", 3)  # 1; position now 2
    round_robin_record("prod", 2, 3, "core-3", claimed=second)  # member 1 was down: 2 took it
    assert round_robin_start("prod", 3) == 0
    round_robin_record("prod", first, 3, "core-1", claimed=first)  # late: someone claimed since
    assert round_robin_start("prod", 3) == 0


def _result(name: str, ok: bool) -> InstanceResult:
    return InstanceResult(
        target=name,
        method="api",
        location=f"http://{name}",
        path=None,
        ok=ok,
        error=None if ok else {"type": "RemoteError", "message": "refused", "hint": "fix it"},
    )


def test_exit_codes_partial_all_failed_and_quorum() -> None:
    def cluster(states: dict[str, str], required: int) -> ClusterResult:
        results = [_result(n, s == PUBLISHED) for n, s in states.items()]
        return ClusterResult("prod", "all", results, states, required, len(states))

    ok = cluster({"a": PUBLISHED, "b": PUBLISHED}, 2)
    assert (ok.exit_code, ok.outcome, ok.succeeded) == (EXIT_OK, "ok", 2)
    partial = cluster({"a": PUBLISHED, "b": FAILED}, 2)
    assert (partial.exit_code, partial.outcome) == (EXIT_PARTIAL, "partial")
    quorum = cluster({"a": PUBLISHED, "b": FAILED, "c": PUBLISHED}, 2)
    assert (quorum.exit_code, quorum.outcome, quorum.ok) == (EXIT_OK, "partial", True)
    none = cluster({"a": FAILED, "b": FAILED}, 1)
    assert (none.exit_code, none.outcome) == (EXIT_ALL_FAILED, "failed")
    text = partial.summary()
    assert "succeeded 1/2" in text and "b: refused (fix it)" in text
    data = partial.to_dict()
    assert [i["state"] for i in data["instances"]] == [PUBLISHED, FAILED]
    assert data["exit_code"] == EXIT_PARTIAL and data["succeeded"] == 1


def test_summary_marks_unused_members_without_calling_them_failures() -> None:
    states = {"a": FAILED, "b": PUBLISHED, "c": UNUSED}
    results = [_result("a", False), _result("b", True), _result("c", False)]
    res = ClusterResult("prod", "first-available", results, states, 1, 1)
    assert res.ok and res.exit_code == EXIT_OK
    lines = res.lines()
    assert any(line.text.strip() == "unused  c" and not line.error for line in lines)
    assert [r.target for r in res.failures] == ["a"]


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        self.events.append(("begin", key, total))

    def advance(self, key: str, nbytes: int) -> None:
        self.events.append(("advance", key, nbytes))

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        self.events.append(("end", key, ok))

    def message(self, text: str) -> None:
        self.events.append(("message", text, None))


def test_instance_line_folds_file_tasks_into_one_line_never_past_total() -> None:
    rec = _Recorder()
    line = InstanceLine(rec, "core-1", 100)
    line.start("core-1 (api)")
    line.begin("core-1:a.bin", "a.bin", 60)
    line.advance("core-1:a.bin", 60)
    line.end("core-1:a.bin")
    line.advance("core-1:b.bin", 70)  # a resumed file may re-report bytes
    line.message("retrying")
    line.finish(ok=True)
    keys = {key for kind, key, _ in rec.events if kind in ("begin", "advance", "end")}
    assert keys == {"core-1"}
    assert sum(int(n) for kind, _, n in rec.events if kind == "advance") == 100  # type: ignore[call-overload]
    assert ("message", "core-1: retrying", None) in rec.events


def test_members_listed_twice_are_published_once() -> None:
    from axon.publish.members import cluster_members
    from axon.targets import ClusterTarget, InstanceTarget

    a = InstanceTarget("a", "http://127.0.0.1:1")
    a_again = InstanceTarget("a", "http://127.0.0.1:1/")
    fs1 = InstanceTarget("fs1", "http://localhost:8080", "filesystem", storage_path="/m1")
    fs2 = InstanceTarget("fs2", "http://localhost:8080", "filesystem", storage_path="/m2")
    got = cluster_members(ClusterTarget("c", [a, a_again, fs1, fs2]))
    assert [m.name for m in got] == ["a", "fs1", "fs2"]


def test_a_cluster_without_members_is_a_config_error(installed_model: Any) -> None:
    from axon.cache import Cache
    from axon.errors import ConfigError
    from axon.publish import prepare_model
    from axon.publish.cluster import publish_to_cluster
    from axon.targets import ClusterTarget

    model = prepare_model(Cache.from_config(), installed_model)
    with pytest.raises(ConfigError, match="has no instances"):
        publish_to_cluster(model, ClusterTarget("empty"), PublishOptions())


def test_interrupted_parallel_map_releases_what_already_returned() -> None:
    """Ctrl-C while --atomic stages: the staged publishes that did return are released
    (their connections closed), the ones still running are told to stop."""
    from axon.publish.rollout import parallel_map
    from axon.targets import InstanceTarget

    a, b = (InstanceTarget(n, f"http://127.0.0.1:{p}") for n, p in (("a", 9), ("b", 10)))
    a_done = threading.Event()
    cancel = threading.Event()
    released: list[str] = []

    def stage(target: InstanceTarget) -> str:
        if target.name == "a":
            a_done.set()
            return "staged-a"
        a_done.wait(5)
        raise KeyboardInterrupt  # as the main thread would see Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        parallel_map([a, b], stage, 2, cancel, release=released.append)
    assert released == ["staged-a"] and cancel.is_set()
