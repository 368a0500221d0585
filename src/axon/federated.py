"""Federated evaluation: one model evaluated where the data is, only aggregates collected.

``mlos federated evaluate MODEL --target CLUSTER``: every participant (a member of the
cluster, static or discovered, or one instance) evaluates the same build of MODEL on a
dataset it holds (``POST /v1/models/{id}/evaluate``, docs/inference.md) and answers only
its example count, its metrics and the time taken. The aggregate of each metric is the
example-weighted mean over the participants that answered, as in Flower's evaluate round
(``sum(n_i * m_i) / sum(n_i)``), which is the metric over all their examples together.

First, every participant's manifest digest is read (``GET /v1/models/{id}/manifest``). The
build evaluated is the local cache's when it holds MODEL (what ``axon publish`` sends and
``axon promote`` pins), else the one every holder agrees on, else the one most participants
hold; a tie evaluates nothing and names the groups. A participant holding another build, or
none, is named and left out (``strict``: nothing is evaluated). A participant's evaluation
answer names the build it ran: one that changed in between is left out too.

The outcome follows a cluster publish: enough participants answered (all, or
``min_success``) -> exit 0; some but not enough -> 9; none -> 10.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from axon.config import Config, load_config
from axon.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_PARTIAL, AxonError, OptionError
from axon.mlos_client import Invalid, MlosClient, quote_id, shown
from axon.publish.members import cluster_members
from axon.publish.options import parse_min_success
from axon.targets import ClusterTarget, InstanceTarget, resolve_target
from modelpkg.refs import ModelRef

METRICS = ("accuracy", "loss", "mse", "mae")
DEFAULT_EVAL_TIMEOUT = 600.0  # seconds one participant may take to evaluate
_SHA256 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


@dataclass
class Participant:
    """One participant's part: its build, and its answer or its error."""

    name: str
    endpoint: str
    build: str | None = None  # manifest sha256 of the model it holds
    examples: int = 0
    metrics: dict[str, float | None] = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None
    left_out: str | None = None  # why it was not evaluated (another build, no model)

    @property
    def ok(self) -> bool:
        return self.error is None and self.left_out is None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "endpoint": self.endpoint,
            "ok": self.ok,
            "build": self.build,
        }
        if self.ok:
            data.update(examples=self.examples, metrics=self.metrics, seconds=self.seconds)
        else:
            data["error"] = self.left_out or self.error
            data["left_out"] = self.left_out is not None
        return data


@dataclass
class Evaluation:
    """The result of a federated evaluation."""

    model: str
    target: str
    dataset: str | None
    build: str | None
    participants: list[Participant]
    required: int
    chosen: str = "all"  # how the build was chosen: cache, all, majority, tie, none
    aggregate: dict[str, float | None] = field(default_factory=dict)
    examples: int = 0

    @property
    def answered(self) -> list[Participant]:
        return [p for p in self.participants if p.ok]

    @property
    def left_out(self) -> list[Participant]:
        return [p for p in self.participants if p.left_out is not None]

    @property
    def failed(self) -> list[Participant]:
        return [p for p in self.participants if p.error is not None and p.left_out is None]

    @property
    def exit_code(self) -> int:
        n = len(self.answered)
        if n >= self.required and n > 0:
            return EXIT_OK
        return EXIT_PARTIAL if n else EXIT_ALL_FAILED

    @property
    def outcome(self) -> str:
        return {EXIT_OK: "ok", EXIT_PARTIAL: "partial"}.get(self.exit_code, "failed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "dataset": self.dataset,
            "build": self.build,
            "build_chosen_by": self.chosen,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "required": self.required,
            "participants": [p.to_dict() for p in self.participants],
            "aggregate": {
                "participants": len(self.answered),
                "examples": self.examples,
                "metrics": self.aggregate,
            },
        }


def weighted_mean(parts: list[tuple[int, float | None]]) -> float | None:
    """``sum(n_i * m_i) / sum(n_i)`` over the parts with a value; None when none has one."""
    pairs = [(n, v) for n, v in parts if v is not None and n > 0]
    total = sum(n for n, _ in pairs)
    if not total:
        return None
    return math.fsum(n * v for n, v in pairs) / total


def aggregate(participants: list[Participant], metrics: list[str]) -> dict[str, float | None]:
    return {
        m: weighted_mean([(p.examples, p.metrics.get(m)) for p in participants if p.ok])
        for m in metrics
    }


def participants_of(target: ClusterTarget | InstanceTarget) -> list[InstanceTarget]:
    if isinstance(target, InstanceTarget):
        return [target]
    return cluster_members(target)


def evaluate(
    model: str,
    target_spec: str,
    *,
    dataset: str | None = None,
    metrics: list[str] | None = None,
    min_success: str | None = None,
    strict: bool = False,
    timeout: float = DEFAULT_EVAL_TIMEOUT,
    config: Config | None = None,
) -> Evaluation:
    """Evaluate ``model`` on every participant of ``target_spec`` (module docstring)."""
    ref = _model_ref(model, config)
    for m in metrics or []:
        if m not in METRICS:
            raise OptionError(f"unknown metric {m!r}", hint=f"use one of {', '.join(METRICS)}")
    config = config if config is not None else load_config()
    target = resolve_target(target_spec, config)
    if not isinstance(target, ClusterTarget | InstanceTarget):
        raise OptionError(
            f"target {target_spec!r} is storage, not MLOS Core instances: federated evaluation "
            "runs on instances (a cluster, or one instance)",
            hint="name a cluster from 'axon targets list'",
        )
    members = participants_of(target)
    if not members:
        raise OptionError(
            f"cluster {target_spec!r} has no members", hint="check its instances or discovery"
        )
    required = parse_min_success(min_success, len(members))
    parts = [Participant(m.name, m.endpoint) for m in members]
    run = _Parallel(min(16, len(members)))
    run.each(lambda pm: _read_build(pm[0], pm[1], ref, run), list(zip(parts, members, strict=True)))
    cached = _cached_build(ref, config)
    build, chosen = _pick_build(parts, cached)
    for p in parts:
        if p.error is None and p.left_out is None and p.build != build:
            p.left_out = _other_build(ref, p, build, chosen, parts)
    result = Evaluation(ref.id, target_spec, dataset, build, parts, required, chosen)
    if strict and any(not p.ok for p in parts):
        why = "; ".join(f"{p.name} {_why_not(p)}" for p in parts if not p.ok)
        for p in parts:
            if p.ok:
                p.left_out = f"not evaluated: --strict, and {why}"
        return result
    body: dict[str, Any] = {}
    if dataset:
        body["dataset"] = dataset
    if metrics:
        body["metrics"] = metrics
    todo = [(p, m) for p, m in zip(parts, members, strict=True) if p.ok]
    run.each(lambda pm: _evaluate_one(pm[0], pm[1], ref, body, timeout, build, run), todo)
    names = list(metrics or [])
    if not names:  # the server chose them from the labels: the ones every answer has
        seen = [list(p.metrics) for p in result.answered]
        names = [m for m in METRICS if seen and all(m in s for s in seen)]
    result.aggregate = aggregate(parts, names)
    result.examples = sum(p.examples for p in result.answered)
    return result


class _Parallel:
    """A function over items on at most ``workers`` daemon threads, and the clients they
    open. A Ctrl-C (KeyboardInterrupt in the waiting thread) returns at once: the clients are
    closed, no item starts any more, and the threads, being daemons, do not hold the exit of
    the process (a pool's workers would: the interpreter joins them, so a participant that
    never answers kept ``mlos`` running for up to --timeout)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._clients: set[MlosClient] = set()

    @contextlib.contextmanager
    def client(self, member: InstanceTarget, timeout: float | None = None) -> Iterator[MlosClient]:
        if self.stopped.is_set():
            raise KeyboardInterrupt
        with MlosClient.for_target(member, timeout=timeout) as client:
            with self._lock:
                self._clients.add(client)
            try:
                yield client
            finally:
                with self._lock:
                    self._clients.discard(client)

    def each(self, fn: Callable[[T], None], items: list[T]) -> None:
        """``fn(item)`` for every item; the first exception ``fn`` raised, raised here."""
        todo: queue.SimpleQueue[T] = queue.SimpleQueue()
        for item in items:
            todo.put(item)
        failures: list[BaseException] = []

        def work() -> None:
            while not self.stopped.is_set():
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    fn(item)
                except BaseException as exc:  # a bug: the waiting thread raises it
                    failures.append(exc)

        threads = [
            threading.Thread(target=work, name="mlos-federated", daemon=True)
            for _ in range(min(self.workers, len(items)))
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            self.stop()
            raise
        if failures and not self.stopped.is_set():
            raise failures[0]

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


def _model_ref(model: str, config: Config | None) -> ModelRef:
    """``model`` parsed; a bare name (the seed's ``federated-model@v1.1``) takes the config's
    ``default_namespace``, as in every axon command."""
    namespace = (config if config is not None else load_config()).default_namespace
    return ModelRef.parse(model, default_namespace=namespace)


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def _cached_build(ref: ModelRef, config: Config) -> str | None:
    """The build (manifest digest, as published) of ``ref`` in the local cache, the one
    ``axon publish`` sends and ``axon promote`` pins; None when the cache does not hold it."""
    from axon.cache import Cache
    from axon.publish.promote import cached_digest

    return cached_digest(Cache.from_config(config), ref)


def _pick_build(parts: list[Participant], cached: str | None) -> tuple[str | None, str]:
    """The build to evaluate and how it was chosen: ``cache`` (the local cache holds the
    model: its build, whatever the participants hold), ``all`` (every holder agrees),
    ``majority``, ``tie`` (no build has more holders than another: none is evaluated) or
    ``none`` (no participant holds the model)."""
    if cached is not None:
        return cached, "cache"
    counts = collections.Counter(p.build for p in parts if p.error is None and p.build)
    if not counts:
        return None, "none"
    if len(counts) == 1:
        return next(iter(counts)), "all"
    ranked = counts.most_common()
    if ranked[0][1] == ranked[1][1]:
        return None, "tie"
    return ranked[0][0], "majority"


def _other_build(
    ref: ModelRef, p: Participant, build: str | None, chosen: str, parts: list[Participant]
) -> str:
    """Why ``p``, holding a build other than ``build``, is left out."""
    mine = f"manifest sha256 {_short(p.build)}"
    if chosen == "cache":
        return (
            f"holds another build of {ref} than the local cache's ({mine}, the cache's "
            f"{_short(build)}): publish it to this participant again"
        )
    if chosen == "tie":
        groups: dict[str, list[str]] = {}
        for q in parts:
            if q.error is None and q.build:
                groups.setdefault(q.build, []).append(q.name)
        shown_groups = "; ".join(f"{', '.join(n)}: {_short(d)}" for d, n in groups.items())
        return (
            f"the participants hold different builds of {ref} in equal numbers "
            f"({shown_groups}), so none is the one to evaluate: install the build you mean in "
            "the local cache (then it is the one evaluated) or publish one build to all"
        )
    return (
        f"holds another build of {ref} ({mine}, most participants {_short(build)}): "
        "publish it to this participant again"
    )


def _why_not(p: Participant) -> str:
    """A participant that is not evaluated, in a few words (for --strict's note)."""
    if p.left_out is not None:
        return "is left out: " + p.left_out.split(": ")[0]
    return f"failed: {(p.error or '').removeprefix(f'{p.name}: ')}"


def _read_build(p: Participant, member: InstanceTarget, ref: ModelRef, run: _Parallel) -> None:
    try:
        with run.client(member) as client:
            served, manifest = client.manifest(ref)
    except AxonError as exc:
        p.error = _error_text(exc)
        return
    if not served:
        p.error = (
            f"{member.endpoint} has no GET /v1/models/{{id}}/manifest: it is not an mlos-core "
            "that evaluates models (upgrade it)"
        )
    elif manifest is None:
        p.left_out = f"does not hold {ref}: publish it to this participant"
    else:
        p.build = manifest.digest()


def _evaluate_one(
    p: Participant,
    member: InstanceTarget,
    ref: ModelRef,
    body: dict[str, Any],
    timeout: float,
    build: str | None,
    run: _Parallel,
) -> None:
    path = f"/v1/models/{quote_id(ref.id)}/evaluate"
    what = f"evaluate {ref}"
    content = json.dumps(body).encode()
    try:
        with run.client(member, timeout=max(timeout, member.timeout)) as client:
            answer = client.exchange(
                "POST",
                path,
                what=what,
                ok=(200,),
                content=content,
                headers={"Content-Type": "application/json"},
            )
            parsed = client.parsed(answer, _parse_answer, what=what)
    except AxonError as exc:
        p.error = _error_text(exc)
        return
    examples, metrics, seconds, digest = parsed
    if digest is not None and build is not None and digest != build:
        p.left_out = (
            f"evaluated another build of {ref} (manifest sha256 {_short(digest)}): it was "
            "replaced during the run; evaluate again"
        )
        return
    p.examples, p.metrics, p.seconds = examples, metrics, seconds


def _error_text(exc: AxonError) -> str:
    """``exc`` as one line: a refusal (4xx) carrying the server's own message says what went
    wrong without the generic hint to read the server's log."""
    if exc.status is not None and 400 <= exc.status < 500 and exc.hint == "see the server's log":
        return str(AxonError(exc.message, target=exc.target))
    return str(exc)


def _in_range(metric: str, value: float) -> bool:
    return 0 <= value <= 1 if metric == "accuracy" else value >= 0


def _parse_answer(data: object) -> tuple[int, dict[str, float | None], float, str | None]:
    """An evaluate answer, checked: nothing a server says is trusted."""
    if not isinstance(data, dict) or data.get("status") != "success":
        raise Invalid('it is not an evaluation result ({"status": "success", ...})')
    examples = data.get("examples")
    if type(examples) is not int or examples < 0:
        raise Invalid(f"'examples' is not a count: {shown(examples, 40)}")
    raw = data.get("metrics")
    if not isinstance(raw, dict):
        raise Invalid("'metrics' is not an object")
    metrics: dict[str, float | None] = {}
    for key, value in raw.items():
        if key not in METRICS:
            raise Invalid(f"unknown metric {shown(key, 40)}")
        if value is None:
            metrics[key] = None
        elif type(value) in (int, float) and math.isfinite(value) and _in_range(key, value):
            metrics[key] = float(value)
        else:
            raise Invalid(f"metric {key} is not a possible value: {shown(value, 40)}")
    seconds = data.get("seconds")
    if type(seconds) not in (int, float) or not 0 <= seconds < 1e9:  # type: ignore[operator]
        raise Invalid(f"'seconds' is not a duration: {shown(seconds, 40)}")
    digest = data.get("manifest_sha256")
    if digest is not None and (not isinstance(digest, str) or not _SHA256.fullmatch(digest)):
        raise Invalid(f"'manifest_sha256' is not a sha256: {shown(digest, 80)}")
    return examples, metrics, float(seconds), digest  # type: ignore[arg-type]
