"""``axon install SOURCE [--as REF]``: put a model into the dev cache, atomically.

SOURCE is one of:

* a local model directory (e.g. a Hugging Face snapshot: config.json, weights, tokenizer
  files, subfolders; symlinks to files are followed, as in HF's own cache);
* a ``.axon`` archive (tar.gz). Extraction streams member by member and refuses anything that
  could land outside the model directory: absolute names, ``..``, links, devices, fifos;
* ``hf/<repo>[@revision]``, downloaded with huggingface_hub (the ``hf`` extra).

Every file is copied (or extracted) and hashed in the same pass, several files in parallel
threads, into a hidden staging directory next to the final one; the manifest is written last
and the directory appears in one rename. An interrupted install leaves no model behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from axon.cache import METADATA_NAME, Cache, CachedModel, walk_files
from axon.detect import detect_dir
from axon.errors import (
    IntegrityError,
    ManifestError,
    SourceError,
    TargetUnreachableError,
    UnsafeArchiveError,
)
from axon.fsutil import fsync_tree, remove_tree, replace_dir, staging_name
from axon.hashing import CHUNK, sha256_file
from axon.manifest import MANIFEST_NAME, FileEntry, Manifest, check_relpath
from axon.progress import NULL_PROGRESS, Progress
from axon.refs import ModelRef

ARCHIVE_SUFFIXES = (".axon", ".tar.gz", ".tgz", ".tar")
_SKIP_DIRS = {".git", ".cache"}  # VCS data and huggingface_hub's local_dir bookkeeping
OnBytes = Callable[[int], None]


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str


def install_source(
    source: str,
    *,
    as_ref: str | ModelRef | None = None,
    cache: Cache | None = None,
    progress: Progress = NULL_PROGRESS,
    hf_token: str | None = None,
) -> CachedModel:
    """Install ``source`` into ``cache`` (default: from the config) and return the model."""
    cache = cache or Cache.from_config()
    ref = ModelRef.parse(as_ref) if isinstance(as_ref, str) else as_ref
    kind = classify_source(source)
    if kind == "hf":
        repo, revision = parse_hf_source(source)
        local = download_hf(repo, revision, token=hf_token, progress=progress)
        ref = ref or ModelRef("hf", repo, revision or "latest")
        return _install(
            cache, ref, source, progress, lambda staged: _copy_dir(local, staged, progress)
        )
    path = Path(source).expanduser()
    if kind == "dir":
        populate: Callable[[Path], dict[str, Digest]] = lambda staged: _copy_dir(  # noqa: E731
            path, staged, progress
        )
    else:
        populate = lambda staged: _extract_archive(path, staged, progress)  # noqa: E731
    return _install(cache, ref, source, progress, populate)


def classify_source(source: str) -> str:
    """``"dir"``, ``"archive"`` or ``"hf"``; SourceError when it is none of them."""
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
) -> CachedModel:
    # Staged in a hidden dir under models/ (same filesystem as the final place, skipped by
    # listing); it becomes the model dir in one rename, or is removed on any failure.
    cache.models_dir.mkdir(parents=True, exist_ok=True)
    cache.clean_stale()  # what an install killed with SIGKILL long ago left behind
    staged = staging_name(cache.models_dir / "install")
    staged.mkdir()
    try:
        digests = populate(staged)
        base = _take_base_manifest(staged)
        final_ref = ref or _ref_from_manifest(base, source)
        _drop_housekeeping(staged, digests, final_ref)
        _check_against_base(base, digests, source)
        manifest = build_manifest(final_ref, staged, digests, base)
        cache.write_package_files(staged, final_ref, manifest, source=source)
        fsync_tree(staged)
        replace_dir(staged, cache.path_for(final_ref))
    except BaseException:
        remove_tree(staged)
        raise
    cache.remember_digests(final_ref, manifest.files)
    progress.message(f"installed {final_ref} ({len(manifest.files)} files)")
    return cache.get(final_ref)


def _drop_housekeeping(staged: Path, digests: dict[str, Digest], ref: ModelRef) -> None:
    """Our own bookkeeping files from a source that was itself a cache dir are not model
    files (upstream's ``<ns>-<name>-<ver>.axon`` would double every publish)."""
    for name in (MANIFEST_NAME, METADATA_NAME, ref.archive_name):
        digests.pop(name, None)
        (staged / name).unlink(missing_ok=True)


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
        elif entry.size and entry.size != got.size:
            problems.append(f"corrupt: {entry.path}: size {got.size}, manifest says {entry.size}")
        elif entry.known and entry.sha256 != got.sha256:
            problems.append(f"corrupt: {entry.path}: sha256 does not match the manifest")
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


# ---- local directories ------------------------------------------------------------------
def source_files(root: Path) -> list[str]:
    """Relative paths of the files to install from a directory; SourceError on odd entries."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)):
                raise SourceError(
                    f"{os.path.join(dirpath, d)}: symlinked directories are not supported",
                    path=os.path.join(dirpath, d),
                    hint="copy the directory's contents in instead of linking it",
                )
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)  # follows symlinks (HF snapshots link into blobs/)
            except FileNotFoundError:
                raise SourceError(f"{full}: broken symlink", path=full) from None
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{full}: not a regular file (device, fifo or socket)", path=full)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            out.append(rel if rel == MANIFEST_NAME else check_relpath(rel, source=str(root)))
    if not out:
        raise SourceError(f"{root}: empty directory, no model files", path=str(root))
    return sorted(out)


def _copy_dir(src: Path, staged: Path, progress: Progress) -> dict[str, Digest]:
    rels = source_files(src)
    sizes = {rel: os.stat(src / rel).st_size for rel in rels}
    progress.begin("install", f"copying {len(rels)} files", sum(sizes.values()))

    def one(rel: str) -> Digest:
        dst = staged / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        return copy_hashing(src / rel, dst, lambda n: progress.advance("install", n))

    workers = min(len(rels), max(2, os.cpu_count() or 2), 8)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="axon-install") as pool:
        digests = dict(zip(rels, pool.map(one, rels), strict=True))
    progress.end("install")
    return digests


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_COPY_CHUNK = 64 * 1024 * 1024


def copy_hashing(src: Path, dst: Path, on_bytes: OnBytes) -> Digest:
    """Copy ``src`` to ``dst`` and return the digest of what was copied.

    The kernel copies (``copy_file_range``: no bytes through Python) in a helper thread while
    this thread hashes the source, so the two overlap. The source must not change meanwhile
    (checked by its size, mtime and ctime); where the kernel copy is unavailable we fall back
    to one read-hash-write pass.
    """
    before = os.stat(src)
    stop = threading.Event()
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            _kernel_copy(src, dst, stop)
        except BaseException as exc:  # reported to the hashing thread
            failure.append(exc)

    helper = threading.Thread(target=copy, name="axon-copy", daemon=True)
    helper.start()
    try:
        sha = sha256_file(src, on_bytes)
    except BaseException:
        stop.set()  # Ctrl-C: do not wait for the rest of a big copy
        raise
    finally:
        helper.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError) and exc.errno in _NO_KERNEL_COPY:
            with open(src, "rb", buffering=0) as fin:
                return _write_hashing(fin, dst, lambda n: None)
        raise exc
    after = os.stat(src)
    same = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )
    if not same or os.stat(dst).st_size != before.st_size:
        raise SourceError(
            f"{src}: changed while it was being installed",
            path=str(src),
            hint="install again once nothing writes to the source",
        )
    return Digest(before.st_size, sha)


def _kernel_copy(src: Path, dst: Path, stop: threading.Event) -> None:
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        left = os.fstat(fin.fileno()).st_size
        while left > 0 and not stop.is_set():
            n = os.copy_file_range(fin.fileno(), fout.fileno(), min(left, _COPY_CHUNK))
            if n == 0:
                break
            left -= n


def _write_hashing(fin: IO[bytes], dst: Path, on_bytes: OnBytes) -> Digest:
    """Copy a stream to ``dst`` and hash it in the same pass."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(dst, "wb", buffering=0) as fout:
        while True:
            n = fin.readinto(view)  # type: ignore[attr-defined]
            if not n:
                break
            chunk = view[:n]
            h.update(chunk)
            while chunk:
                written = fout.write(chunk)
                if not written:
                    raise OSError(f"could not write {dst}")
                chunk = chunk[written:]
            size += n
            on_bytes(n)
    return Digest(size, h.hexdigest())


# ---- .axon archives ---------------------------------------------------------------------
def _member_name(member: tarfile.TarInfo, archive: Path) -> str | None:
    """The safe relative name of an archive member, None for the root dir entry."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if member.isdir() else name
    if name in ("", "."):
        return None
    kind = _unsafe_kind(member)
    if kind:
        raise UnsafeArchiveError(
            f"{archive}: refusing {kind} {member.name!r}",
            path=str(archive),
            hint="a .axon archive may only hold regular files and directories",
        )
    if name == MANIFEST_NAME:
        return name  # the package's own manifest: read as the base, never kept as a file
    try:
        return check_relpath(name, field="archive member", source=str(archive))
    except ManifestError as exc:
        raise UnsafeArchiveError(
            f"{archive}: refusing member {member.name!r}: {exc.message}",
            path=str(archive),
            hint="the archive tries to write outside the model directory; do not use it",
        ) from None


def _unsafe_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    if not (member.isreg() or member.isdir()):
        return "special entry"
    return None


def _extract_archive(archive: Path, staged: Path, progress: Progress) -> dict[str, Digest]:
    digests: dict[str, Digest] = {}
    total = archive.stat().st_size
    progress.begin("install", f"extracting {archive.name}", total)
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
            last = 0
            for member in tf:
                rel = _member_name(member, archive)
                if rel is None:
                    continue
                _extract_member(tf, member, rel, staged, digests, archive)
                pos = raw.tell()
                progress.advance("install", pos - last)
                last = pos
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SourceError(
            f"{archive}: not a valid .axon archive ({exc or type(exc).__name__})",
            path=str(archive),
            hint="the file is truncated or not a tar.gz; fetch it again",
        ) from exc
    progress.end("install")
    _strip_single_top_dir(staged, digests)
    if not digests:
        raise SourceError(f"{archive}: the archive holds no files", path=str(archive))
    return digests


def _extract_member(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    rel: str,
    staged: Path,
    digests: dict[str, Digest],
    archive: Path,
) -> None:
    dst = staged / rel
    if rel in digests or (member.isreg() and dst.exists()):
        raise UnsafeArchiveError(f"{archive}: member {rel!r} appears twice", path=str(archive))
    try:
        if member.isdir():
            dst.mkdir(parents=True, exist_ok=True)
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UnsafeArchiveError(
            f"{archive}: {rel!r} is both a file and a directory", path=str(archive)
        ) from None
    fin = tf.extractfile(member)
    if fin is None:  # pragma: no cover - regular members always have data
        raise SourceError(f"{archive}: cannot read member {rel!r}", path=str(archive))
    digests[rel] = _write_hashing(fin, dst, lambda n: None)


def _strip_single_top_dir(staged: Path, digests: dict[str, Digest]) -> None:
    """``model/`` wrapping everything (archives made with ``tar czf x.axon model/``)."""
    entries = list(staged.iterdir())
    if len(entries) != 1 or not entries[0].is_dir():
        return
    top = entries[0]
    if not ((top / MANIFEST_NAME).is_file() or (top / "config.json").is_file()):
        return
    hidden = staged / f".{top.name}.tmp-strip"
    os.rename(top, hidden)
    for child in hidden.iterdir():
        os.rename(child, staged / child.name)
    hidden.rmdir()
    prefix = top.name + "/"
    moved = {rel[len(prefix) :]: d for rel, d in digests.items()}
    digests.clear()
    digests.update(moved)


# ---- Hugging Face Hub -------------------------------------------------------------------
def download_hf(
    repo: str, revision: str | None, *, token: str | None = None, progress: Progress = NULL_PROGRESS
) -> Path:
    """Download (or reuse from huggingface_hub's cache) a snapshot; return its directory."""
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
        from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]
    except ImportError:
        raise SourceError(
            "installing from the Hugging Face Hub needs huggingface_hub",
            hint="pip install 'axon-publish[hf]'",
        ) from None
    disable_progress_bars()  # the library never prints
    progress.message(f"downloading {repo}@{revision or 'main'} from the Hugging Face Hub")
    try:
        path = huggingface_hub.snapshot_download(repo, revision=revision, token=token)
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as exc:
        raise SourceError(
            f"hf/{repo}: not found on the Hugging Face Hub (or it needs a token)",
            hint="check the repository name; for gated/private repos set HF_TOKEN",
        ) from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise SourceError(
            f"hf/{repo}: revision {revision!r} not found", hint="use a branch, tag or commit"
        ) from exc
    except Exception as exc:  # network down, proxy, offline mode: translate at this boundary
        raise TargetUnreachableError(
            f"cannot download hf/{repo}: {_first_line(exc)}",
            target="huggingface.co",
            hint="check the network (or HF_ENDPOINT / HF_HUB_OFFLINE); "
            "or install from a local directory or a .axon archive",
        ) from exc
    return Path(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def installed_files(model: CachedModel) -> list[str]:
    """Files present in an installed model dir (for tests and `info`)."""
    from axon.cache import housekeeping_names

    return list(walk_files(model.path, skip_top=housekeeping_names(model.ref)))


__all__ = ["build_manifest", "classify_source", "install_source", "parse_hf_source"]
