"""Model references: ``namespace/name[@version]``.

Compatible with the upstream Go axon (docs/compatibility.md): split on the first ``/`` for the
namespace, the rest is the name (it may hold more ``/``: ``hf/google/flan-t5``), ``@`` splits
the version, no ``@`` means ``latest``. A reference maps to the directory
``<ns>/<name...>/<version>`` under a models root, so every segment is checked: nothing can
escape that root.

A bare name (``federated-model@v1.0``, as the seed writes it) has no namespace: where a
default namespace is given (:data:`DEFAULT_NAMESPACE`, ``local``, unless configured
otherwise) it means ``local/federated-model@v1.0``; :func:`parse_request` also says what the
user left out, so the caller can say which namespace it took, or pick the installed version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from modelpkg.errors import InvalidReferenceError

DEFAULT_VERSION = "latest"
#: the namespace of a reference written without one (``federated-model@v1.0``): ``local``,
#: the namespace of models made here rather than pulled from a hub (``--as local/name``)
DEFAULT_NAMESPACE = "local"
MAX_SEGMENT = 128
MAX_REF = 512

# Letters, digits, '.', '_', '-', '+'; must not start with '.' (hidden, '..', our own
# '.mlos' / '.axon' housekeeping dirs) or '-' (looks like an option to remote commands).
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


def check_segment(segment: str, *, what: str, ref: str) -> None:
    """Raise InvalidReferenceError unless ``segment`` is a safe single path component."""
    if segment == "":
        raise InvalidReferenceError(
            f"invalid model reference {ref!r}: empty {what}",
            hint="use namespace/name[@version], e.g. hf/bert-base-uncased@latest",
        )
    bad = next((c for c in segment if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InvalidReferenceError(
            f"invalid model reference {ref!r}: control character {bad!r} in {what}",
            hint="references may use letters, digits, '.', '_', '-' and '+'",
        )
    if segment in (".", ".."):
        raise InvalidReferenceError(
            f"invalid model reference {ref!r}: {what} {segment!r} would leave the models directory",
            hint="remove '.' and '..' segments",
        )
    if len(segment) > MAX_SEGMENT:
        raise InvalidReferenceError(
            f"invalid model reference {ref[:60]!r}...: {what} is {len(segment)} characters long "
            f"(at most {MAX_SEGMENT})",
        )
    if not _SEGMENT.fullmatch(segment):
        raise InvalidReferenceError(
            f"invalid model reference {ref!r}: {what} {segment!r} has characters outside "
            "[A-Za-z0-9._+-] or starts with '.' or '-'",
            hint="references may use letters, digits, '.', '_', '-' and '+'",
        )


@dataclass(frozen=True, order=True)
class ModelRef:
    """A parsed, validated model reference. ``str(ref)`` gives ``ns/name@version``."""

    namespace: str
    name: str
    version: str = DEFAULT_VERSION

    def __post_init__(self) -> None:
        ref = f"{self.namespace}/{self.name}@{self.version}"
        check_segment(self.namespace, what="namespace", ref=ref)
        if "@" in self.name:
            raise InvalidReferenceError(f"invalid model reference {ref!r}: '@' in the name")
        for part in self.name.split("/"):
            check_segment(part, what="name segment", ref=ref)
        check_segment(self.version, what="version", ref=ref)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        default_version: str = DEFAULT_VERSION,
        default_namespace: str | None = None,
    ) -> ModelRef:
        """Parse ``namespace/name[@version]``; raise InvalidReferenceError with a hint.

        ``default_namespace``: the namespace of a bare ``name[@version]`` (without it, a
        reference without a namespace is refused)."""
        return parse_request(
            text, default_version=default_version, default_namespace=default_namespace
        ).ref

    @classmethod
    def _parse(
        cls, text: str, default_version: str, default_namespace: str | None
    ) -> tuple[ModelRef, bool, bool]:
        """(the reference, was a namespace written, was a version written)."""
        if not isinstance(text, str):
            raise InvalidReferenceError(f"invalid model reference {text!r}: not a string")
        if "\x00" in text:
            raise InvalidReferenceError(f"invalid model reference {text!r}: contains NUL")
        if len(text) > MAX_REF:
            raise InvalidReferenceError(
                f"invalid model reference: {len(text)} characters long (at most {MAX_REF})"
            )
        if text.startswith("/"):
            raise InvalidReferenceError(
                f"invalid model reference {text!r}: absolute path",
                hint="use namespace/name[@version], e.g. hf/bert-base-uncased@latest",
            )
        body, sep, version = text.partition("@")
        if sep and "@" in version:
            raise InvalidReferenceError(f"invalid model reference {text!r}: more than one '@'")
        if sep and not version:
            raise InvalidReferenceError(
                f"invalid model reference {text!r}: empty version after '@'",
                hint="drop the '@' for 'latest', or give a version such as @v1",
            )
        namespace, slash, name = body.partition("/")
        if not slash:
            if default_namespace is None or not body:
                raise InvalidReferenceError(
                    f"invalid model reference {text!r}: missing namespace",
                    hint="use namespace/name[@version], e.g. hf/bert-base-uncased@latest",
                )
            namespace, name = default_namespace, body
        ref = cls(namespace, name, version if sep else default_version)
        return ref, bool(slash), bool(sep)

    @classmethod
    def from_parts(cls, parts: tuple[str, ...] | list[str]) -> ModelRef:
        """Build from directory parts ``(ns, *name, version)`` (upstream listing rule)."""
        if len(parts) < 3:
            raise InvalidReferenceError(f"not a model directory: {'/'.join(parts)!r}")
        return cls(parts[0], "/".join(parts[1:-1]), parts[-1])

    @property
    def parts(self) -> tuple[str, ...]:
        return (self.namespace, *self.name.split("/"), self.version)

    @property
    def relpath(self) -> PurePosixPath:
        """``ns/name/version``: where the model lives under any models root."""
        return PurePosixPath(*self.parts)

    @property
    def id(self) -> str:
        """The MLOS Core model id, ``ns/name@version``."""
        return f"{self.namespace}/{self.name}@{self.version}"

    @property
    def archive_name(self) -> str:
        """Upstream's ``<ns>-<name>-<ver>.axon`` with ``/`` replaced by ``_``."""
        return f"{self.namespace}-{self.name}-{self.version}".replace("/", "_") + ".axon"

    def with_version(self, version: str) -> ModelRef:
        return ModelRef(self.namespace, self.name, version)

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class RefRequest:
    """A reference as the user wrote it: the reference it means, and what was left out
    (the namespace: the default one was taken; the version: ``latest`` was assumed)."""

    text: str
    ref: ModelRef
    namespace_given: bool
    version_given: bool


def parse_request(
    text: str,
    *,
    default_namespace: str | None = DEFAULT_NAMESPACE,
    default_version: str = DEFAULT_VERSION,
) -> RefRequest:
    """Parse ``[namespace/]name[@version]`` (a bare name takes ``default_namespace``; None
    refuses it); InvalidReferenceError with a hint."""
    ref, namespace_given, version_given = ModelRef._parse(text, default_version, default_namespace)
    return RefRequest(text, ref, namespace_given, version_given)
