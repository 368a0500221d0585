"""Reader checkers: what a reader of a target can see must be whole models only.

A *visible* model is a directory (no hidden segment under the root) that holds
``manifest.yaml``. It is whole when every file its manifest lists is there with that size and
sha256, and nothing else is (bookkeeping names aside). A file outside every visible model
(and outside hidden staging/bookkeeping dirs) is a partial model a reader could trip on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from modelpkg.manifest import MANIFEST_NAME, Manifest

BOOKKEEPING = {MANIFEST_NAME, ".axon_metadata.json"}


def sha256_file(path: Path | str, dir_fd: int | None = None) -> str:
    h = hashlib.sha256()
    with open(os.open(path, os.O_RDONLY, dir_fd=dir_fd), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _visible_files(root: Path | str, dir_fd: int | None = None) -> list[str]:
    out = []
    walk = os.fwalk(root, dir_fd=dir_fd) if dir_fd is not None else os.walk(root)
    for entry in walk:
        dirpath, dirs, files = entry[0], entry[1], entry[2]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        out += [f if rel == "." else f"{rel}/{f}" for f in files if not f.startswith(".")]
    return out


def check_model_dir(model_dir: Path) -> list[str]:
    """Problems of one visible model dir (empty: it is whole and unmixed)."""
    return read_model_dir(model_dir)[1]


def read_model_dir(model_dir: Path) -> tuple[Manifest | None, list[str]]:
    """The manifest of the generation read (None: no model there, or it is unreadable) and
    the problems of that generation (empty: it is whole and unmixed).

    Read the way a careful reader does: through one directory fd, so a version swapped in
    while we read (an atomic rename by a publish still finishing) is not mistaken for a mix.
    A generation swapped out and removed under us (its files vanish as we read) is read
    again from the path; a generation still visible there answers for what it lacks."""
    for _attempt in range(5):
        try:
            fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None, []  # replaced and gone: nothing visible here to be partial
        try:
            manifest, problems = _check_dir_fd(model_dir, fd)
            if problems and not _still_visible(model_dir, fd):
                continue  # no longer the one readers see (deleted as we read): look again
            return manifest, problems
        except FileNotFoundError:
            continue  # the old generation was deleted under us: look again
        finally:
            os.close(fd)
    return None, [f"{model_dir}: kept vanishing while being read"]


def _still_visible(model_dir: Path, fd: int) -> bool:
    """Whether the directory open at ``fd`` is still the one at ``model_dir``."""
    held = os.fstat(fd)
    try:
        there = os.stat(model_dir)
    except FileNotFoundError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _check_dir_fd(model_dir: Path, fd: int) -> tuple[Manifest | None, list[str]]:
    try:
        with open(os.open(MANIFEST_NAME, os.O_RDONLY, dir_fd=fd), "rb") as fh:
            manifest = Manifest.from_text(fh.read(), source=str(model_dir))
    except FileNotFoundError:
        raise
    except Exception as exc:  # an unreadable manifest is a torn write: report, don't raise
        return None, [f"{model_dir}: unreadable manifest: {exc}"]
    problems = []
    listed = {f.path: f for f in manifest.files}
    for entry in listed.values():
        try:
            size = os.stat(entry.path, dir_fd=fd).st_size
        except FileNotFoundError:
            problems.append(f"{model_dir}: missing {entry.path}")
            continue
        if size != entry.size:
            problems.append(f"{model_dir}: {entry.path} has {size} bytes")
        elif entry.known and sha256_file(entry.path, dir_fd=fd) != entry.sha256:
            problems.append(f"{model_dir}: {entry.path} does not match its sha256")
    for rel in _visible_files(".", dir_fd=fd):
        if rel not in listed and rel not in BOOKKEEPING and not rel.endswith(".axon"):
            problems.append(f"{model_dir}: {rel} is not in the manifest (mixed versions?)")
    return manifest, problems


def which_version(manifest: Manifest, versions: Mapping[str, Manifest]) -> str | None:
    """The label of the version in ``versions`` whose files (path, size, sha256) are
    exactly ``manifest``'s; None when it is none of them (a mix, or something else)."""
    files = _file_set(manifest)
    return next((label for label, m in versions.items() if _file_set(m) == files), None)


def _file_set(manifest: Manifest) -> frozenset[tuple[str, int, str]]:
    return frozenset((f.path, f.size, f.sha256) for f in manifest.files)


def check_served(
    client: httpx.Client, model_id: str, versions: Mapping[str, Manifest]
) -> tuple[str | None, list[str]]:
    """What a reader of the HTTP API sees of ``model_id``: the manifest served
    (``GET /v1/models/{id}/manifest``) must be exactly one of ``versions`` (label ->
    manifest), and the registry entry (``GET /models/{id}``) must have the file count and
    total size of one of them. Answers the label of the manifest served and the problems;
    a model that is not there (404) is a problem too: this reads a model known to exist."""
    problems = []
    label = None
    answer = client.get(f"/v1/models/{model_id}/manifest")
    if answer.status_code != 200:
        problems.append(f"GET manifest of {model_id}: {answer.status_code} {answer.text[:200]}")
    else:
        try:
            label = which_version(Manifest.from_text(answer.content), versions)
        except Exception as exc:
            problems.append(f"GET manifest of {model_id}: unreadable: {exc}")
        else:
            if label is None:
                problems.append(f"GET manifest of {model_id}: none of the versions published")
    answer = client.get(f"/models/{model_id}")
    sizes = {(len(m.files), sum(f.size for f in m.files)) for m in versions.values()}
    if answer.status_code != 200:
        problems.append(f"GET /models/{model_id}: {answer.status_code} {answer.text[:200]}")
    else:
        entry = answer.json().get("model", {})
        if (entry.get("files"), entry.get("size")) not in sizes:
            problems.append(f"GET /models/{model_id}: files/size of no version: {entry}")
    return label, problems


def check_fs_root(root: Path) -> tuple[int, list[str]]:
    """(visible models, problems) for a models root as a filesystem reader sees it."""
    model_dirs = sorted(p.parent for p in _manifests(root))
    problems = []
    covered: set[str] = set()
    for model_dir in model_dirs:
        problems += check_model_dir(model_dir)
        covered.add(str(model_dir.relative_to(root)))
    for rel in _visible_files(root):
        parts = rel.split("/")
        if not any("/".join(parts[:i]) in covered for i in range(1, len(parts))):
            problems.append(f"{root}: {rel} belongs to no visible model (partial model)")
    return len(model_dirs), problems


def _manifests(root: Path) -> list[Path]:
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if MANIFEST_NAME in files and os.path.relpath(dirpath, root).count("/") >= 2:
            found.append(Path(dirpath) / MANIFEST_NAME)
            dirs[:] = []  # files below a model dir belong to it
    return found


def check_s3(client: Any, bucket: str, prefix: str) -> tuple[int, list[str]]:
    """(visible models, problems) for an S3 layout (see axon.transports.s3): every committed
    manifest's blobs exist, whole, with the right content."""
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        keys += [o["Key"] for o in page.get("Contents", [])]
    manifests = [k for k in keys if k.endswith("/" + MANIFEST_NAME)]
    problems = []
    for key in manifests:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            manifest = Manifest.from_text(body, source=key)
        except Exception as exc:
            problems.append(f"{key}: unreadable manifest: {exc}")
            continue
        for entry in manifest.files:
            blob = f"{base}.blobs/sha256/{entry.sha256}"
            try:
                data = client.get_object(Bucket=bucket, Key=blob)["Body"].read()
            except Exception as exc:
                problems.append(f"{key}: blob of {entry.path} missing ({exc})")
                continue
            if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
                problems.append(f"{key}: blob of {entry.path} is partial or wrong")
    return len(manifests), problems


def check_registered(url: str, models_dir: Path) -> list[str]:
    """Every model the server lists is a whole model dir on its disk."""
    answer = httpx.get(f"{url}/models", timeout=10).json()
    problems = []
    for model in answer["models"]:
        ns, _, rest = model["id"].partition("/")
        name, _, version = rest.partition("@")
        model_dir = models_dir / ns / name / version
        if not (model_dir / MANIFEST_NAME).is_file():
            problems.append(f"{url}: lists {model['id']} but {model_dir} has no manifest")
        else:
            problems += check_model_dir(model_dir)
    return problems


def tree_digest(root: Path) -> dict[str, str]:
    """rel path -> sha256 of every visible file under ``root`` (for 'nothing changed')."""
    return {rel: sha256_file(root / rel) for rel in sorted(_visible_files(root))}
