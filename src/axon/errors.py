"""Every error axon raises, in one place.

The errors of the model package contract (references, manifests, integrity, moving bytes)
live in :mod:`modelpkg.errors`, shared with mlos-core; this module re-exports them and adds
the client's own. ``AxonError`` is the client's name for their common base.

Hierarchy::

    AxonError (= modelpkg.errors.PackageError)
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
    ├── InterruptedPublish                        Ctrl-C while an instance was receiving
    └── OptionError (ValueError)                  option values that contradict (exit 2)

The CLI maps each class to an exit code (``exit_code``, documented in docs/exit-codes.md)
and prints ``str(error)``; tracebacks only with ``AXON_DEBUG=1`` or ``--debug``.
"""

from __future__ import annotations

from typing import Any

from modelpkg.errors import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_INTEGRITY,
    EXIT_INVALID,
    EXIT_TRANSPORT,
    AuthenticationError,
    BucketNotFoundError,
    ConfigError,
    IntegrityError,
    InvalidReferenceError,
    ManifestError,
    NoSpaceError,
    PackageError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
    TransportError,
)

AxonError = PackageError

# Exit codes of the axon command line, documented in docs/exit-codes.md (stable: scripts
# depend on them). 1, 4, 5, 6 and 7 belong to the shared errors (modelpkg.errors).
EXIT_OK = 0
EXIT_USAGE = 2  # bad command line (click's own code)
EXIT_NOT_FOUND = 3  # model or target not found
EXIT_NOT_NOTIFIED = 8  # files published but an instance was not notified
EXIT_PARTIAL = 9  # some targets of a cluster/storage publish failed
EXIT_ALL_FAILED = 10  # every target of a publish failed
EXIT_DISCOVERY = 11  # service discovery failed
EXIT_INTERRUPTED = 130  # Ctrl-C


def retryable(exc: AxonError, value: bool) -> AxonError:
    """``exc``, telling the publish orchestrator whether a new attempt can help."""
    exc.retryable = value
    return exc


class ModelNotFoundError(AxonError, FileNotFoundError):
    exit_code = EXIT_NOT_FOUND


class SourceError(AxonError, ValueError):
    exit_code = EXIT_INVALID


class UnsafeArchiveError(SourceError):
    pass


class TargetNotFoundError(ConfigError, LookupError):
    exit_code = EXIT_NOT_FOUND

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


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


__all__ = [
    "EXIT_ALL_FAILED",
    "EXIT_CONFIG",
    "EXIT_DISCOVERY",
    "EXIT_ERROR",
    "EXIT_INTEGRITY",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_NOTIFIED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_TRANSPORT",
    "EXIT_USAGE",
    "AuthenticationError",
    "AxonError",
    "BucketNotFoundError",
    "ConfigError",
    "DiscoveryError",
    "IntegrityError",
    "InterruptedPublish",
    "InvalidReferenceError",
    "ManifestError",
    "ModelNotFoundError",
    "NoSpaceError",
    "NotifyError",
    "OptionError",
    "PublishError",
    "RemoteError",
    "SourceError",
    "TargetNotFoundError",
    "TargetPermissionError",
    "TargetUnreachableError",
    "TransportError",
    "UnsafeArchiveError",
    "retryable",
]
