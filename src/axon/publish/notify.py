"""Telling an MLOS Core instance about a model: ``POST /models/register``.

Used after a filesystem, SSH or NFS copy (an API upload registers on commit) and by
``axon register``; the wire format is :func:`axon.mlos_client.register_payload`
(docs/compatibility.md). A failure is a :class:`~axon.errors.NotifyError` (exit 8): the
files are published, the instance just was not told, and the hint says how to tell it. An
answer no MLOS Core gives is the client's :class:`~axon.mlos_client.ProtocolError` (exit 7)
as it is: the endpoint is not an instance to tell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axon.errors import AxonError, ModelNotFoundError, NotifyError
from axon.mlos_client import MlosClient, ProtocolError
from modelpkg.signing import SignatureError

if TYPE_CHECKING:
    from axon.targets import InstanceTarget
    from modelpkg.manifest import Manifest
    from modelpkg.refs import ModelRef

NOTIFY_TIMEOUT = 10.0  # a target without its own timeout
MAX_NOTIFY_TIMEOUT = 30.0  # a register is small: a slower answer means trouble


def registry_client(target: InstanceTarget, timeout: float | None = None) -> MlosClient:
    """The client for registration calls: ``timeout``, else the target's (at most 30 s)."""
    limit = timeout or min(float(target.timeout or NOTIFY_TIMEOUT), MAX_NOTIFY_TIMEOUT)
    return MlosClient.for_target(target, limit)


def notify_instance(
    target: InstanceTarget,
    ref: ModelRef,
    instance_path: str | None,
    *,
    manifest: Manifest | None = None,
    timeout: float | None = None,
    published: bool = True,
    again: str | None = None,
) -> dict[str, Any]:
    """``POST /models/register`` on ``target``; the answer, or NotifyError (exit 8).

    ``published=False`` (``axon register``: nothing was just published): the messages say
    only what the instance answered, and an instance without the model's files (404) is
    ModelNotFoundError (exit 3) saying to publish it first. ``again``: what to run to tell
    it later (default ``axon register REF --target NAME``)."""
    try:
        with registry_client(target, timeout) as client:
            return client.register(ref, instance_path, manifest)
    except (ProtocolError, SignatureError):
        # not an MLOS Core answering (exit 7), or a model refused for its signature (exit 5):
        # registering again later cannot help
        raise
    except AxonError as exc:
        if not published:
            raise _not_registered(target, ref, exc) from exc
        raise NotifyError(
            f"{ref} was published but the instance was not notified: {exc.message}",
            target=target.name,
            url=f"{target.endpoint.rstrip('/')}/models/register",
            hint=_notify_hint(target, ref, instance_path, exc, again),
        ) from exc


def _notify_hint(
    target: InstanceTarget,
    ref: ModelRef,
    instance_path: str | None,
    exc: AxonError,
    again: str | None,
) -> str:
    """What to do after a failed notification. No answer: tell it once it is up. An answer:
    the refusal's own advice (a 401 says how to send a token), or, for a directory the
    instance does not register from (404), how to make it read that directory."""
    again = again or f"axon register {ref} --target {target.name}"
    status = getattr(exc, "status", None)
    if status is None:
        return f"once the instance is up run: {again}"
    if status == 404 and instance_path:
        path = instance_path.rstrip("/")
        root = path.removesuffix(f"/{ref.relpath}")
        return (
            f"this instance does not read {path}: start it with --register-root {root} "
            f"(or mount that directory as its models dir), then run: {again}"
        )
    if exc.hint:
        return f"{exc.hint}; then run: {again}"
    return f"see the instance's log, then run: {again}"


def _not_registered(target: InstanceTarget, ref: ModelRef, exc: AxonError) -> AxonError:
    """What ``axon register`` says when the instance did not register ``ref``."""
    url = f"{target.endpoint.rstrip('/')}/models/register"
    if getattr(exc, "status", None) == 404:
        return ModelNotFoundError(
            f"{target.name} has no files of {ref} to register: {exc.message}",
            target=target.name,
            url=url,
            hint=f"publish it there first: axon publish {ref} --target {target.name}",
        )
    return NotifyError(
        f"{target.name} did not register {ref}: {exc.message}",
        target=target.name,
        url=url,
        hint=exc.hint  # a refused token says which variable to set
        or f"once the instance is up run again: axon register {ref} --target {target.name}",
    )


def is_registered(target: InstanceTarget, ref: ModelRef, *, timeout: float | None = None) -> bool:
    """``GET /models/{id}`` answers 200: the instance has ``ref`` registered."""
    with registry_client(target, timeout) as client:
        return client.is_registered(ref)


__all__ = ["is_registered", "notify_instance", "registry_client"]
