"""Telling an MLOS Core instance about a model: ``POST /models/register`` (COMPAT.md).

Used after a filesystem, SSH or NFS copy (an API upload registers on commit) and by
``axon register``. Only a 200 is success; a body saying "already registered" counts as
success too, as upstream's tests treat it. A failure is a :class:`NotifyError` (exit 8):
the files are published, the instance just was not told.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axon.errors import AxonError, NotifyError
from modelpkg.manifest import MANIFEST_NAME, Manifest
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.targets import InstanceTarget
    from axon.transports.api import ApiClient

NOTIFY_TIMEOUT = 10.0


def register_payload(
    ref: ModelRef, instance_path: str | None, manifest: Manifest | None = None
) -> dict[str, Any]:
    """The COMPAT.md register body; ``path`` is the model directory as the instance sees it."""
    payload: dict[str, Any] = {"model_id": ref.id, "name": ref.name}
    if manifest is not None:
        for key, value in (
            ("framework", manifest.framework),
            ("execution_format", manifest.execution_format),
            ("description", manifest.metadata.get("description")),
        ):
            if value:
                payload[key] = str(value)
    if instance_path:
        path = instance_path.rstrip("/")
        payload["path"] = path
        payload["manifest_path"] = f"{path}/{MANIFEST_NAME}"
    return payload


def _client(target: InstanceTarget, timeout: float | None) -> ApiClient:
    from axon.transports.api import ApiClient, _env_token

    token = getattr(target, "token", None) or _env_token(target)
    limit = timeout or min(float(getattr(target, "timeout", None) or NOTIFY_TIMEOUT), 30.0)
    return ApiClient(target.endpoint, token=token, timeout=limit, name=target.name)


def notify_instance(
    target: InstanceTarget,
    ref: ModelRef,
    instance_path: str | None,
    *,
    manifest: Manifest | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """``POST /models/register`` on ``target``; NotifyError (exit 8) when it fails."""
    client = _client(target, timeout)
    try:
        resp = client.request(
            "POST",
            "/models/register",
            what=f"register {ref}",
            ok=(200, 201, 400, 409, 500),
            json=register_payload(ref, instance_path, manifest),
        )
    except AxonError as exc:
        raise _not_notified(target, ref, exc.message) from exc
    finally:
        client.close()
    try:
        body = resp.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if resp.status_code in (200, 201):
        return body
    message = str(body.get("message") or resp.reason_phrase)
    if "already registered" in message.lower():
        return body
    raise _not_notified(target, ref, f"{target.endpoint} answered {resp.status_code}: {message}")


def _not_notified(target: InstanceTarget, ref: ModelRef, why: str) -> NotifyError:
    return NotifyError(
        f"{ref} was published but the instance was not notified: {why}",
        target=target.name,
        url=f"{target.endpoint.rstrip('/')}/models/register",
        hint=f"once the instance is up run: axon register {ref} --target {target.name}",
    )


def is_registered(target: InstanceTarget, ref: ModelRef, *, timeout: float | None = None) -> bool:
    """``GET /models/{id}`` answers 200: the instance has ``ref`` registered."""
    from axon.transports.api import quote_id

    client = _client(target, timeout)
    try:
        resp = client.request(
            "GET", f"/models/{quote_id(ref.id)}", what=f"status of {ref}", ok=(200, 404)
        )
    finally:
        client.close()
    return resp.status_code == 200
