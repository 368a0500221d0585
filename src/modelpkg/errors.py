"""The errors both sides of the model package contract raise, in one place.

Each error says *what* failed, *where* (target, path, url, key) and *what to do next*
(``hint``). Each is also the matching standard exception, so callers that only know the
standard library can still catch them (``except ValueError`` catches ``ManifestError``).

Hierarchy (the client, :mod:`axon.errors`, adds its own below :class:`PackageError`)::

    PackageError
    ├── InvalidReferenceError (ValueError)        a bad ``namespace/name@version``
    ├── ManifestError (ValueError)                manifest.yaml unreadable or invalid
    ├── IntegrityError (ValueError)               checksum / size / missing / extra files
    ├── ConfigError (ValueError)                  a configuration value that cannot be used
    └── TransportError (OSError)                  moving bytes to or from a store failed
        ├── TargetUnreachableError (ConnectionError)
        ├── AuthenticationError (PermissionError) refused credentials / token
        ├── TargetPermissionError (PermissionError)
        ├── NoSpaceError                          ENOSPC / 507 on the target
        └── RemoteError                           the other side answered with an error
            └── BucketNotFoundError (FileNotFoundError)  an S3 bucket that does not exist

Each class carries the exit code the ``axon`` command line ends with for it (stable:
scripts depend on them; the table is in ``docs/exit-codes.md``).
"""

from __future__ import annotations

from typing import Any

# The exit codes of the errors defined here (the axon command line's full table, with the
# codes of its own errors, is in axon.errors and docs/exit-codes.md). Stable: scripts
# depend on them.
EXIT_ERROR = 1  # unexpected error (a bug: please report it with AXON_DEBUG=1 output)
EXIT_INVALID = 4  # invalid input: reference, manifest, source, archive
EXIT_INTEGRITY = 5  # checksum, size, missing or extra files
EXIT_CONFIG = 6  # config file problem
EXIT_TRANSPORT = 7  # target unreachable, refused credentials, no space, permission denied


class PackageError(Exception):
    """Base of every error axon and mlos-core raise.

    ``message`` says what failed; ``hint`` says what to do next. Structured fields
    (``target``, ``path``, ``url``, ``status``) are kept for programs and ``--json``.
    """

    exit_code = EXIT_ERROR
    #: may a new attempt (re-open + resume) succeed? None: decided by the error's type
    #: (the publisher's retry rule); set by a transport that knows better
    retryable: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        target: str | None = None,
        path: str | None = None,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.target = target
        self.path = path
        self.url = url
        self.status = status

    def __str__(self) -> str:
        prefix = (
            f"{self.target}: " if self.target and not self.message.startswith(self.target) else ""
        )
        text = prefix + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the error, for ``--json`` output."""
        data: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        for key in ("hint", "target", "path", "url", "status"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


def _in_file(error: PackageError, kind: str, key: str | None) -> str:
    """``<path, or kind>[: <dotted key>]: <message> (<hint>)``: an error in a file's value."""
    where = error.path or kind
    if key:
        where += f": {key}"
    text = f"{where}: {error.message}"
    if error.hint:
        text += f" ({error.hint})"
    return text


class InvalidReferenceError(PackageError, ValueError):
    exit_code = EXIT_INVALID


class ManifestError(PackageError, ValueError):
    """A manifest that cannot be read or does not validate.

    ``path`` is the manifest file, ``field`` the dotted key (``spec.format.files[2].sha256``).
    """

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, field: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.field = field

    def __str__(self) -> str:
        return _in_file(self, "manifest", self.field)


class IntegrityError(PackageError, ValueError):
    """Files that do not match their manifest. ``problems`` lists each one."""

    exit_code = EXIT_INTEGRITY

    def __init__(self, message: str, *, problems: list[str] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.problems = problems or []

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["problems"] = self.problems
        return data


class ConfigError(PackageError, ValueError):
    """A config file problem; ``path`` is the file, ``key`` the dotted key."""

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, *, key: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.key = key

    def __str__(self) -> str:
        return _in_file(self, "config", self.key)


class TransportError(PackageError, OSError):
    exit_code = EXIT_TRANSPORT


class TargetUnreachableError(TransportError, ConnectionError):
    pass


class AuthenticationError(TransportError, PermissionError):
    pass


class TargetPermissionError(TransportError, PermissionError):
    pass


class NoSpaceError(TransportError):
    pass


class RemoteError(TransportError):
    """The target answered, but with an error (HTTP 4xx/5xx, a failed remote command)."""


class BucketNotFoundError(RemoteError, FileNotFoundError):
    """An object-store target (S3) whose bucket does not exist."""


__all__ = [name for name in dir() if name.endswith("Error") or name.startswith("EXIT_")]
