"""Running models over HTTP: the upstream ``POST /models/{id}/inference``, and our
``POST /v1/models/{id}/load`` (load now, answer the signature) and
``POST /v1/models/{id}/evaluate`` (aggregates over a dataset the instance holds).

Inference answers in the upstream shape (docs/inference.md)::

    {"status": "success", "model_id": ..., "model_version": ..., "message": ...,
     "inference_time_us": ..., "queue_time_us": ..., "output_size": ...,
     "input_shapes": {...}, "output_shapes": {...}, "outputs": {...}}

``outputs`` (each output by name, as nested lists) only with ``?include_outputs=true``.
With tokens, running or evaluating a model needs a token whose tenant owns its namespace,
and a dataset ``ns/name`` one whose tenant owns ``ns``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlos_core.core import Core
from mlos_core.errors import (
    BadRequest,
    Conflict,
    CoreError,
    Forbidden,
    NotFound,
    NotSupported,
    Unprocessable,
)
from mlos_core.http.errors import JSONAnswer
from mlos_core.http.request import core_of, json_body
from modelpkg.manifest import MANIFEST_NAME, Manifest
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from mlos_core.inference.sessions import Sessions

try:
    import orjson as _orjson  # the inference extra brings it
except ImportError:  # pragma: no cover - the answers are then written by json
    _orjson = None  # type: ignore[assignment]

TRUE = ("1", "true", "yes")
log = logging.getLogger("mlos_core.inference")


def sessions_of(request: Request) -> Sessions:
    """The app's loaded models, made on first use."""
    state = request.app.state
    sessions: Sessions | None = getattr(state, "inference", None)
    if sessions is None:
        try:  # numpy and onnxruntime come with the inference extra, imported on first use
            import onnxruntime  # noqa: F401

            from mlos_core.inference.sessions import Sessions, default_threads
        except ImportError as exc:
            raise NotSupported(
                f"this instance has no inference runtime ({exc}): install it with "
                "pip install 'axon-publish[inference]' and restart mlos-core",
                code="no_runtime",
            ) from None
        settings = state.settings
        sessions = Sessions(
            core_of(request),
            max_loaded=settings.max_loaded_models,
            threads=settings.inference_threads or default_threads(),
            max_batch=settings.max_batch,
        )
        state.inference = sessions
    return sessions


def forget(request: Request, model_id: str) -> None:
    """A deleted model's session goes at once."""
    sessions: Sessions | None = getattr(request.app.state, "inference", None)
    if sessions is not None:
        sessions.forget(model_id)


def may_read(core: Core, request: Request, namespace: str, what: str) -> None:
    """With tokens: Unauthorized / Forbidden unless the tenant owns ``namespace`` or may
    read it (``read_namespaces``)."""
    if not core.tenants.enabled:
        return
    tenant = core.tenants.authenticate(request.headers.get("authorization"))
    if not tenant.may_read(namespace):
        raise Forbidden(f"tenant {tenant.name!r} may not {what} of namespace {namespace!r}")


async def inference(request: Request, model_id: str) -> Response:
    """``POST /models/{id}/inference``: named tensors in, the model's outputs out."""
    core = core_of(request)
    ref = core.parse_ref(model_id)
    may_read(core, request, ref.namespace, "run the models")
    entry = core.get_entry(ref)
    body = await json_body(request)
    sessions = sessions_of(request)
    model = await sessions.model(entry)
    feeds = model.feeds(body)
    ran = await sessions.infer(model, feeds)
    outputs = ran.outputs
    named = list(zip(model.output_names, outputs, strict=True))
    answer: dict[str, Any] = {
        "status": "success",
        "model_id": entry.id,
        "model_version": ref.version,
        "message": "Inference completed successfully",
        "inference_time_us": round(ran.run * 1e6),
        "queue_time_us": round(ran.queued * 1e6),
        "batch_size": ran.batch,  # requests served by the run (--max-batch)
        "output_size": int(sum(o.size for o in outputs)),
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        "output_shapes": {n: list(o.shape) for n, o in named},
    }
    if request.query_params.get("include_outputs", "").lower() in TRUE:
        answer["outputs"] = dict(named)
    return _answer(answer)


def _answer(answer: dict[str, Any]) -> Response:
    """``answer`` as JSON, its arrays written by orjson when it is installed (float32s in their
    shortest form: 10x faster and half the bytes of ``tolist()`` + json); NaN and infinities,
    which JSON has not, are null either way."""
    if _orjson is not None:
        try:
            content = _orjson.dumps(answer, option=_orjson.OPT_SERIALIZE_NUMPY)
            return Response(content, media_type="application/json")
        except _orjson.JSONEncodeError:
            pass  # an array orjson does not write (strings, non-contiguous): the slow way
    if "outputs" in answer:
        answer = {**answer, "outputs": {n: _plain(o) for n, o in answer["outputs"].items()}}
    return JSONAnswer(answer)


def _plain(arr: Any) -> Any:
    """An output as nested lists; NaN and infinities as null."""
    if arr.dtype.kind == "f" and not bool(_isfinite(arr)):
        return _nulls(arr.tolist())
    return arr.tolist()


def _isfinite(arr: Any) -> Any:
    import numpy as np

    return np.isfinite(arr).all()


def _nulls(value: Any) -> Any:
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return value if isinstance(value, float) and math.isfinite(value) else None


async def load_model(request: Request) -> JSONAnswer:
    """``POST /v1/models/{id}/load``: load the session now (not at the first inference);
    answers what the model takes and gives."""
    core = core_of(request)
    ref = core.parse_ref(request.path_params["model_id"])
    may_read(core, request, ref.namespace, "load the models")
    entry = core.get_entry(ref)
    sessions = sessions_of(request)
    model = await sessions.model(entry)
    return JSONAnswer(
        {
            "status": "success",
            "model_id": entry.id,
            "load_seconds": round(model.load_seconds, 3),
            **model.signature(),
            "loaded": sessions.loaded_ids(),  # least recently used first
        }
    )


async def preload(request: Request, ref: ModelRef) -> dict[str, Any]:
    """``"load": true`` in a registration: the session loaded now. What the registration
    answer gains: ``loaded`` (the inputs and outputs), or ``load_error`` (the model stays
    registered; a format without a runtime, a graph that does not load)."""
    core = core_of(request)
    try:
        entry = core.get_entry(ref)
        model = await sessions_of(request).model(entry)
    except CoreError as exc:
        return {"load_error": exc.message}
    return {"loaded": model.signature()}


async def evaluate(request: Request) -> JSONAnswer:
    """``POST /v1/models/{id}/evaluate`` ``{"dataset": NAME, "metrics": [...]}``: only
    aggregates answer (docs/inference.md)."""
    core = core_of(request)
    settings = core.settings
    ref = core.parse_ref(request.path_params["model_id"])
    may_read(core, request, ref.namespace, "evaluate the models")
    body = await json_body(request)
    sessions = sessions_of(request)  # NotSupported without the runtime
    from mlos_core.inference import evaluate as ev
    from mlos_core.inference.runtime import identity

    unknown = sorted(set(body) - {"dataset", "metrics"})
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}: evaluate takes 'dataset' and 'metrics'",
            code="bad_request",
        )
    namespace, name = ev.parse_dataset_name(body.get("dataset") or f"{ref.namespace}/{ref.name}")
    shown = f"{namespace}/{name}" if namespace else name
    if core.tenants.enabled:
        tenant = core.tenants.authenticate(request.headers.get("authorization"))
        if namespace is None and not tenant.owns_every_namespace:
            raise Forbidden(
                f"tenant {tenant.name!r} may not read dataset {shown!r}: a dataset outside a "
                "namespace needs a tenant owning every namespace; use a dataset "
                "'<your-namespace>/<name>'",
            )
        if namespace is not None and not tenant.owns(namespace):
            raise Forbidden(
                f"tenant {tenant.name!r} may not read dataset {shown!r} of namespace {namespace!r}",
            )
    metrics = ev.parse_metrics(body.get("metrics"))
    root = settings.datasets_dir
    if root is None:
        raise NotFound(
            "this instance holds no datasets (start mlos-core with --datasets-dir DIR)",
            code="unknown_dataset",
        )
    directory = ev.dataset_dir(root, namespace, name)
    entry = core.get_entry(ref)
    model = await sessions.model(entry)
    digest = await asyncio.to_thread(_manifest_digest, Path(entry.path))
    plan = await asyncio.to_thread(ev.plan, model, directory, shown, metrics)
    least = settings.min_eval_examples
    if plan.examples < least:
        raise Unprocessable(
            f"dataset {shown!r} has {plan.examples} example(s), fewer than this instance's "
            f"--min-eval-examples {least}: it reports on no fewer (an aggregate of a few "
            "examples gives them away)",
            code="too_few_examples",
        )
    log.info(
        "evaluating %s on dataset %s: %d examples in %d file(s), %d at a time",
        ref.id,
        shown,
        plan.examples,
        len(plan.files),
        plan.rows_per_batch,
    )
    loop = asyncio.get_running_loop()

    def run_batch(feeds: Any) -> Any:  # from the evaluation's thread, into the pool
        done = asyncio.run_coroutine_threadsafe(sessions.run(lambda: model.run_raw(feeds)), loop)
        return done.result()

    sums, seconds = await asyncio.to_thread(ev.evaluate, model, plan, run_batch)
    try:
        same = identity(Path(entry.path), model.rel) == model.identity
    except OSError:
        same = False
    if not same:
        raise Conflict(
            f"model {ref.id} was replaced during the evaluation; nothing is reported "
            "(run it again)",
            code="model_replaced",
        )
    values = sums.result(plan.metrics)
    return JSONAnswer(
        {
            "status": "success",
            "model_id": entry.id,
            "dataset": shown,
            "examples": sums.examples,
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in values.items()},
            "seconds": round(seconds, 4),
            "manifest_sha256": digest,
        }
    )


def _manifest_digest(model_dir: Path) -> str | None:
    try:
        return Manifest.load(model_dir / MANIFEST_NAME).digest()
    except Exception:
        return None


ROUTES = [
    Route("/v1/models/{model_id:path}/load", load_model, methods=["POST"]),
    Route("/v1/models/{model_id:path}/evaluate", evaluate, methods=["POST"]),
]
