"""Every error axon raises, in one place.

Each error says *what* failed, *where* (target, path, url, key) and *what to do next*
(``hint``). Each is also the matching standard exception, so callers that only know the
standard library can still catch them (``except FileNotFoundError`` catches
``ModelNotFoundError``).

Hierarchy::

    AxonError
    ├── InvalidReferenceError (ValueError)        a bad ``namespace/name@version``
    ├── ModelNotFoundError (FileNotFoundError)    not in the cache
    ├── ManifestError (ValueError)                manifest.yaml unreadable or invalid
    ├── SourceError (ValueError)                  an install source that cannot be used
    │   └── UnsafeArchiveError                    an archive entry that would escape
    ├── IntegrityError (ValueError)               checksum / size / missing / extra files
    ├── ConfigError (ValueError)                  ~/.axon/config.yaml problems
    │   └── TargetNotFoundError (LookupError)     --target names nothing we know
    ├── TransportError (OSError)                  moving bytes to a target failed
    │   ├── TargetUnreachableError (ConnectionError)
    │   ├── AuthenticationError (PermissionError) refused credentials / token
    │   ├── TargetPermissionError (PermissionError)
    │   ├── NoSpaceError                          ENOSPC / 507 on the target
    │   └── RemoteError                           the target answered with an error
    │       └── BucketNotFoundError (FileNotFoundError)  an S3 bucket that does not exist
    ├── NotifyError                               files published, instance not told
    ├── DiscoveryError (ConnectionError)          service discovery failed
    ├── PublishError                              some targets of a publish failed
    └── OptionError (ValueError)                  option values that contradict (exit 2)

The CLI maps each class to an exit code (``exit_code`` below, documented in the README)
and prints ``str(error)``; tracebacks only with ``AXON_DEBUG=1`` or ``--debug``.
"""

from __future__ import annotations

from typing import Any

# Exit codes, documented in README.md ("Exit codes"). Stable: scripts depend on them.
EXIT_OK = 0
EXIT_ERROR = 1  # unexpected error (a bug: please report it with AXON_DEBUG=1 output)
EXIT_USAGE = 2  # bad command line (click's own code)
EXIT_NOT_FOUND = 3  # model or target not found
EXIT_INVALID = 4  # invalid input: reference, manifest, source, archive
EXIT_INTEGRITY = 5  # checksum, size, missing or extra files
EXIT_CONFIG = 6  # config file problem
EXIT_TRANSPORT = 7  # target unreachable, refused credentials, no space, permission denied
EXIT_NOT_NOTIFIED = 8  # files published but an instance was not notified
EXIT_PARTIAL = 9  # some targets of a cluster/storage publish failed
EXIT_ALL_FAILED = 10  # every target of a publish failed
EXIT_DISCOVERY = 11  # service discovery failed
EXIT_INTERRUPTED = 130  # Ctrl-C


class AxonError(Exception):
    """Base of every axon error.

    ``message`` says what failed; ``hint`` says what to do next. Structured fields
    (``target``, ``path``, ``url``, ``status``) are kept for programs and ``--json``.
    """

    exit_code = EXIT_ERROR
    #: may a new attempt (re-open + resume) succeed? None: decided by the error's type
    #: (:func:`axon.publish.instance.is_transient`); set by a transport that knows better
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


def retryable(exc: AxonError, value: bool) -> AxonError:
    """``exc``, telling the publish orchestrator whether a new attempt can help."""
    exc.retryable = value
    return exc


class InvalidReferenceError(AxonError, ValueError):
    exit_code = EXIT_INVALID


class ModelNotFoundError(AxonError, FileNotFoundError):
    exit_code = EXIT_NOT_FOUND


class ManifestError(AxonError, ValueError):
    """A manifest that cannot be read or does not validate.

    ``path`` is the manifest file, ``field`` the dotted key (``spec.format.files[2].sha256``).
    """

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, field: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.field = field

    def __str__(self) -> str:
        where = self.path or "manifest"
        if self.field:
            where += f": {self.field}"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class SourceError(AxonError, ValueError):
    exit_code = EXIT_INVALID


class UnsafeArchiveError(SourceError):
    pass


class IntegrityError(AxonError, ValueError):
    """Files that do not match their manifest. ``problems`` lists each one."""

    exit_code = EXIT_INTEGRITY

    def __init__(self, message: str, *, problems: list[str] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.problems = problems or []

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["problems"] = self.problems
        return data


class ConfigError(AxonError, ValueError):
    """A config file problem; ``path`` is the file, ``key`` the dotted key."""

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, *, key: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.key = key

    def __str__(self) -> str:
        where = self.path or "config"
        if self.key:
            where += f": {self.key}"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class TargetNotFoundError(ConfigError, LookupError):
    exit_code = EXIT_NOT_FOUND

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class TransportError(AxonError, OSError):
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


class NotifyError(AxonError):
    exit_code = EXIT_NOT_NOTIFIED


class DiscoveryError(AxonError, ConnectionError):
    exit_code = EXIT_DISCOVERY


class PublishError(AxonError):
    """Some (or all) targets of a multi-target publish failed; ``result`` holds the details."""

    exit_code = EXIT_PARTIAL

    def __init__(self, message: str, *, result: Any = None, all_failed: bool = False, **kw: Any):
        super().__init__(message, **kw)
        self.result = result
        if all_failed:
            self.exit_code = EXIT_ALL_FAILED


class InterruptedPublish(AxonError):
    """The user interrupted (Ctrl-C) while this instance was still receiving: it stopped at
    its next chunk. What it received is kept, so running the publish again resumes."""

    exit_code = EXIT_INTERRUPTED
    retryable = False


class OptionError(AxonError, ValueError):
    """Option values the library cannot act on (``--min-success 0``, ``--atomic`` with
    ``--batch-size``): a usage error, exit 2."""

    exit_code = EXIT_USAGE


__all__ = [name for name in dir() if name.endswith("Error") or name.startswith("EXIT_")]
