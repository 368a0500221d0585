"""The loaded models of one instance: sessions cached, bounded, and never stale.

A model's session is loaded on its first inference (or when asked:
``POST /v1/models/{id}/load``) and kept. At most ``--max-loaded-models`` are kept: loading one
more drops the least recently used. A cached session is checked against its version on every
use (two ``stat`` calls: the version directory, which an atomic re-publish renames anew, and
the model file): a replaced model loads its new build, and a request is run by exactly one
build from start to end (it holds the session it started with). Deleted models are dropped at
once when deleted over the API, and otherwise at the next use of the cache.

Sessions run in one thread pool off the event loop, sized to the machine: each session uses
``--inference-threads`` threads, and ``cpus // threads`` runs go at once (more wait their turn;
with ``--max-batch`` the requests waiting for one model run together: :mod:`.batching`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlos_core.core import Core
from mlos_core.errors import NotSupported
from mlos_core.inference.batching import Arrays, Batcher, Outputs, Ran, batchable
from mlos_core.inference.runtime import OnnxModel, find_model_file, identity, runtime_available
from mlos_core.storage.registry import ModelEntry

log = logging.getLogger("mlos_core.inference")

DEFAULT_MAX_LOADED = 4
PRUNE_EVERY = 1.0  # seconds between checks of every cached model (each use checks its own)
T = TypeVar("T")


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass
class _Loaded:
    path: str
    model: OnnxModel


class Sessions:
    """The cache of loaded models of ``core`` (see the module docstring)."""

    def __init__(self, core: Core, *, max_loaded: int, threads: int, max_batch: int = 1) -> None:
        self.core = core
        self.max_batch = max(1, max_batch)
        self.max_loaded = max(1, max_loaded)
        self.threads = max(1, threads)
        self.workers = max(1, default_threads() // self.threads)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="inference"
        )
        self._loaded: collections.OrderedDict[str, _Loaded] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Future[OnnxModel]] = {}
        self._pruned = 0.0
        self.loads = 0
        self.evictions = 0
        self.inferences = 0  # requests answered with outputs
        self.inference_seconds = 0.0  # their run time in the runtime (not the queue)

    def __len__(self) -> int:
        return len(self._loaded)

    def loaded_ids(self) -> list[str]:
        return list(self._loaded)

    async def model(self, entry: ModelEntry) -> OnnxModel:
        """The session of ``entry``'s current build, loaded if needed."""
        self._prune_some()
        cached = self._loaded.get(entry.id)
        if cached is not None and self._current(cached, entry):
            self._loaded.move_to_end(entry.id)
            return cached.model
        if cached is not None:  # replaced or moved: the old build is not served again
            self.forget(entry.id, why="replaced")
        pending = self._loading.get(entry.id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[OnnxModel] = asyncio.get_running_loop().create_future()
        self._loading[entry.id] = future
        try:
            model = await asyncio.to_thread(self._load, entry)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._loading.pop(entry.id, None)
        future.set_result(model)
        self._loaded[entry.id] = _Loaded(entry.path, model)
        self._loaded.move_to_end(entry.id)
        self.loads += 1
        while len(self._loaded) > self.max_loaded:
            old_id, _ = self._loaded.popitem(last=False)
            self.evictions += 1
            log.info("unloaded %s (over --max-loaded-models %d)", old_id, self.max_loaded)
        return model

    def _load(self, entry: ModelEntry) -> OnnxModel:
        if not runtime_available():
            raise NotSupported(
                "this instance has no inference runtime: install onnxruntime (pip install "
                "'axon-publish[inference]') and restart mlos-core",
                code="no_runtime",
            )
        model_dir = Path(entry.path)
        rel = find_model_file(model_dir, entry.id)
        model = OnnxModel(entry.id, model_dir, rel, threads=self.threads)
        log.info("loaded %s (%s) in %.2fs", entry.id, rel, model.load_seconds)
        return model

    def _current(self, cached: _Loaded, entry: ModelEntry) -> bool:
        if cached.path != entry.path:
            return False
        try:
            return identity(Path(entry.path), cached.model.rel) == cached.model.identity
        except OSError:
            return False

    def forget(self, model_id: str, *, why: str = "deleted") -> None:
        """Drop ``model_id``'s session (requests running on it finish on it)."""
        if self._loaded.pop(model_id, None) is not None:
            log.info("unloaded %s (%s)", model_id, why)

    def _prune_some(self) -> None:
        """Every :data:`PRUNE_EVERY` seconds: drop the sessions of models no longer
        registered or whose build changed."""
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        for model_id, cached in list(self._loaded.items()):
            entry = self.core.registry.get(model_id)
            if entry is None:
                self.forget(model_id)
            elif not self._current(cached, entry):
                self.forget(model_id, why="replaced")

    async def infer(self, model: OnnxModel, feeds: Arrays) -> Ran:
        """``model``'s outputs for ``feeds``, run in the pool: with ``--max-batch`` over 1,
        together with other requests queued for the model (:mod:`.batching`)."""
        ran = await self._infer(model, feeds)
        self.inferences += 1
        self.inference_seconds += ran.run
        return ran

    def metrics_text(self) -> str:
        """The inference lines of ``GET /metrics`` (Prometheus text format)."""
        lines = [
            "# HELP mlos_inference_requests_total Inference requests answered.",
            "# TYPE mlos_inference_requests_total counter",
            f"mlos_inference_requests_total {self.inferences}",
            "# HELP mlos_inference_seconds_total Seconds the runtime spent on them.",
            "# TYPE mlos_inference_seconds_total counter",
            f"mlos_inference_seconds_total {self.inference_seconds:.6f}",
            "# HELP mlos_model_loads_total Model sessions loaded.",
            "# TYPE mlos_model_loads_total counter",
            f"mlos_model_loads_total {self.loads}",
            "# HELP mlos_model_evictions_total Sessions dropped for --max-loaded-models.",
            "# TYPE mlos_model_evictions_total counter",
            f"mlos_model_evictions_total {self.evictions}",
            "# HELP mlos_loaded_models Model sessions loaded now.",
            "# TYPE mlos_loaded_models gauge",
            f"mlos_loaded_models {len(self)}",
        ]
        return "\n".join(lines) + "\n"

    async def _infer(self, model: OnnxModel, feeds: Arrays) -> Ran:
        if self.max_batch > 1 and batchable(model):
            batcher: Batcher | None = model.batcher
            if batcher is None:
                batcher = model.batcher = Batcher(
                    model, self.run, slots=self.workers, max_batch=self.max_batch
                )
            return await batcher.infer(feeds)
        queued = time.perf_counter()
        started = 0.0

        def run() -> Outputs:
            nonlocal started
            started = time.perf_counter()
            return model.run(feeds)

        outputs = await self.run(run)
        return Ran(outputs, started - queued, time.perf_counter() - started)

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn`` in the inference pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, fn)

    def close(self) -> None:
        self._loaded.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
