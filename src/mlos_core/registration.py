"""Where ``POST /models/register`` may point, and reading a model directory there without
following a single symbolic link.

A registration names a directory on the server by its absolute path. Two kinds are accepted:

* the model's own directory in the models dir, ``<models-dir>/<ns>/<name...>/<version>``
  (what axon sends after a filesystem or SSH copy, where upstream's publish copies to, and
  what the server uses when no path is given);
* outside the models dir, a directory under one of the operator's ``--register-root`` dirs
  whose path ends in the model's own ``<ns>/<name...>/<version>``: upstream ``axon register``
  sends the developer's cache path, ``~/.axon/cache/models/<ns>/<name>/<version>``.

Either way the directory is named after the model, so a tenant (who may only register
namespaces it may write) can never point the server at another namespace's directory.

Below the root (the models dir or a register root, as the operator wrote it or its real
path) the path is walked one segment at a time with ``O_NOFOLLOW`` through directory file
descriptors, and ``manifest.yaml`` is opened through the last one the same way: a link
planted anywhere below the root, before or after the registration, is never followed, and
nothing can be swapped in between the check and the read.

A path that does not exist and one that is not allowed get one identical answer (404
``path_not_found``), so the answers tell nothing about the server's filesystem.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mlos_core.errors import BadRequest, NotFound
from mlos_core.settings import Settings
from modelpkg.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES
from modelpkg.refs import ModelRef
from modelpkg.signing import MAX_SIGNATURE_BYTES, SIGNATURE_NAME

MAX_PATH_BYTES = 4096  # PATH_MAX
# O_PATH: walking needs search permission only, as a path lookup does (Linux); else O_RDONLY
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW


@dataclass(frozen=True)
class ModelDir:
    """A directory a model may be registered at, and what its manifest.yaml held."""

    path: str  # as it is registered: the root as written plus the segments below it
    manifest: bytes | None  # None: the directory has no manifest.yaml
    signature: bytes | None = None  # its model.sig (read the same way); None: none there


def find_model_dir(settings: Settings, ref: ModelRef, raw_path: str | None) -> ModelDir:
    """The directory ``raw_path`` names for ``ref`` (its models-dir directory when None) and
    its manifest, read without following links.

    NotFound (``path_not_found``, one message) when it is missing or not allowed; BadRequest
    for a path that is not an absolute, normalised path, or a manifest.yaml that is a link
    or not a regular file.
    """
    models_dir = Path(os.path.normpath(settings.models_dir))
    segments = _segments(raw_path) if raw_path is not None else _split(models_dir / ref.relpath)
    want = ref.parts
    models_real = _split(Path(os.path.realpath(models_dir)))
    roots = [(models_dir, True), *((root, False) for root in settings.register_roots)]
    for root, is_models_dir in roots:
        real = _split(Path(os.path.realpath(root)))
        for form in {_split(Path(os.path.normpath(root))), real}:
            if len(segments) <= len(form) or segments[: len(form)] != form:
                continue
            below = segments[len(form) :]
            where = real + below  # no link is followed below the root: this is where it is
            if is_models_dir or where[: len(models_real)] == models_real:
                allowed = where == models_real + want  # in the models dir: its own directory
            else:
                allowed = below[-len(want) :] == want
            if not allowed:
                continue
            try:
                manifest, signature = _read(real, below, ref)
            except _Unreachable:
                continue
            return ModelDir("/" + "/".join(segments), manifest, signature)
    raise _not_found(ref, raw_path)


def _not_found(ref: ModelRef, raw_path: str | None) -> NotFound:
    """One answer for a directory that is missing and one that may not be registered: it
    names neither the path nor which of the two it was."""
    where = "in the models dir" if raw_path is None else "at the path given"
    return NotFound(
        f"no directory of model {ref.id} {where} that this instance registers: a model "
        "is registered at its own <namespace>/<name>/<version> directory, in the models "
        "dir or (ending in those segments) under a --register-root dir of this server, "
        "reached without symbolic links; copy the model there first (or upload it with "
        "POST /models/upload)",
        code="path_not_found",
    )


def _segments(raw: str) -> tuple[str, ...]:
    """The segments of an absolute path given by a client; BadRequest for an odd one."""
    if not raw.startswith("/") or "\x00" in raw:
        raise BadRequest(
            f"path {raw[:300]!r} is not an absolute path on the server", code="invalid_path"
        )
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("path is not valid Unicode", code="invalid_path") from None
    if size > MAX_PATH_BYTES:
        raise BadRequest(f"path is longer than {MAX_PATH_BYTES} bytes", code="invalid_path")
    segments = tuple(s for s in raw.split("/") if s not in ("", "."))
    if ".." in segments:
        raise BadRequest(f"path {raw[:300]!r} has a '..' segment", code="invalid_path")
    return segments


def _split(path: Path) -> tuple[str, ...]:
    return tuple(s for s in str(path).split("/") if s)


class _Unreachable(Exception):
    """The walk failed: missing, a link, not a directory, no permission, a name too long."""


def _read(
    real_root: tuple[str, ...], below: tuple[str, ...], ref: ModelRef
) -> tuple[bytes | None, bytes | None]:
    """Walk ``below`` from the root without following links; the manifest and the
    signature found there."""
    try:
        fd = os.open("/" + "/".join(real_root), _DIR_FLAGS)
    except OSError:
        raise _Unreachable() from None
    try:
        for segment in below:
            try:
                nxt = os.open(segment, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError:
                raise _Unreachable() from None
            os.close(fd)
            fd = nxt
        return _manifest(fd, ref), _signature(fd)
    finally:
        os.close(fd)


def _manifest(dir_fd: int, ref: ModelRef) -> bytes | None:
    """manifest.yaml in ``dir_fd`` if it is a regular file (not a link, FIFO, device)."""
    try:
        fd = os.open(
            MANIFEST_NAME, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(ref, "is a symbolic link") from None
        return None  # none there, or unreadable: the model registers without one
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _unsafe(ref, "is not a regular file")
        chunks, size = [], 0
        while size <= MAX_MANIFEST_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)  # over the limit: the manifest parser refuses it
    finally:
        os.close(fd)


def _signature(dir_fd: int) -> bytes | None:
    """model.sig in ``dir_fd`` if it is a regular file (a link or anything else: None, which
    a server that requires signatures refuses as unsigned)."""
    try:
        fd = os.open(
            SIGNATURE_NAME, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(MAX_SIGNATURE_BYTES + 1)


def _unsafe(ref: ModelRef, why: str) -> BadRequest:
    return BadRequest(
        f"{MANIFEST_NAME} in the directory of model {ref.id} {why}: refused (a registered "
        "model's manifest must be a file inside its directory)",
        code="unsafe_manifest",
    )
