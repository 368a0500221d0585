"""``axon install SOURCE [--as REF]``: put a model into the dev cache, atomically.

SOURCE is one of:

* a local model directory (e.g. a Hugging Face snapshot: config.json, weights, tokenizer
  files, subfolders). A symlink to a file inside it (or into a snapshot's ``blobs/``, as in
  HF's own cache) is followed; any other link is refused by name unless ``follow_symlinks``;
* a ``.axon`` archive (tar.gz). Extraction streams member by member and refuses anything that
  could land outside the model directory: absolute names, ``..``, links, devices, fifos;
* ``hf/<repo>[@revision]``, downloaded with huggingface_hub (the ``hf`` extra).

Every file is copied (or extracted) and hashed in the same pass (:mod:`axon.sources`) into a
hidden staging directory next to the final one; the manifest is written last
and the directory appears in one rename. An interrupted install leaves no model behind.
"""

from __future__ import annotations

import errno
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from axon.cache import METADATA_NAME, Cache, CachedModel
from axon.detect import detect_dir
from axon.errors import (
    AxonError,
    IntegrityError,
    InvalidReferenceError,
    NoSpaceError,
    SourceError,
    TargetPermissionError,
    TargetUnreachableError,
)
from axon.progress import NULL_PROGRESS, Progress
from axon.sources import Digest, copy_dir, extract_archive
from axon.transports.stagedir import sync_tree
from modelpkg.atomic import remove_tree, replace_dir, staging_name
from modelpkg.manifest import MANIFEST_NAME, FileEntry, Manifest
from modelpkg.refs import DEFAULT_VERSION, ModelRef

ARCHIVE_SUFFIXES = (".axon", ".tar.gz", ".tgz", ".tar")


def install_source(
    source: str,
    *,
    as_ref: str | ModelRef | None = None,
    cache: Cache | None = None,
    progress: Progress = NULL_PROGRESS,
    hf_token: str | None = None,
    follow_symlinks: bool = False,
) -> CachedModel:
    """Install ``source`` into ``cache`` (default: from the config) and return the model.

    ``follow_symlinks``: a directory's links are followed wherever they lead (by default only
    links to files inside it, or into a Hugging Face snapshot's ``blobs/``, are).
    """
    cache = cache or Cache.from_config()
    ref = ModelRef.parse(as_ref) if isinstance(as_ref, str) else as_ref
    if ref is not None:
        cache.check_no_overlap(ref)  # before a byte is copied
    kind = classify_source(source)
    follow = follow_symlinks
    if kind == "hf":
        repo, revision = parse_hf_source(source)
        ref = ref or ModelRef("hf", repo, revision or DEFAULT_VERSION)  # as the user wrote it
        cache.check_no_overlap(ref)
        snapshot = download_hf(repo, revision, token=hf_token, progress=progress)
        return _install(
            cache,
            ref,
            source,
            progress,
            lambda staged: copy_dir(snapshot.path, staged, progress, follow_symlinks=follow),
            origin=snapshot.record(),
        )
    path = Path(source).expanduser()
    if kind == "dir":
        populate: Callable[[Path], dict[str, Digest]] = lambda staged: copy_dir(  # noqa: E731
            path, staged, progress, follow_symlinks=follow
        )
    else:
        populate = lambda staged: extract_archive(path, staged, progress)  # noqa: E731
    return _install(cache, ref, source, progress, populate)


def classify_source(source: str) -> str:
    """``"dir"``, ``"archive"`` or ``"hf"``; SourceError when it is none of them."""
    try:
        return _classify(source)
    except (OSError, ValueError, RuntimeError) as exc:  # name too long, NUL, unknown ~user
        if isinstance(exc, SourceError):
            raise
        raise SourceError(
            f"{source[:80]!r}: cannot use this as a source ({exc})",
            path=source[:200],
            hint="give a model directory, a .axon archive, or hf/<repo>[@revision]",
        ) from None


def _classify(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        return "dir"
    if path.is_file():
        if source.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path):
            return "archive"
        raise SourceError(
            f"{source}: not a model directory or a .axon archive",
            path=source,
            hint="give a directory with the model files, a .axon (tar.gz) file or hf/<repo>",
        )
    if source.startswith("hf/") and not path.exists():
        return "hf"
    raise SourceError(
        f"{source}: no such directory or file",
        path=source,
        hint="give a model directory, a .axon archive, or hf/<repo>[@revision]",
    )


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """``hf/google/flan-t5@main`` -> (``google/flan-t5``, ``main``)."""
    body, _, revision = source[len("hf/") :].partition("@")
    ModelRef.parse(f"hf/{body}@{revision or 'latest'}")  # same safety rules as references
    return body, (revision or None)


# ---- the atomic install -----------------------------------------------------------------
def _install(
    cache: Cache,
    ref: ModelRef | None,
    source: str,
    progress: Progress,
    populate: Callable[[Path], dict[str, Digest]],
    *,
    origin: dict[str, str] | None = None,
) -> CachedModel:
    # Staged in a hidden dir under models/ (same filesystem as the final place, skipped by
    # listing); it becomes the model dir in one rename, or is removed on any failure.
    try:
        cache.models_dir.mkdir(parents=True, exist_ok=True)
        cache.clean_stale()  # what an install killed with SIGKILL long ago left behind
        staged = staging_name(cache.models_dir / "install")
        staged.mkdir()
    except OSError as exc:
        _raise_cache_error(exc, cache, source)
    try:
        digests = populate(staged)
        recorded = _take_recorded_ref(staged)
        base = _take_base_manifest(staged)
        final_ref = ref or _ref_from_manifest(base, source)
        _drop_housekeeping(staged, digests, final_ref, base, recorded)
        _check_against_base(base, digests, source)
        manifest = build_manifest(final_ref, staged, digests, base)
        if origin:  # where the files came from (the Hub: the repo's URL and commit)
            manifest.data.setdefault("metadata", {})["source"] = origin
        cache.write_package_files(
            staged, final_ref, manifest, source=source, origin=origin, validated=True
        )
        sync_tree(str(staged))  # every file written, then all made durable at once
        inodes = {f.path: _inode(staged / f.path) for f in manifest.files}
        cache.check_no_overlap(final_ref)  # again: another install may have run meanwhile
        replace_dir(staged, cache.path_for(final_ref))
    except BaseException as exc:
        remove_tree(staged)
        if isinstance(exc, OSError):
            _raise_cache_error(exc, cache, source)
        raise
    cache.remember_digests(final_ref, manifest.files, inodes)
    progress.message(f"installed {final_ref} ({len(manifest.files)} files)")
    final = cache.path_for(final_ref)
    # the manifest just written, not read back (thousands of files take a while to parse)
    return CachedModel(final_ref, final, manifest, cache.metadata_of(final))


def _raise_cache_error(exc: OSError, cache: Cache, source: str) -> NoReturn:
    """Raise an OSError met writing the cache: no space and no permission as our errors
    (exit 7); ours, and any other, as they are."""
    if isinstance(exc, AxonError):
        raise exc
    where = getattr(exc, "filename", None) or str(cache.models_dir)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpaceError(
            f"no space left installing {source} into the cache at {cache.models_dir}",
            path=where,
            hint="free space there or point AXON_HOME at a bigger disk; nothing was installed",
        ) from exc
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise TargetPermissionError(
            f"cannot write the cache at {cache.models_dir}: {exc.strerror}",
            path=where,
            hint="give this user write access there, or point AXON_HOME elsewhere",
        ) from exc
    raise exc


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def _drop_housekeeping(
    staged: Path,
    digests: dict[str, Digest],
    ref: ModelRef,
    base: Manifest | None,
    recorded: ModelRef | None,
) -> None:
    """Our own bookkeeping files from a source that was itself a cache dir are not model
    files: upstream's ``<ns>-<name>-<ver>.axon`` package (a tar.gz of the other files) would
    double every publish. It is named after the reference the source was installed as
    (``recorded``, from its ``.axon_metadata.json``: ``ns/name@latest`` when the user wrote
    no version), which may differ from the manifest's version and from ``--as``; one its
    manifest lists as a model file is kept."""
    listed = {f.path for f in base.files} if base is not None else set()
    names = {MANIFEST_NAME, METADATA_NAME, ref.archive_name}
    for other in (recorded, _manifest_ref(base)):
        if other is not None and other.archive_name not in listed:
            names.add(other.archive_name)
    for name in names:
        digests.pop(name, None)
        (staged / name).unlink(missing_ok=True)


def _manifest_ref(base: Manifest | None) -> ModelRef | None:
    """The reference a source's manifest names (None when it names none, or a bad one)."""
    if base is None or not (base.namespace and base.name):
        return None
    try:
        return ModelRef(base.namespace, base.name, base.version or DEFAULT_VERSION)
    except InvalidReferenceError:
        return None


def _take_recorded_ref(staged: Path) -> ModelRef | None:
    """The reference a cache dir source was installed as, from its ``.axon_metadata.json``
    (removed: it is not a model file); None when there is none or it names no valid one."""
    path = staged / METADATA_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelRef(str(data["namespace"]), str(data["name"]), str(data["version"]))
    except (OSError, ValueError, KeyError, TypeError, InvalidReferenceError):
        return None
    finally:
        path.unlink(missing_ok=True)


def _take_base_manifest(staged: Path) -> Manifest | None:
    """A manifest.yaml shipped with the source: kept as the base (metadata, io...)."""
    (staged / METADATA_NAME).unlink(missing_ok=True)
    path = staged / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = Manifest.load(path)
    path.unlink()
    return manifest.validate()


def _ref_from_manifest(base: Manifest | None, source: str) -> ModelRef:
    if base and base.namespace and base.name:
        return ModelRef(base.namespace, base.name, base.version or "latest")
    raise SourceError(
        f"{source}: cannot tell which reference to install it as",
        path=source,
        hint="add --as namespace/name@version, e.g. --as local/my-model@v1",
    )


def _check_against_base(base: Manifest | None, digests: dict[str, Digest], source: str) -> None:
    if base is None:
        return
    problems = []
    for entry in base.files:
        got = digests.get(entry.path)
        if got is None:
            problems.append(f"missing: {entry.path}")
        elif (problem := entry.mismatch(got.size, got.sha256)) is not None:
            problems.append(f"corrupt: {problem}")
    if problems:
        raise IntegrityError(
            f"{source}: {len(problems)} file(s) do not match its manifest.yaml: "
            + "; ".join(problems[:10]),
            problems=problems,
            path=source,
            hint="the source is damaged or incomplete: fetch it again",
        )


def build_manifest(
    ref: ModelRef, staged: Path, digests: dict[str, Digest], base: Manifest | None = None
) -> Manifest:
    """A strict manifest: every file with size + sha256, format/framework/io detected."""
    files = [FileEntry(p, d.size, d.sha256) for p, d in sorted(digests.items())]
    det = detect_dir(staged, digests)
    if base is not None:
        manifest = base.with_files(files).with_identity(ref.namespace, ref.name, ref.version)
    else:
        manifest = Manifest.new(
            namespace=ref.namespace,
            name=ref.name,
            version=ref.version,
            files=files,
            framework=det.framework,
            execution_format=det.execution_format,
            extra_spec=det.spec(),
        )
        manifest.data["metadata"]["created"] = (
            datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        )
    spec = manifest.data.setdefault("spec", {})
    fmt = spec.setdefault("format", {})
    if det.execution_format and not fmt.get("execution_format"):
        fmt["execution_format"] = det.execution_format
        fmt.setdefault("type", det.execution_format)
    if det.execution_files and not fmt.get("execution_files"):
        fmt["execution_files"] = det.execution_files
        fmt["multi_encoder"] = det.multi_encoder
    if det.framework and not spec.get("framework"):
        spec["framework"] = {"name": det.framework, "version": ""}
    if det.io and not spec.get("io"):
        spec["io"] = det.io
    return manifest.validate(strict=True)


# ---- Hugging Face Hub -------------------------------------------------------------------
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubSnapshot:
    """A snapshot of a Hub repo on disk: its directory, the commit its files are from (None
    when the Hub did not say), and the Hub's URL of the repo."""

    path: Path
    commit: str | None
    url: str

    def record(self) -> dict[str, str]:
        """What the manifest's ``metadata.source`` says of where the files came from."""
        return {"url": self.url, **({"revision": self.commit} if self.commit else {})}


def hub_revision(revision: str | None) -> str | None:
    """The revision to ask the Hub for: None (the repo's default branch, whatever its name)
    for no version and for ``latest``, which Hub repos do not have; else as given."""
    return None if revision in (None, "", DEFAULT_VERSION) else revision


def download_hf(
    repo: str, revision: str | None, *, token: str | None = None, progress: Progress = NULL_PROGRESS
) -> HubSnapshot:
    """Download (or reuse from huggingface_hub's cache) a snapshot; return where it is.

    No revision (or ``latest``) means the repo's default branch: its commit is asked of the
    Hub first (``GET /api/models/<repo>``, as huggingface_hub does for ``revision=None``) and
    every file is then fetched at that commit, so the snapshot is one commit's, named in the
    result. Offline (``HF_HUB_OFFLINE``, no network), huggingface_hub's cache is used when it
    holds the default branch's snapshot.
    """
    try:
        import huggingface_hub
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import errors as hf_errors
        from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]
    except ImportError:
        raise SourceError(
            "installing from the Hugging Face Hub needs huggingface_hub",
            hint="pip install 'axon-publish[hf]'",
        ) from None
    disable_progress_bars()  # the library never prints
    wanted = hub_revision(revision)
    endpoint = str(hf_constants.ENDPOINT).rstrip("/")
    shown = wanted or "its default branch"
    progress.message(f"downloading {repo} ({shown}) from the Hugging Face Hub at {endpoint}")
    try:
        commit = _default_commit(repo, token) if wanted is None else None
        path = Path(huggingface_hub.snapshot_download(repo, revision=commit or wanted, token=token))
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as exc:
        raise SourceError(
            f"hf/{repo}: not found on the Hugging Face Hub at {endpoint} (or it needs a token)",
            hint="check the repository name; for gated/private repos set HF_TOKEN",
        ) from exc
    except hf_errors.RevisionNotFoundError as exc:
        asked = (
            repr(wanted)
            if wanted
            else ("'main' (asked for it because the Hub named no commit for the default branch)")
        )
        raise SourceError(
            f"hf/{repo}: the Hub has no revision {asked} of it",
            hint="give a branch, tag or commit that exists (e.g. hf/<repo>@main), or no "
            "version (or @latest) for the repo's default branch",
        ) from exc
    except Exception as exc:  # network down, proxy, offline mode: translate at this boundary
        raise _unreachable(repo, shown, endpoint, bool(hf_constants.HF_HUB_OFFLINE), exc) from exc
    if commit is None and _COMMIT.fullmatch(path.name):
        commit = path.name  # huggingface_hub's cache names a snapshot by its commit
    return HubSnapshot(path, commit, f"{endpoint}/{repo}")


def _default_commit(repo: str, token: str | None) -> str | None:
    """The commit of ``repo``'s default branch, as the Hub's model API names it (``sha``);
    None when it cannot be asked (offline: huggingface_hub then looks in its cache) or its
    answer holds no commit id. Not-found errors are raised as they are."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    try:
        info = HfApi(token=token).model_info(repo)
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError):
        raise
    except (ConnectionError, OSError, hf_errors.HfHubHTTPError):
        return None  # offline, Hub down: the snapshot download decides (cache or error)
    sha = getattr(info, "sha", None)
    return sha if isinstance(sha, str) and _COMMIT.fullmatch(sha) else None


def _unreachable(
    repo: str, shown: str, endpoint: str, offline: bool, exc: BaseException
) -> TargetUnreachableError:
    if offline:
        return TargetUnreachableError(
            f"cannot install hf/{repo}: HF_HUB_OFFLINE is set and huggingface_hub's cache holds "
            f"no complete snapshot of {shown}",
            target=endpoint,
            hint="unset HF_HUB_OFFLINE (or download it once while online), or install from a "
            "local directory or a .axon archive",
        )
    return TargetUnreachableError(
        f"cannot download hf/{repo} ({shown}) from {endpoint}: {_first_line(exc)}",
        target=endpoint,
        hint="check the network, HF_ENDPOINT and HF_HUB_OFFLINE; "
        "or install from a local directory or a .axon archive",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


__all__ = [
    "HubSnapshot",
    "build_manifest",
    "classify_source",
    "download_hf",
    "hub_revision",
    "install_source",
    "parse_hf_source",
]
