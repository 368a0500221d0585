"""Requests to one model that wait for a free run slot are run together (``--max-batch N``).

Dynamic batching as Triton's dynamic batcher and TorchServe's batching do it: when every run
slot of the pool is busy, the requests that queue for a model are merged, at most
``max_batch`` of them with the same shapes beyond the first axis and the same element types,
into one run (their inputs concatenated along the first axis); its outputs are split back by
each request's rows. Nothing waits for a batch to fill: a request that finds a free slot runs
at once, alone, so an idle server answers as fast as without batching.

Only for graphs whose every input and output has a batch first axis (dynamic, not a fixed
size); and only when the operator asks for it (the default, 1, is off): it is right for models
whose examples are independent along the first axis, which is most served graphs but not all.
A batch whose run fails, or whose outputs do not have the batch's rows, runs its requests one by
one, so each gets its own answer.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlos_core.inference.runtime import OnnxModel

Arrays = dict[str, np.ndarray[Any, Any]]
Outputs = list[np.ndarray[Any, Any]]


@dataclass
class Ran:
    """One request's outputs and what it took: seconds queued, seconds of its run, and how
    many requests that run served."""

    outputs: Outputs
    queued: float
    run: float
    batch: int = 1


@dataclass
class _Waiting:
    feeds: Arrays
    rows: int
    shape_key: tuple[Any, ...]
    future: asyncio.Future[Ran]
    since: float = field(default_factory=time.perf_counter)


def batchable(model: OnnxModel) -> bool:
    """Every input and output has a dynamic first axis."""
    specs = (*model.inputs, *model.outputs)
    return all(s.shape and not isinstance(s.shape[0], int) for s in specs)


class Batcher:
    """The queue of one model's requests; runs go through ``run`` (the inference pool) and
    at most ``slots`` of them at once."""

    def __init__(
        self,
        model: OnnxModel,
        run: Callable[[Callable[[], Outputs]], Awaitable[Outputs]],
        *,
        slots: int,
        max_batch: int,
    ) -> None:
        self.model = model
        self._run = run
        self.slots = max(1, slots)
        self.max_batch = max(1, max_batch)
        self.running = 0
        self.queue: collections.deque[_Waiting] = collections.deque()
        self.batches = 0  # runs that served more than one request
        self._tasks: set[asyncio.Task[None]] = set()

    async def infer(self, feeds: Arrays) -> Ran:
        first = feeds[self.model.inputs[0].name]
        key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))
        waiting = _Waiting(
            feeds, int(first.shape[0]), key, asyncio.get_running_loop().create_future()
        )
        self.queue.append(waiting)
        self._pump()
        return await waiting.future

    def _pump(self) -> None:
        while self.running < self.slots and self.queue:
            head = self.queue.popleft()
            if head.future.done():  # its client went away
                continue
            group = [head]
            kept: collections.deque[_Waiting] = collections.deque()
            while self.queue and len(group) < self.max_batch:
                w = self.queue.popleft()
                if w.future.done():
                    continue
                (group if w.shape_key == head.shape_key else kept).append(w)
            kept.extend(self.queue)
            self.queue = kept
            self.running += 1
            task = asyncio.ensure_future(self._serve(group))
            self._tasks.add(task)  # a task only the loop refers to may be collected mid-run
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, group: list[_Waiting]) -> None:
        try:
            if len(group) > 1:
                try:
                    await self._together(group)
                    return
                except Exception:
                    pass  # each request alone: each gets its own answer or error
            for w in group:
                await self._alone(w)
        finally:
            self.running -= 1
            self._pump()

    async def _alone(self, w: _Waiting) -> None:
        started = time.perf_counter()
        try:
            outputs = await self._run(lambda: self.model.run(w.feeds))
        except Exception as exc:
            if not w.future.done():
                w.future.set_exception(exc)
            return
        if not w.future.done():
            w.future.set_result(Ran(outputs, started - w.since, time.perf_counter() - started))

    async def _together(self, group: list[_Waiting]) -> None:
        names = [i.name for i in self.model.inputs]
        merged = {n: np.concatenate([w.feeds[n] for w in group]) for n in names}
        rows = sum(w.rows for w in group)
        started = time.perf_counter()
        outputs = await self._run(lambda: self.model.run(merged))
        took = time.perf_counter() - started
        if any(o.ndim == 0 or o.shape[0] != rows for o in outputs):
            raise ValueError("outputs without the batch's rows")
        cuts = np.cumsum([w.rows for w in group])[:-1]
        parts = [np.split(o, cuts) for o in outputs]
        self.batches += 1
        for i, w in enumerate(group):
            if not w.future.done():
                mine = [np.ascontiguousarray(p[i]) for p in parts]
                w.future.set_result(Ran(mine, started - w.since, took, len(group)))
