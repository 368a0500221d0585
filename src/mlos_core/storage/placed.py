"""Files another tool placed in a model's directory, taken into the blob store by their hash.

The upstream Go axon publishes by copying its cache dir, file by file, to
``<models dir>/<ns>/<name>/<version>/`` (then ``POST /models/scan``): those files are in the
model's directory but not in the blob store, so an upload of the same model through the API
would be asked for every byte again. When an upload needs a blob, :func:`adopt_placed` looks
at the visible version of the same model: a regular file at a path the manifest gives that
blob, with the blob's size, is copied into the store while it is hashed, and kept only when
its sha256 is the blob's. Nothing there is taken at its word (a manifest beside it may say
anything), no symbolic link is followed, and the copy (not a link) keeps the store's blobs
immutable when that tool later rewrites its file in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import uuid
from pathlib import Path

from mlos_core.storage.blobs import READ_CHUNK, BlobStore
from modelpkg.layout import MANIFEST_NAME, TMP_TAG, sibling
from modelpkg.manifest import Manifest

log = logging.getLogger("mlos_core.storage")


def written_by_a_publish(final: Path, manifest: Manifest) -> bool:
    """Whether the version at ``final`` holds its manifest's files as regular files and
    nothing else: what a publish (ours, or axon's staged one) writes. A directory another
    tool filled holds more (the upstream axon copies ``.axon_metadata.json`` and its
    ``.axon`` package along): it is not taken for the version its manifest describes, so an
    upload of that manifest is not "unchanged", and its files are hashed when used."""
    listed = {f.path for f in manifest.files}
    seen = 0
    stack = [("", str(final))]
    while stack:
        prefix, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            return False
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((rel + "/", entry.path))
            elif rel == MANIFEST_NAME and not prefix:
                continue
            elif rel not in listed or not entry.is_file(follow_symlinks=False):
                return False
            else:
                seen += 1
    return seen == len(listed)


def adopt_placed(
    blobs: BlobStore, model_dir: Path, sha256: str, size: int, paths: list[str]
) -> bool:
    """True when blob ``sha256`` (``size`` bytes) is now in the store, copied from a file the
    model's directory ``model_dir`` holds at one of ``paths`` (relative, checked already
    against the manifest's rules) and hashed on the way; False when no such file matches."""
    for rel in paths:
        fd = _open_placed(model_dir, rel, size)
        if fd is None:
            continue
        try:
            if _copy_verified(blobs, fd, sha256, size):
                log.info("took %s of %s into the blob store (placed there, hashed)", rel, model_dir)
                return True
        finally:
            os.close(fd)
    return False


def _open_placed(model_dir: Path, rel: str, size: int) -> int | None:
    """A read-only fd of the regular file ``model_dir/rel`` of ``size`` bytes, reached
    without following any symbolic link; None when there is no such file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in rel.split("/")[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        file_fd = os.open(rel.split("/")[-1], flags, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    st = os.fstat(file_fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        os.close(file_fd)
        return None
    return file_fd


def _copy_verified(blobs: BlobStore, src: int, sha256: str, size: int) -> bool:
    """Copy ``size`` bytes of ``src`` into the store as ``sha256`` if they hash to it."""
    final = blobs.path(sha256)
    final.parent.mkdir(exist_ok=True)
    tmp = final.parent / sibling(sha256, TMP_TAG, uuid.uuid4().hex[:12])
    digest = hashlib.sha256()
    copied = 0
    try:
        with open(tmp, "xb") as dst:
            while copied < size:
                chunk = os.read(src, min(READ_CHUNK, size - copied))
                if not chunk:
                    break
                digest.update(chunk)
                dst.write(chunk)
                copied += len(chunk)
            if copied != size or os.read(src, 1) or digest.hexdigest() != sha256:
                return False
            if blobs.durable:
                dst.flush()
                os.fsync(dst.fileno())
        blobs.adopt(tmp, sha256)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
