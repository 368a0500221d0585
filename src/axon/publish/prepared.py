"""A cached model made ready to publish: found, checked and hashed once per publish.

:func:`prepare_model` runs before any target is touched, however many targets follow (a
cluster's members share one :class:`PreparedModel`). The cache's hash index makes an
unchanged model cheap; with ``validate`` every file is checked against the manifest, so a
corrupt cache never reaches a target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from axon.cache import upstream_written
from axon.errors import AxonError, IntegrityError
from axon.progress import NULL_PROGRESS, BytesTo, Progress
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from axon.cache import Cache
    from axon.hashing import FileKey


@dataclass
class PreparedModel:
    """A cached model ready to publish: its strict manifest was built (hashed) once."""

    ref: ModelRef
    manifest: Manifest  # strict: every file with its real size and sha256
    source_dir: Path
    total_bytes: int
    # path -> identity (dev, ino, size, mtime_ns, ctime_ns) at which validation found the
    # file's sha256 to match the manifest; a local copy need not hash those bytes again
    verified: dict[str, FileKey] = field(default_factory=dict)

    def source(self, entry: FileEntry) -> Path:
        """The local file holding ``entry``."""
        return self.source_dir / entry.path


def prepare_model(
    cache: Cache,
    ref: ModelRef,
    *,
    validate: bool = True,
    full: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> PreparedModel:
    """Find ``ref`` in the cache and build its strict manifest (ModelNotFoundError if absent).

    With ``validate`` every file is checked against the manifest (IntegrityError listing each
    mismatch); without it, a manifest that already lists every size and sha256 is trusted.
    """
    cached = cache.get(ref)
    manifest = cached.manifest
    identities: dict[str, FileKey] = {}
    if validate or full or upstream_written(manifest, cached.metadata):
        total = sum(f.size for f in manifest.files) or None
        progress.begin("verify", f"checking {ref}", total)
        try:
            manifest, identities = cache.checked(
                cached, full=full, on_bytes=BytesTo(progress, "verify")
            )
        except AxonError:
            progress.end("verify", ok=False, note="model does not match its manifest")
            raise
        progress.end("verify")
    if not manifest.files:
        raise IntegrityError(
            f"{ref} lists no files in its manifest",
            path=str(cached.path),
            hint="reinstall the model with `axon install`",
        )
    return PreparedModel(
        ref=ref,
        manifest=manifest,
        source_dir=cached.path,
        total_bytes=sum(f.size for f in manifest.files),
        # the identity of each file whose sha256 validation just vouched for (found in the
        # hash index or computed from these exact bytes); a file that changes afterwards
        # gets a new identity (its mtime/ctime move), so the copy hashes it again
        verified=identities if validate and not full else {},
    )


__all__ = ["PreparedModel", "prepare_model"]
