"""A one-shot upload: a whole model arriving in one request, field by field, file by file.

The ``model_id`` and ``manifest`` fields come first (the tenant is checked as soon as the id
is known); then each file, whose path is relative to the model root. A file is streamed into
a temp file on the models filesystem while hashed (:class:`~mlos_core.storage.blobs.
IncomingBlob`), checked against the manifest and moved into the blob store, so nothing is
held in memory. Files the manifest lists but the request omits are taken from the blob store
when the server already holds their content (by sha256); files received but not listed are
added. The HTTP layer (:mod:`mlos_core.http.multipart`) parses the request and drives this.

Blobs it brings in or relies on are pinned until the version links them: garbage collection
must not take them meanwhile. A failed upload drops the blobs it brought in.

The limits are checked as early as they can be: an id whose directory would nest with another
model's as soon as the id arrives, the manifest's count of files (``--max-files``,
``--max-duplicates``) as soon as it arrives, and files the manifest does not list as they come.
With tenants, a listed file left out is taken from the store only if the tenant holds its
content (:meth:`Core.holds <mlos_core.core.Core.holds>`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from mlos_core.core import Core, parse_manifest, register_answer
from mlos_core.errors import BadRequest, ChecksumMismatch, SizeMismatch, TooLarge
from mlos_core.storage.blobs import Buffer, IncomingBlob
from mlos_core.tenants import Tenant
from modelpkg.atomic import remove_tree
from modelpkg.errors import ManifestError
from modelpkg.layout import ONESHOT_PART_PREFIX, ONESHOT_PREFIX
from modelpkg.manifest import FileEntry, Manifest, check_relpath
from modelpkg.refs import ModelRef


class OneShotUpload:
    """The state of one one-shot upload. Its methods block: call them from a worker thread,
    except the ``async`` ones."""

    def __init__(self, core: Core, authorization: str | None) -> None:
        self.core = core
        self.authorization = authorization
        self.tmp_dir = core.versions.staging_dir / f"{ONESHOT_PREFIX}{uuid.uuid4().hex}"
        self.tmp_dir.mkdir()
        self.ref: ModelRef | None = None
        self.manifest: Manifest | None = None
        self.tenant: Tenant | None = None
        self.received: dict[str, FileEntry] = {}
        self.new_blobs: list[str] = []
        self.pinned: list[str] = []  # kept from garbage collection until the commit
        self._listed_files: dict[str, FileEntry] | None = None
        self._file: IncomingBlob | None = None
        self._filename = ""

    # ---- fields -----------------------------------------------------------------------
    def set_model_id(self, text: str) -> None:
        self.ref = self.core.parse_ref(text.strip())
        self.tenant = self.core.tenants.authorize(self.authorization, self.ref.namespace)
        self.core.check_overlap(self.ref)

    def set_manifest(self, raw: bytes) -> None:
        if self.ref is None:
            raise BadRequest("send the model_id field before the manifest")
        self.manifest = parse_manifest(raw, self.ref, strict=False)
        self.core.check_files(self.manifest.files)

    # ---- files ------------------------------------------------------------------------
    def open_file(self, filename: str, part_name: str) -> None:
        """Start receiving ``filename`` (its path in the model), sent as part ``part_name``."""
        if self.ref is None or self.manifest is None:
            raise BadRequest(
                "send the model_id and manifest fields before the model_files parts",
                code="field_order",
            )
        try:
            check_relpath(filename, field=f"filename of part {part_name!r}")
        except ManifestError as exc:
            raise BadRequest(str(exc), code="invalid_path") from exc
        if filename in self.received:
            raise BadRequest(f"file {filename!r} sent twice", code="duplicate_file")
        listed = self._listed()
        if filename not in listed:
            unlisted = sum(1 for name in self.received if name not in listed)
            if len(listed) + unlisted + 1 > self.core.settings.max_files:
                limit = self.core.settings.max_files
                raise TooLarge(
                    f"file {filename!r} would make {len(listed) + unlisted + 1} files, over "
                    f"this server's --max-files of {limit}; nothing was stored",
                    code="too_many_files",
                )
        tmp = self.tmp_dir / f"{ONESHOT_PART_PREFIX}{len(self.received)}"
        self._file = IncomingBlob(self.core.blobs, tmp, f"file {filename!r}")
        self._filename = filename

    def write(self, chunk: memoryview) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def write_jobs(self, pieces: Sequence[Buffer]) -> list[Callable[[], None]]:
        """The open file's next ``pieces`` as two jobs, hash and write, that may run in
        parallel threads (:meth:`IncomingBlob.jobs`)."""
        assert self._file is not None
        return self._file.jobs(pieces)

    def finish_file(self) -> None:
        """Check the file against the manifest, then move it into the blob store."""
        incoming, filename = self._file, self._filename
        assert incoming is not None
        self._file = None
        sha = incoming.finish()
        listed = self._listed().get(filename)
        if listed is not None and listed.known and listed.sha256 != sha:
            raise ChecksumMismatch(
                f"{filename}: received content hashes to {sha}, manifest says "
                f"{listed.sha256}; nothing stored"
            )
        if listed is not None and listed.size and listed.size != incoming.size:
            raise SizeMismatch(
                f"{filename}: received {incoming.size} bytes, manifest says {listed.size}"
            )
        self._pin(sha)
        if not self.core.blobs.has(sha):
            self.new_blobs.append(sha)
        self.core.blobs.adopt(incoming.path, sha)
        self.received[filename] = FileEntry(filename, incoming.size, sha)

    def _listed(self) -> dict[str, FileEntry]:
        """The manifest's files by path, built once (not once per file received)."""
        assert self.manifest is not None
        if self._listed_files is None:
            self._listed_files = {f.path: f for f in self.manifest.files}
        return self._listed_files

    # ---- the end ----------------------------------------------------------------------
    def final_manifest(self) -> Manifest:
        """The manifest with every file's real size and sha256; BadRequest for missing files."""
        if self.ref is None or self.manifest is None:
            raise BadRequest("model_id and manifest fields are required", code="missing_field")
        files = dict(self.received)
        missing = []
        for entry in self.manifest.files:
            if entry.path in files:
                continue
            if entry.known:
                self._pin(entry.sha256)  # before looking: gc cannot take it after
            if entry.known and self._holds(entry):
                files[entry.path] = entry  # content already on the server (for this tenant)
            else:
                missing.append(entry.path)
        if missing:
            raise BadRequest(
                f"files listed in the manifest were not sent: {', '.join(missing[:10])}",
                code="missing_files",
            )
        final = self.manifest.with_files(files.values())
        self.core.check_files(final.files)  # received files may repeat one content
        try:  # files received but not listed join it: "a" and "a/b" cannot both exist
            return final.validate(strict=True)
        except ManifestError as exc:
            raise BadRequest(f"invalid set of files: {exc}", code="invalid_manifest") from exc

    def _holds(self, entry: FileEntry) -> bool:
        assert self.tenant is not None
        return self.core.holds(self.tenant.name, entry.sha256, entry.size)

    async def commit(self) -> dict[str, Any]:
        """Build the version from the blobs, make it visible and register it; the answer."""
        core = self.core
        manifest = self.final_manifest()
        assert self.ref is not None
        ref = self.ref
        async with core.model_lock(ref):
            staged = await asyncio.to_thread(core.versions.stage, manifest)
            try:
                entry = await asyncio.to_thread(
                    core.publish_staged, staged, ref, manifest, "oneshot"
                )
            except BaseException:
                await asyncio.to_thread(remove_tree, staged)  # refused: nothing left behind
                raise
        answer = register_answer(entry, "uploaded")
        answer.update(files=len(manifest.files), bytes=manifest.total_size)
        return answer

    async def abort(self) -> None:
        """After a failure: drop the blobs this upload brought in (unless linked by now)."""
        if self._file is not None:
            self._file.close()
        self.unpin()  # before the discard, which spares pinned blobs
        await asyncio.to_thread(self._discard)

    def _discard(self) -> None:
        protected = self.core.protected_blobs()
        for sha in self.new_blobs:
            path = self.core.blobs.path(sha)
            try:
                if sha not in protected and path.stat().st_nlink == 1:
                    path.unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Done, either way: unpin, and remove the temp files."""
        if self._file is not None:
            self._file.close()
        self.unpin()
        remove_tree(self.tmp_dir)

    def _pin(self, sha: str) -> None:
        self.core.pin([sha])
        self.pinned.append(sha)

    def unpin(self) -> None:
        self.core.unpin(self.pinned)
        self.pinned = []
