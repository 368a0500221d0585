"""Model signatures over HTTP: the instance's signing policy, and who signed a model.

``GET /v1/signing[?namespace=NS]``: whether this instance takes only signed models, and for
``NS`` whether one is required and the public keys / CA certificates trusted for it (public
material only). axon asks before it copies a model over the filesystem or SSH, so an unsigned
or wrongly signed model fails before a byte is sent. Reads are open, like ``GET /models``.

``GET /v1/models/{id}``: the model's registration record, with ``signer`` (as checked when it
was made visible; ``null`` when its namespace needs no signature) and ``signature_required``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from mlos_core.errors import BadRequest
from mlos_core.http.errors import JSONAnswer
from mlos_core.http.request import core_of
from modelpkg.errors import PackageError
from modelpkg.refs import ModelRef


async def signing_policy(request: Request) -> JSONAnswer:
    core = core_of(request)
    namespace = request.query_params.get("namespace")
    if namespace is not None:
        try:
            ModelRef.parse(f"{namespace}/x@v")
        except PackageError as exc:
            raise BadRequest(f"namespace {namespace[:80]!r}: {exc}", code="invalid_id") from exc
    return JSONAnswer(core.trust.describe(namespace))


async def model_record(request: Request) -> JSONAnswer:
    core = core_of(request)
    ref = core.parse_ref(request.path_params["model_id"])
    entry = core.get_entry(ref)
    data = entry.to_dict()
    return JSONAnswer(
        {
            **data,
            "status": "success",
            "model_status": entry.status,
            "signature_required": core.trust.required(ref.namespace),
            "model": data,
        }
    )


ROUTES = [
    Route("/v1/signing", signing_policy, methods=["GET"]),
    Route("/v1/models/{model_id:path}", model_record, methods=["GET"]),
]
