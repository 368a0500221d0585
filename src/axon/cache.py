"""The developer's model cache, laid out like the upstream Go axon's (docs/compatibility.md)::

    <cache_dir>/                          default ~/.axon/cache ($AXON_HOME/cache)
    ├── .hash-index.sqlite                digests of unchanged files (axon.hashing.HashIndex)
    └── models/
        └── <namespace>/<name...>/<version>/
            ├── manifest.yaml             every file with size + sha256
            ├── .axon_metadata.json       installed_at (RFC3339), namespace, name, version
            ├── <ns>-<name>-<ver>.axon    (upstream only, optional) tar.gz of the files
            └── config.json, model.safetensors, tokenizer/..., ...

A model directory appears in one rename (:func:`modelpkg.atomic.atomic_dir`), so a reader (or an
interrupted install) never sees half a model. Listing follows upstream: every directory under
``models/`` holding ``.axon_metadata.json`` (or ``manifest.yaml``) is a model; its relative
path is ``namespace/name.../version``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axon.errors import (
    EXIT_USAGE,
    IntegrityError,
    InvalidReferenceError,
    ManifestError,
    ModelNotFoundError,
)
from axon.hashing import FileKey, Hashed, HashIndex, absolute, file_key, hash_stats
from modelpkg.atomic import (
    atomic_write_text,
    clean_leftovers,
    remove_tree,
    staging_name,
)
from modelpkg.layout import OLD_TAG, is_leftover, overlapping_model
from modelpkg.manifest import MANIFEST_NAME, FileEntry, Manifest, check_relpath
from modelpkg.progress import OnBytes
from modelpkg.refs import DEFAULT_NAMESPACE, ModelRef, check_segment, parse_request
from modelpkg.signing import unsigned_names

if TYPE_CHECKING:
    from axon.config import Config

METADATA_NAME = ".axon_metadata.json"
INDEX_NAME = ".hash-index.sqlite"
# Aliases: inside Cache, ``list`` is the method, not the builtin.
_Refs = list[ModelRef]
_Entries = list[FileEntry]


def _now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class CachedModel:
    """A model in the cache: where it is, its manifest (as stored) and its metadata."""

    ref: ModelRef
    path: Path
    manifest: Manifest
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the directory's files when the upstream Go axon wrote the entry (its manifest lists
    #: what its registry named): sizes from the files themselves (:meth:`Cache.get`)
    dir_files: _Entries | None = field(default=None, repr=False)

    @property
    def files(self) -> _Entries:
        """The model's files: the manifest's, or an upstream entry's directory's."""
        return self.dir_files if self.dir_files is not None else self.manifest.files

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def installed_at(self) -> str | None:
        value = self.metadata.get("installed_at")
        return str(value) if value else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "version": self.ref.version,
            "path": str(self.path),
            "files": len(self.files),
            "size": self.total_size,
            "framework": self.manifest.framework,
            "format": self.manifest.execution_format,
            "installed_at": self.installed_at,
        }


@dataclass
class VerifyReport:
    """What ``axon verify`` found. ``files_hashed``: files whose bytes were read."""

    ref: ModelRef
    path: Path
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # "path: why"
    files_checked: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    # the upstream Go axon wrote the manifest (:func:`upstream_written`): the directory is
    # the file set; ``unchecked`` files are present but have no size/sha256 to compare with
    upstream: bool = False
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.corrupt)

    @property
    def problems(self) -> list[str]:
        return (
            [f"missing: {p}" for p in self.missing]
            + [f"corrupt: {p}" for p in self.corrupt]
            + [f"extra: {p}" for p in self.extra]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "path": str(self.path),
            "ok": self.ok,
            "missing": self.missing,
            "extra": self.extra,
            "corrupt": self.corrupt,
            "files_checked": self.files_checked,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "upstream": self.upstream,
            "unchecked": self.unchecked,
        }


class AmbiguousReferenceError(InvalidReferenceError):
    """A reference without a version, of a model installed in several versions and not as
    ``latest``: the user must name one (a usage error, exit 2)."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Resolved:
    """A reference as the user wrote it, resolved: the model it means, and what was assumed
    (the default namespace, the only installed version), each a note to show the user."""

    ref: ModelRef
    notes: tuple[str, ...] = ()


def resolve_ref(
    text: str | ModelRef,
    cache: Cache,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    config_path: Path | None = None,
    pick_version: bool = True,
) -> Resolved:
    """What ``[namespace/]name[@version]`` means for a command on a cached model (install
    --as, info, verify, uninstall, publish, register, status).

    * No namespace (``federated-model@v1.0``): ``default_namespace`` (the config's
      ``default_namespace``, else ``local``), with a note saying so.
    * No version: ``latest`` when that is installed (or nothing is: the caller reports it
      missing, or asks an instance for it); else the only installed version, with a note;
      several installed versions: :class:`AmbiguousReferenceError` (exit 2) listing them.

    ``pick_version=False`` (``install --as``: it names what to write): no version means
    ``latest``. A :class:`ModelRef` is taken as it is (already resolved).
    """
    if isinstance(text, ModelRef):
        return Resolved(text)
    asked = parse_request(text, default_namespace=default_namespace)
    ref, notes = asked.ref, []
    if not asked.namespace_given:
        where = f" (default_namespace in {config_path})" if config_path else ""
        notes.append(
            f"{text}: no namespace given, using the default namespace {ref.namespace!r}{where}"
        )
    if asked.version_given or not pick_version:
        return Resolved(ref, tuple(notes))
    versions = cache.versions(ref)
    if not versions or ref.version in versions:
        return Resolved(ref, tuple(notes))
    model = f"{ref.namespace}/{ref.name}"
    if len(versions) == 1:
        (only,) = versions
        notes.append(f"{model}: no version given, using {only}, the only one installed")
        return Resolved(ref.with_version(only), tuple(notes))
    raise AmbiguousReferenceError(
        f"{model}: no version given, and {len(versions)} versions are installed (none is "
        f"{ref.version!r}): {', '.join(versions)}",
        path=str(cache.path_for(ref).parent),
        hint=f"name one, e.g. {model}@{versions[-1]}",
    )


def resolve_configured(
    text: str | ModelRef,
    *,
    note: Callable[[str], None] | None = None,
    config: Config | None = None,
    pick_version: bool = True,
) -> ModelRef:
    """:func:`resolve_ref` with the config's cache and ``default_namespace`` (loaded when
    not given), each note passed to ``note``: what a command given a reference calls."""
    if config is None:
        from axon.config import load_config

        config = load_config()
    found = resolve_ref(
        text,
        Cache(config.cache_dir),
        default_namespace=config.default_namespace,
        config_path=config.path,
        pick_version=pick_version,
    )
    if note is not None:
        for line in found.notes:
            note(line)
    return found.ref


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: numbers as numbers (v2 before v10), the rest as text."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", version)
        if part
    )


def housekeeping_names(ref: ModelRef, manifest: Manifest | None = None) -> set[str]:
    """Top-level names in a model dir that are not model files: ours, and upstream's
    ``<ns>-<name>-<ver>.axon`` package, named after the directory's reference (or, given
    ``manifest``, the one it names: a registry's manifest may say 1.0.0 in ``latest/``).
    The names a signature leaves out: one definition (:func:`modelpkg.signing.unsigned_names`)."""
    return unsigned_names(ref, manifest)


def upstream_written(manifest: Manifest, metadata: dict[str, Any]) -> bool:
    """Did the upstream Go axon write this cache entry? Its manifest lists what its registry
    named (often one file with ``size: 0`` and ``sha256: ""``, or none), while the directory
    holds every file of the package. True when a listed file has no sha256, none is listed,
    or the entry is upstream's shape (``apiVersion: v1`` and an ``.axon_metadata.json``
    without the ``source`` every install of ours records). For such an entry the directory
    is the file set (:meth:`Cache.model_files`)."""
    files = manifest.files
    if not files or not all(f.known for f in files):
        return True
    return manifest.data.get("apiVersion") == "v1" and "source" not in metadata


def walk_files(root: Path, *, skip_top: set[str] | frozenset[str] = frozenset()) -> Iterator[str]:
    """Relative POSIX paths of the regular files (and symlinks to files) under ``root``."""
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirs[:] = sorted(d for d in dirs if not is_leftover(d))
        for name in sorted(files):
            if is_leftover(name):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if rel_dir == "." and name in skip_top:
                continue
            yield rel


def _stat_files(
    root: Path, entries: _Entries
) -> tuple[dict[str, tuple[Path, os.stat_result]], builtins.list[str]]:
    """({relative path: (path, stat)} of the listed regular files, [missing paths]): one
    stat (following links) per file."""
    present: dict[str, tuple[Path, os.stat_result]] = {}
    missing: builtins.list[str] = []
    for entry in entries:
        p = root / entry.path
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            missing.append(entry.path)
            continue
        if stat.S_ISREG(st.st_mode):
            present[entry.path] = (p, st)
        else:
            missing.append(entry.path)
    return present, missing


def _sized(root: Path, entry: FileEntry) -> FileEntry:
    """``entry`` with the size of its file when the manifest gives none (upstream's 0)."""
    if entry.size:
        return entry
    try:
        return FileEntry(entry.path, os.stat(root / entry.path).st_size, entry.sha256)
    except (OSError, ValueError):
        return entry


def _valid_version(name: str) -> bool:
    try:
        check_segment(name, what="version", ref=name)
    except InvalidReferenceError:
        return False
    return True


def _safe(path: str) -> bool:
    try:
        check_relpath(path)
    except ManifestError:
        return False
    return True


class Cache:
    """The dev cache at ``root`` (``cache_dir``). Models live under ``root/models``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.index = HashIndex(self.root / INDEX_NAME)

    @classmethod
    def from_config(cls, config: Config | None = None) -> Cache:
        if config is None:
            from axon.config import load_config

            config = load_config()
        return cls(config.cache_dir)

    def path_for(self, ref: ModelRef) -> Path:
        return self.models_dir.joinpath(*ref.parts)

    # ---- reading -------------------------------------------------------------------
    def exists(self, ref: ModelRef) -> bool:
        return self._model_dir_ok(self.path_for(ref))

    @staticmethod
    def _model_dir_ok(path: Path) -> bool:
        return path.is_dir() and (
            (path / METADATA_NAME).is_file() or (path / MANIFEST_NAME).is_file()
        )

    def get(self, ref: ModelRef | str) -> CachedModel:
        """The cached model, or :class:`ModelNotFoundError` with what *is* there."""
        ref, path = self._installed(ref)
        if not (path / MANIFEST_NAME).is_file():
            raise ManifestError(
                "model has no manifest.yaml",
                path=str(path / MANIFEST_NAME),
                hint=f"reinstall it: axon uninstall {ref} && axon install SOURCE --as {ref}",
            )
        manifest = Manifest.load(path / MANIFEST_NAME)
        model = CachedModel(ref, path, manifest, self.metadata_of(path))
        if upstream_written(manifest, model.metadata):
            model.dir_files = [_sized(path, e) for e in self.model_files(model)]
        return model

    def _installed(self, ref: ModelRef | str) -> tuple[ModelRef, Path]:
        """``ref`` parsed and its model directory; ModelNotFoundError when not installed."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        path = self.path_for(ref)
        if not self._model_dir_ok(path):
            raise ModelNotFoundError(
                f"{ref} is not in the cache", path=str(path), hint=self._not_found_hint(ref)
            )
        return ref, path

    def versions(self, ref: ModelRef) -> builtins.list[str]:
        """The installed versions of ``ref``'s ``namespace/name``, in version order."""
        parent = self.path_for(ref).parent
        try:
            found = [p.name for p in parent.iterdir() if self._model_dir_ok(p)]
        except OSError:
            return []
        return sorted((v for v in found if _valid_version(v)), key=_version_key)

    def _not_found_hint(self, ref: ModelRef) -> str:
        versions = self.versions(ref)
        if versions:
            return f"installed versions of {ref.namespace}/{ref.name}: {', '.join(versions)}"
        return f"install it first: axon install SOURCE --as {ref}; `axon list` shows the cache"

    @staticmethod
    def metadata_of(path: Path) -> dict[str, Any]:
        """The ``.axon_metadata.json`` of the model directory ``path`` ({} if unreadable)."""
        try:
            data = json.loads((path / METADATA_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def list(self) -> builtins.list[CachedModel]:
        """Every model in the cache, sorted by reference. Unreadable entries are skipped."""
        out: builtins.list[CachedModel] = []
        for ref in self.refs():
            try:
                out.append(self.get(ref))
            except (ManifestError, ModelNotFoundError):
                continue
        return out

    def refs(self) -> _Refs:
        """References of every model directory (upstream rule: metadata file marks a model)."""
        refs: _Refs = []
        if not self.models_dir.is_dir():
            return refs
        for dirpath, dirs, files in os.walk(self.models_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if METADATA_NAME in files or MANIFEST_NAME in files:
                rel = Path(dirpath).relative_to(self.models_dir).parts
                with contextlib.suppress(InvalidReferenceError):
                    refs.append(ModelRef.from_parts(rel))
                dirs.clear()  # a model dir holds no nested models
        return sorted(refs)

    # ---- checking ------------------------------------------------------------------
    def verify(
        self, ref: ModelRef | str, *, full: bool = False, on_bytes: OnBytes | None = None
    ) -> VerifyReport:
        """Compare the model dir with its manifest: missing, extra and corrupt files.

        Unchanged files (same inode, size, mtime, ctime) are checked against the hash index
        without reading their bytes, unless ``full``.
        """
        model = self.get(ref)
        report = VerifyReport(model.ref, model.path)
        problems = model.manifest.problems()
        for problem in problems:
            report.corrupt.append(f"{MANIFEST_NAME}: {problem.field}: {problem.message}")
        report.upstream = not problems and upstream_written(model.manifest, model.metadata)
        # an upstream entry's directory is its file set: nothing in it is extra
        entries = self.model_files(model) if report.upstream else model.manifest.files
        entries = [e for e in entries if _safe(e.path)]
        present, report.missing = _stat_files(model.path, entries)
        if report.upstream:
            # a file without a size or sha256 in the manifest: present, nothing to compare
            blank = {e.path for e in entries if not (e.known or e.size)}
            report.unchecked = [p for p in present if p in blank]
            present = {p: found for p, found in present.items() if p not in blank}
        else:
            listed = {e.path for e in entries}
            skip = housekeeping_names(model.ref)
            report.extra = [r for r in walk_files(model.path, skip_top=skip) if r not in listed]
        report.files_checked = len(present) + len(report.unchecked)
        digests = self._hash(present, full=full, on_bytes=on_bytes)
        for entry in entries:
            got = digests.get(entry.path)
            if got is None:
                continue
            if got.read:
                report.files_hashed += 1
                report.bytes_hashed += got.size
            wrong = entry.mismatch(got.size, got.sha256)
            if wrong is not None:
                report.corrupt.append(wrong)
        return report

    def _hash(
        self,
        present: dict[str, tuple[Path, os.stat_result]],
        *,
        full: bool,
        on_bytes: OnBytes | None,
    ) -> dict[str, Hashed]:
        """{relative path: digest} of the ``present`` files (each stat'ed once by the
        caller): one pass over the hash index, only changed files read."""
        got = hash_stats(list(present.values()), index=self.index, full=full, on_bytes=on_bytes)
        return {rel: got[p] for rel, (p, _st) in present.items()}

    def model_files(self, model: CachedModel) -> _Entries:
        """The files of ``model``: its manifest's, and for an entry the upstream Go axon wrote
        (:func:`upstream_written`) every regular file in its directory besides the
        housekeeping (manifest, metadata, upstream's ``.axon`` package), listed ones with what
        the manifest says of them (size 0 and ``""`` when nothing), sorted by path."""
        listed = [e for e in model.manifest.files if _safe(e.path)]
        if not upstream_written(model.manifest, model.metadata):
            return listed
        by_path = {e.path: e for e in listed}
        skip = housekeeping_names(model.ref, model.manifest)
        for rel in walk_files(model.path, skip_top=skip - set(by_path)):
            if rel not in by_path and _safe(rel):
                by_path[rel] = FileEntry(rel, 0, "")
        return [by_path[p] for p in sorted(by_path)]

    def checked_manifest(
        self, ref: ModelRef | str, *, full: bool = False, on_bytes: OnBytes | None = None
    ) -> Manifest:
        """A strict manifest of the cached model, every listed file checked against its bytes.

        Missing sizes/digests (upstream manifests) are filled in; any missing or mismatching
        file raises :class:`IntegrityError` listing each one. Cheap when nothing changed.
        """
        return self.checked(ref, full=full, on_bytes=on_bytes)[0]

    def checked(
        self,
        ref: ModelRef | str | CachedModel,
        *,
        full: bool = False,
        on_bytes: OnBytes | None = None,
    ) -> tuple[Manifest, dict[str, FileKey]]:
        """:meth:`checked_manifest`, and the identity (:func:`axon.hashing.file_key`) at
        which each file was found to hold its sha256, by relative path (a file that changed
        while it was read has none). One stat and one pass over the hash index per file.

        ``ref`` may be the model as :meth:`get` just returned it (its manifest is then not
        read again)."""
        model = ref if isinstance(ref, CachedModel) else self.get(ref)
        model.manifest.validate()
        entries = self.model_files(model)
        present, missing = _stat_files(model.path, entries)
        problems: builtins.list[str] = [f"missing: {p}" for p in missing]
        digests = self._hash(present, full=full, on_bytes=on_bytes)
        out: _Entries = []
        identities: dict[str, FileKey] = {}
        for entry in entries:
            got = digests.get(entry.path)
            if got is None:
                continue
            if (problem := entry.mismatch(got.size, got.sha256)) is not None:
                problems.append(f"corrupt: {problem}")
            elif got.key is not None:
                identities[entry.path] = got.key
            out.append(FileEntry(entry.path, got.size, got.sha256))
        if problems:
            raise IntegrityError(
                f"{model.ref}: {len(problems)} file(s) do not match the manifest: "
                + "; ".join(problems[:10])
                + (" ..." if len(problems) > 10 else ""),
                problems=problems,
                path=str(model.path),
                hint=f"run `axon verify {model.ref}` for details, or reinstall the model",
            )
        manifest = model.manifest.with_files(out)
        m = manifest.metadata
        if not (m.get("namespace") and m.get("name") and m.get("version")):
            manifest = manifest.with_identity(
                model.ref.namespace, model.ref.name, model.ref.version
            )
        return manifest.validate(strict=True), identities

    def check_no_overlap(self, ref: ModelRef) -> None:
        """Refuse ``ref`` when its directory would nest with another cached model's.

        A name may hold ``/``: ``n/b@v1`` lives at ``n/b/v1/`` and ``n/b/v1@x`` at
        ``n/b/v1/x/``, so installing either would write into, or replace, the other
        (:func:`modelpkg.layout.overlapping_model`). InvalidReferenceError (exit 4).
        """
        other = overlapping_model(str(self.models_dir), str(ref.relpath))
        if other is None:
            return
        try:
            named = str(ModelRef.from_parts(other.split("/")))
        except InvalidReferenceError:
            named = other
        if other.count("/") < len(ref.parts) - 1:
            clash = f"is inside that of the cached model {named}: installing it would write into it"
        else:
            clash = f"holds the cached model {named}: installing it would replace that model"
        raise InvalidReferenceError(
            f"cannot install {ref}: its directory {self.path_for(ref)} {clash}",
            path=str(self.models_dir / other),
            hint=f"install it under another name (--as), or remove the other model first: "
            f"axon uninstall {named}",
        )

    # ---- writing -------------------------------------------------------------------
    def write_package_files(
        self,
        staged: Path,
        ref: ModelRef,
        manifest: Manifest,
        *,
        source: str | None = None,
        origin: dict[str, str] | None = None,
        validated: bool = False,
    ) -> None:
        """Write ``manifest.yaml`` and ``.axon_metadata.json`` into a staged model dir.

        ``origin``: where the files came from (a Hub repo's ``url`` and ``revision``, the
        commit), recorded as ``source_url`` / ``source_revision``.
        ``validated``: the caller just validated ``manifest`` strictly (it is not again)."""
        if not validated:
            manifest.validate(strict=True)
        atomic_write_text(staged / MANIFEST_NAME, manifest.to_yaml(), durable=False)
        meta: dict[str, Any] = {
            "installed_at": _now_rfc3339(),
            "namespace": ref.namespace,
            "name": ref.name,
            "version": ref.version,
        }
        if source:
            meta["source"] = source
        for key, value in (origin or {}).items():
            meta[f"source_{key}"] = value
        atomic_write_text(staged / METADATA_NAME, json.dumps(meta, indent=2) + "\n", durable=False)

    def remember_digests(
        self, ref: ModelRef, files: _Entries, inodes: dict[str, tuple[int, int]] | None = None
    ) -> None:
        """After a commit, record digests under the final paths (rename keeps the inode).

        ``inodes`` (path -> (st_dev, st_ino) of the staged files) guards against a concurrent
        install of the same version that replaced ours meanwhile: its files are skipped.
        """
        base = self.path_for(ref)
        rows: builtins.list[tuple[str, FileKey, str]] = []
        for entry in files:
            p = base / entry.path
            try:
                st = p.stat()
            except OSError:
                continue
            if inodes is not None and inodes.get(entry.path) != (st.st_dev, st.st_ino):
                continue
            rows.append((absolute(p), file_key(st), entry.sha256))
        self.index.remember_many(rows)  # one transaction

    def clean_stale(self, max_age: float = 3600.0) -> builtins.list[Path]:
        """Remove staging dirs left by installs killed more than ``max_age`` seconds ago."""
        return clean_leftovers(self.models_dir, min_age=max_age)

    def uninstall(self, ref: ModelRef | str) -> Path:
        """Remove a model: renamed aside first (atomic to readers), then deleted."""
        ref, path = self._installed(ref)
        aside = staging_name(path, OLD_TAG)
        os.rename(path, aside)
        remove_tree(aside)
        self.index.forget_under(path)
        self._prune_empty(path.parent)
        return path

    def _prune_empty(self, directory: Path) -> None:
        while directory != self.models_dir and self.models_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
