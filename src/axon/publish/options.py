"""The options of a publish: the one contract between the CLI and the library.

Every ``axon publish`` flag lands on a typed field of :class:`PublishOptions` (as twine's
``Settings``), and the values that cannot work together are refused when it is built
(:class:`~axon.errors.OptionError`, exit 2), before any target is resolved or any byte is
hashed. What depends on the target is checked again with the target in hand, with the same
messages: a cluster's own strategy (:meth:`PublishOptions.check`) and the number of members
a ``--min-success`` count may not exceed (:func:`parse_min_success`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from axon.config import STRATEGIES
from axon.errors import OptionError


@dataclass
class PublishOptions:
    """Every knob of a publish, to an instance, a cluster or network storage."""

    validate: bool = True  # manifest + every sha256 checked before anything is sent
    notify: bool = True  # POST /models/register after a filesystem/SSH/NFS copy
    dry_run: bool = False  # plan only, change nothing
    retries: int = 5  # re-open + resume this many times on transient failures
    timeout: float = 30.0  # per network operation, seconds
    override_timeout: bool = False  # True: ``timeout`` replaces each target's own timeout
    full_verify: bool = False  # re-hash every file even when the hash index knows it
    backoff: float = 0.5  # first retry delay, doubling up to max_backoff
    max_backoff: float = 8.0
    # cluster targets (axon.publish.cluster)
    atomic: bool = False  # stage on every member, then commit everywhere or nowhere
    strategy: str | None = None  # overrides the cluster's own strategy
    max_parallel: int | None = None  # default: the cluster's, else min(16, members)
    fail_fast: bool = False  # the first failure cancels every member not started yet
    min_success: str | int | None = None  # successes needed: N or "P%"; default: all targeted
    batch_size: int | None = None  # rolling: members per batch, each verified before the next
    relay: bool | None = None  # members pull from members (docs/relay.md); None: the cluster's
    # network storage: instances told besides its notify_instances (--notify-instance)
    notify_instances: tuple[str, ...] = ()
    # network storage (axon.publish.storage): S3 multipart tuning by S3Settings field name;
    # the values are checked where the transport is built (a bad one fails that target)
    s3: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.s3 is not None:
            _check_s3_names(self.s3)
        if self.min_success not in (None, ""):
            _min_success_form(self.min_success)
        self.check(self.strategy)

    def check(self, strategy: str | None) -> None:
        """Refuse what contradicts itself under ``strategy`` (None: not known yet; a cluster
        publish calls this again with the strategy it will use)."""
        if strategy is not None and strategy not in STRATEGIES:
            raise OptionError(
                f"unknown cluster strategy {strategy!r}",
                hint=f"use one of: {', '.join(STRATEGIES)}",
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise OptionError(f"--batch-size {self.batch_size} must be at least 1")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise OptionError(f"--max-parallel {self.max_parallel} must be at least 1")
        if self.atomic and self.batch_size:
            raise OptionError(
                "--atomic and --batch-size cannot be combined",
                hint="--atomic switches every instance at once; drop one of them",
            )
        if strategy not in (None, "all") and (self.atomic or self.batch_size):
            raise OptionError(
                f"--atomic and --batch-size need strategy 'all', not {strategy!r}",
                hint="add --strategy all",
            )


def _check_s3_names(tuning: Mapping[str, Any]) -> None:
    """Every key of ``tuning`` names a :class:`~modelpkg.s3.S3Settings` field."""
    # imported here: only S3 tuning needs modelpkg.s3, and a publish that never touches S3
    # (the start-up-sensitive case) need not load it
    from modelpkg.s3 import S3Settings

    known = [f.name for f in dataclasses.fields(S3Settings)]
    unknown = sorted(set(tuning) - set(known))
    if unknown:
        raise OptionError(
            f"unknown S3 setting(s): {', '.join(unknown)}", hint=f"use: {', '.join(known)}"
        )


def _min_success_form(value: str | int) -> tuple[int | None, float | None]:
    """``(count, None)`` or ``(None, percent)``; OptionError when ``value`` is neither."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError(text)
            return None, pct
        return int(text), None
    except ValueError:
        raise OptionError(
            f"--min-success {value!r} is neither a count nor a percentage",
            hint="use e.g. --min-success 2 or --min-success 60%",
        ) from None


def parse_min_success(value: str | int | None, wanted: int) -> int:
    """``None`` -> ``wanted``; ``"2"`` -> 2; ``"60%"`` -> ceil(60% of ``wanted``), at least 1."""
    if value is None or value == "":
        return wanted
    count, pct = _min_success_form(value)
    if pct is not None:
        return max(1, math.ceil(wanted * pct / 100 - 1e-9))
    assert count is not None
    if count < 1 or count > wanted:
        raise OptionError(
            f"--min-success {count} is outside 1..{wanted} (the members targeted)",
            hint=f"use a count from 1 to {wanted}, or a percentage",
        )
    return count


__all__ = ["STRATEGIES", "PublishOptions", "parse_min_success"]
