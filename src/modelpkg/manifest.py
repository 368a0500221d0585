"""manifest.yaml: the Model Package Format (see docs/compatibility.md).

Read leniently, write strictly:

* Reading accepts every upstream variant: ``apiVersion: v1`` or ``axon.mlos.io/v1``,
  frameworks spelled ``PyTorch``, files with ``size: 0`` and an empty ``sha256`` (upstream
  writes those), JSON instead of YAML, unknown keys (kept as they are).
* :meth:`Manifest.validate` with ``strict=True`` (what we require of a manifest *we* write or
  publish) wants every file with its real size and a lowercase 64-hex sha256, relative
  normalised paths, no duplicates.

Unknown keys survive a load/dump round trip: the manifest is kept as the raw mapping, with
typed accessors for what axon uses. YAML timestamps (upstream writes ``created:`` and
``updated:`` unquoted, ``0001-01-01T00:00:00Z`` when unknown) are kept as the text they were
written as (:class:`~modelpkg.yamltext.Timestamp`, a ``str``): JSON carries that text, and
YAML gets a timestamp back, never a Python ``datetime`` no JSON encoder takes.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from modelpkg.errors import ManifestError
from modelpkg.layout import (
    MANIFEST_NAME as MANIFEST_NAME,  # re-exported: the file this module reads
)
from modelpkg.yamltext import TIMESTAMP_TAG, Timestamp, is_timestamp

API_VERSION = "axon.mlos.io/v1"
KNOWN_API_VERSIONS = {"v1", "axon.mlos.io/v1"}
EXECUTION_FORMATS = {"onnx", "gguf", "pytorch", "safetensors", "tensorflow", "tflite", "coreml"}
EXECUTION_FILE_TYPES = {"single", "encoder", "decoder", "text_encoder", "vision_encoder"}
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_PATH = 1024  # bytes of a file path (UTF-8)
MAX_NAME = 255  # bytes of one path segment: NAME_MAX of every filesystem we write to
MAX_SIZE = 2**63 - 1  # a file size must fit an off_t (int64)

_SHA256 = re.compile(r"[0-9a-f]{64}")
# an escape of half a surrogate pair (\ud800, \U0000DC00): JSON and YAML decode it to text
# that is not valid Unicode, which no file, YAML dump or answer can hold
_SURROGATE_ESCAPE = re.compile(r"\\(?:u|U0000)[dD][89a-fA-F]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 control characters and DEL
_BAD_SEGMENTS = frozenset(("", ".", ".."))
# values a manifest shares between copies: immutable (YAML's scalars, timestamps included)
_ATOMS = frozenset((str, int, float, bool, type(None), bytes, Timestamp))
# metadata fields the Model Package Format types as timestamps (Go ``time.Time`` upstream)
TIMESTAMP_FIELDS = ("created", "updated")


def check_relpath(path: str, *, field: str = "path", source: str | None = None) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a model dir, else raise.

    Refuses absolute paths, ``..``, ``.`` and empty segments, backslashes, NUL and control
    characters, and over-long paths: every one of these could write outside the model dir.
    Text that is not valid Unicode (a lone surrogate) and segments over NAME_MAX bytes are
    refused too: no filesystem could hold them.
    """
    why = _unsafe_why(path)
    if why is not None:
        raise _unsafe(path, why, field, source)
    return path


def _unsafe_why(path: object) -> str | None:
    """Why ``path`` is not a safe relative path (see :func:`check_relpath`); None if it is."""
    if not isinstance(path, str) or path == "":
        return "empty"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode (a lone surrogate)"
    if len(encoded) > MAX_PATH:
        return f"longer than {MAX_PATH} bytes"
    if _CONTROL.search(path):
        return "control character"
    if "\\" in path:
        return "backslash"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if not _BAD_SEGMENTS.isdisjoint(parts):
        return "'.', '..' or empty segment"
    # no segment is longer than the whole path
    if len(encoded) > MAX_NAME and any(len(p.encode("utf-8")) > MAX_NAME for p in parts):
        return f"a segment longer than {MAX_NAME} bytes"
    if parts[0] == MANIFEST_NAME and len(parts) == 1:
        return "manifest.yaml cannot list itself"
    return None


def _unsafe(path: object, why: str, field: str, source: str | None) -> ManifestError:
    return ManifestError(
        f"unsafe file path {path!r}: {why}",
        field=field,
        path=source,
        hint="file paths must be relative to the model directory, without '..'",
    )


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases: a manifest never needs ``*anchor`` references, and
    a few hundred bytes of nested aliases expand to gigabytes once copied or written as JSON
    (a "billion laughs" sent to mlos-core). An alias is a YAML error here. A timestamp is
    read as the :class:`Timestamp` text it was written as, not a ``datetime``."""
    import yaml

    fast, no_alias = _loaders()
    if "*" not in text:  # no alias possible: take libyaml's fast C loader when present
        return yaml.load(text, Loader=fast)  # a safe loader
    return yaml.load(text, Loader=no_alias)  # a SafeLoader subclass: safe


@functools.cache
def _loaders() -> tuple[Any, Any]:
    """(the fast safe loader, a safe loader refusing aliases), both reading timestamps as
    :class:`Timestamp`."""
    import yaml

    def timestamp(loader: Any, node: Any) -> Timestamp:
        return Timestamp(loader.construct_scalar(node))

    class FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases (*name) are not allowed in a manifest", mark
                )
            return super().compose_node(parent, index)

    for loader in (FastLoader, NoAliasLoader):
        loader.add_constructor(TIMESTAMP_TAG, timestamp)
    return FastLoader, NoAliasLoader


@functools.cache
def _dumpers() -> tuple[Any, Any]:
    """(libyaml's safe dumper when there is one, PyYAML's own), both writing a
    :class:`Timestamp` plain (a timestamp again) when it is one."""
    import yaml

    def timestamp(dumper: Any, value: Timestamp) -> Any:
        tag = TIMESTAMP_TAG if is_timestamp(value) else "tag:yaml.org,2002:str"
        return dumper.represent_scalar(tag, str(value))

    class FastDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
        pass

    class PyDumper(yaml.SafeDumper):
        pass

    for dumper in (FastDumper, PyDumper):
        dumper.add_representer(Timestamp, timestamp)
    return FastDumper, PyDumper


def _timestamp_text(value: datetime.date) -> Timestamp:
    """A ``datetime``/``date`` (from a caller's own YAML parse) as RFC 3339 text, ``Z`` for
    UTC, as the upstream Go axon writes it."""
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        if value.utcoffset() == datetime.timedelta(0):
            text = text.removesuffix("+00:00") + "Z"
        return Timestamp(text)
    return Timestamp(value.isoformat())


def _with_timestamps(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``metadata.created`` / ``updated`` that are timestamp text (JSON carries
    them as strings) as :class:`Timestamp`, written plain as upstream writes them; ``data``
    itself when there is nothing to change."""
    meta = data.get("metadata")
    if type(meta) is not dict:
        return data
    changed = {
        key: Timestamp(value)
        for key in TIMESTAMP_FIELDS
        if type(value := meta.get(key)) is str and is_timestamp(value)
    }
    return {**data, "metadata": {**meta, **changed}} if changed else data


def _is_unicode(data: Any) -> bool:
    """Every string in ``data`` is valid Unicode (a valid surrogate pair decodes to one
    character; half of one stays a lone surrogate)."""
    try:
        json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except (RecursionError, ValueError, TypeError):
        return True  # not this check's business: the shape checks refuse it
    return True


def _copied(node: Any) -> Any:
    """A deep copy of manifest data: mappings and lists copied, immutable scalars shared
    (``copy.deepcopy`` took most of a 3,000-file manifest's handling). Anything else (a set, a
    custom mapping) goes through ``copy.deepcopy``; RecursionError for data nested too deeply."""
    kind = type(node)
    if kind is dict:
        return {key: _copied(value) for key, value in node.items()}
    if kind is list:
        return [_copied(value) for value in node]
    if kind in _ATOMS:
        return node
    if isinstance(node, datetime.date):  # datetime too: a subclass
        return _timestamp_text(node)
    return copy.deepcopy(node)


def _replaced(data: Mapping[str, Any], keys: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``data`` (:func:`_copied`) with ``value`` at the path ``keys``, made a mapping
    on the way where it is not a dict; what ``value`` replaces is not copied."""
    head = keys[0]
    out = {key: item if key == head else _copied(item) for key, item in data.items()}
    if len(keys) == 1:
        out[head] = value
    else:
        inner = out.get(head)
        out[head] = _replaced(inner if isinstance(inner, dict) else {}, keys[1:], value)
    return out


def _is_size(value: object) -> TypeGuard[int]:
    """An int (a subclass too) that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object) -> str | None:
    """A manifest value as text (YAML reads ``version: 2`` as a number); None when absent."""
    return str(value) if value is not None else None


@dataclass(frozen=True)
class FileEntry:
    """One file of a model: relative POSIX path, size in bytes, lowercase sha256 hex."""

    path: str
    size: int
    sha256: str

    @property
    def known(self) -> bool:
        """True when size and sha256 are real (upstream manifests may have 0 and '')."""
        return bool(_SHA256.fullmatch(self.sha256))

    def mismatch(self, size: int, sha256: str) -> str | None:
        """Why a file of ``size`` bytes hashing to ``sha256`` is not this entry ("w.bin: size
        11, manifest says 10"); None when it is (or the entry does not say)."""
        if self.size and size != self.size:
            return f"{self.path}: size {size}, manifest says {self.size}"
        if self.known and sha256 != self.sha256:
            return f"{self.path}: sha256 {sha256[:12]}... does not match the manifest"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


class Manifest:
    """A model manifest. ``data`` is the raw mapping; accessors read the parts axon uses."""

    def __init__(self, data: Mapping[str, Any], *, source: str | None = None) -> None:
        if not isinstance(data, Mapping):
            raise ManifestError(
                f"top level is {type(data).__name__}, expected a mapping", path=source
            )
        try:
            copied = _copied(data)
        except RecursionError:  # hostile input nested thousands deep, or a cycle
            try:
                copied = copy.deepcopy(data)  # a cycle is copied as one
            except RecursionError:
                raise ManifestError("nested too deeply to be a manifest", path=source) from None
        self.data: dict[str, Any] = copied if type(copied) is dict else dict(copied)
        self.source = source

    @classmethod
    def _adopt(cls, data: dict[str, Any], *, source: str | None = None) -> Manifest:
        """A manifest holding ``data`` itself, not a copy: only for a dict just built that no
        one else holds (a parse's result, a copy made here)."""
        manifest = cls.__new__(cls)
        manifest.data = data
        manifest.source = source
        return manifest

    # ---- loading -------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str | bytes, *, source: str | None = None) -> Manifest:
        """Parse YAML (or JSON, which is YAML too) text; errors name ``source``."""
        if isinstance(text, bytes):
            if len(text) > MAX_MANIFEST_BYTES:
                raise ManifestError("larger than 16 MiB", path=source)
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"not UTF-8 text ({exc})", path=source) from exc
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError("larger than 16 MiB", path=source)
        import yaml  # here, not at the top: `axon --help` must not pay for it

        from modelpkg import yamltext

        try:
            if text.lstrip().startswith("{"):
                data = json.loads(text)
            else:  # the text PyYAML writes is read without it (checked), anything else with it
                data = yamltext.load(text)
                if data is None:
                    data = _load_yaml(text)
        # ValueError: an integer of more digits than Python converts (sys.int_max_str_digits)
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise ManifestError(
                f"not valid YAML/JSON: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                path=source,
                hint="fix the syntax, or regenerate it with `axon install`",
            ) from exc
        if data is None:
            raise ManifestError("empty manifest", path=source)
        if _SURROGATE_ESCAPE.search(text) and not _is_unicode(data):
            raise ManifestError(
                "holds text that is not valid Unicode (an escape such as \\ud800 that is half "
                "of a surrogate pair)",
                path=source,
            )
        if type(data) is dict:  # the parser's own: no copy needed
            return cls._adopt(data, source=source)
        return cls(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Load ``path`` (a manifest.yaml file, or a model directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        try:
            with p.open("rb") as fh:
                raw = fh.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError as exc:
            raise ManifestError("no manifest.yaml", path=str(p)) from exc
        except OSError as exc:
            raise ManifestError(f"cannot read: {exc.strerror}", path=str(p)) from exc
        return cls.from_text(raw, source=str(p))

    @classmethod
    def new(
        cls,
        *,
        namespace: str,
        name: str,
        version: str,
        files: Iterable[FileEntry],
        framework: str | None = None,
        framework_version: str | None = None,
        execution_format: str | None = None,
        description: str | None = None,
        extra_spec: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """A fresh, strict manifest for files we have hashed ourselves."""
        fmt: dict[str, Any] = {"type": execution_format or "unknown"}
        if execution_format:
            fmt["execution_format"] = execution_format
        fmt["files"] = [f.to_dict() for f in sorted(files, key=lambda f: f.path)]
        spec: dict[str, Any] = {"format": fmt}
        if framework:
            spec["framework"] = {"name": framework, "version": framework_version or ""}
        if extra_spec:
            spec.update(copy.deepcopy(dict(extra_spec)))
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "version": version}
        if description:
            metadata["description"] = description
        return cls({"apiVersion": API_VERSION, "kind": "Model", "metadata": metadata, "spec": spec})

    # ---- accessors -----------------------------------------------------------------
    def _section(self, *keys: str) -> dict[str, Any]:
        node: Any = self.data
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        return node if isinstance(node, dict) else {}

    @property
    def metadata(self) -> dict[str, Any]:
        return self._section("metadata")

    @property
    def namespace(self) -> str | None:
        return _text(self.metadata.get("namespace"))

    @property
    def name(self) -> str | None:
        return _text(self.metadata.get("name"))

    @property
    def version(self) -> str | None:
        return _text(self.metadata.get("version"))

    @property
    def framework(self) -> str | None:
        fw = self._section("spec").get("framework")
        return _text(fw.get("name") if isinstance(fw, Mapping) else fw)

    @property
    def execution_format(self) -> str | None:
        fmt = self._section("spec", "format")
        value = fmt.get("execution_format") or fmt.get("type")
        return str(value).lower() if value else None

    @property
    def files(self) -> list[FileEntry]:
        """The listed files. Lenient: missing size/sha256 become 0 / ''."""
        out = []
        for item in self._section("spec", "format").get("files") or []:
            if type(item) is not dict and not isinstance(item, Mapping):
                continue
            path, size, sha = item.get("path", ""), item.get("size"), item.get("sha256")
            out.append(
                FileEntry(
                    path if type(path) is str else str(path),
                    size if type(size) is int or _is_size(size) else 0,
                    sha.lower() if isinstance(sha, str) else "",
                )
            )
        return out

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def with_files(self, files: Iterable[FileEntry]) -> Manifest:
        """A copy whose ``spec.format.files`` is replaced (sorted by path)."""
        listed = [f.to_dict() for f in sorted(files, key=lambda f: f.path)]
        data = _replaced(self.data, ("spec", "format", "files"), listed)
        return Manifest._adopt(data, source=self.source)

    def with_identity(self, namespace: str, name: str, version: str) -> Manifest:
        meta = self.data.get("metadata")
        meta = _copied(meta) if isinstance(meta, dict) else {}
        meta.update({"namespace": namespace, "name": name, "version": version})
        return Manifest._adopt(_replaced(self.data, ("metadata",), meta), source=self.source)

    def as_uploaded(self, namespace: str, name: str, version: str) -> Manifest:
        """The manifest an upload to mlos-core stores for ``namespace/name@version``: the
        identity from the model id, ``apiVersion`` and ``kind`` filled in when missing, as
        JSON carries it (docs/upload-protocol.md)."""
        meta = self.data.get("metadata")
        identity = {"namespace": namespace, "name": name, "version": version}
        meta = {**meta, **identity} if isinstance(meta, dict) else identity
        # JSON's own copy (nothing is shared with self): only the metadata needs replacing
        data = json.loads(json.dumps({**self.data, "metadata": meta}, default=str))
        data.setdefault("apiVersion", API_VERSION)
        data.setdefault("kind", "Model")
        return Manifest._adopt(data, source=self.source)

    def digest(self) -> str:
        """sha256 of the manifest as canonical JSON (keys sorted, no spaces, ASCII): how the
        upload protocol names the manifest a commit made visible (docs/upload-protocol.md)."""
        plain = json.loads(json.dumps(self.data, default=str))  # keys as JSON has them
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    # ---- validation ----------------------------------------------------------------
    def problems(self, *, strict: bool = False) -> list[ManifestError]:
        """Every problem found, each naming the field. Empty list: the manifest is valid."""
        src = self.source
        errs: list[ManifestError] = []

        def err(field: str, message: str, hint: str | None = None) -> None:
            errs.append(ManifestError(message, field=field, path=src, hint=hint))

        api = self.data.get("apiVersion")
        if api is not None and (not isinstance(api, str) or api not in KNOWN_API_VERSIONS):
            err("apiVersion", f"unknown apiVersion {api!r}", f"use {API_VERSION!r}")
        if strict and api is None:
            err("apiVersion", "missing", f"use {API_VERSION!r}")
        kind = self.data.get("kind")
        if kind is not None and kind != "Model":
            err("kind", f"is {kind!r}, expected 'Model'")
        for key in ("metadata", "spec"):
            if key in self.data and not isinstance(self.data[key], Mapping):
                err(key, f"must be a mapping, got {type(self.data[key]).__name__}")
        if strict:
            for key in ("name", "namespace", "version"):
                if not self.metadata.get(key):
                    err(f"metadata.{key}", "missing")
        fmt = self._section("spec", "format")
        xf = fmt.get("execution_format")
        if xf and str(xf).lower() not in EXECUTION_FORMATS:
            err(
                "spec.format.execution_format",
                f"unknown format {xf!r}",
                f"one of {', '.join(sorted(EXECUTION_FORMATS))}",
            )
        raw_files = fmt.get("files")
        if raw_files is None:
            raw_files = []
            if strict:
                err("spec.format.files", "missing: a published model must list its files")
        if not isinstance(raw_files, list):
            err("spec.format.files", f"must be a list, got {type(raw_files).__name__}")
            return errs
        # one pass over the files, with nothing built for a valid entry (3,000 files: ~5 ms)
        seen: set[str] = set()
        total = 0
        lower = str.lower
        fullmatch = _SHA256.fullmatch
        for i, item in enumerate(raw_files):
            if type(item) is not dict and not isinstance(item, Mapping):
                err(
                    f"spec.format.files[{i}]",
                    f"must be a mapping with path/size/sha256, got {item!r:.60}",
                )
                continue
            path = item.get("path")
            why = _unsafe_why(path)
            if why is not None:
                errs.append(_unsafe(path, why, f"spec.format.files[{i}].path", src))
                continue
            if path in seen:
                err(f"spec.format.files[{i}].path", f"duplicate path {path!r}")
            seen.add(path)  # type: ignore[arg-type]  # a str: _unsafe_why said so
            size, sha = item.get("size"), item.get("sha256")
            if type(size) is int and 0 <= size <= MAX_SIZE:
                total += size
            elif size is not None and (not isinstance(size, int) or isinstance(size, bool)):
                err(f"spec.format.files[{i}].size", f"must be an integer, got {size!r:.40}")
            elif isinstance(size, int) and size < 0:
                err(f"spec.format.files[{i}].size", f"negative size {size}")
            elif isinstance(size, int) and size > MAX_SIZE:
                err(f"spec.format.files[{i}].size", f"larger than {MAX_SIZE} bytes (2^63 - 1)")
            elif isinstance(size, int):
                total += size  # an int subclass within range
            elif strict and size is None:
                err(f"spec.format.files[{i}].size", f"missing for {path!r}")
            if type(sha) is str and sha and fullmatch(sha):
                pass  # lowercase 64-hex: the common case
            elif sha not in (None, "") and not (isinstance(sha, str) and fullmatch(lower(sha))):
                err(f"spec.format.files[{i}].sha256", f"not a sha256 hex digest: {sha!r:.80}")
            elif strict and isinstance(sha, str) and sha and sha != lower(sha):
                err(f"spec.format.files[{i}].sha256", "must be lowercase hex")
            elif strict and not sha:
                err(
                    f"spec.format.files[{i}].sha256",
                    f"missing for {path!r}",
                    "run `axon verify --full` or reinstall",
                )
        # a file and a directory of the same name cannot both exist (the paths are checked:
        # relative, normalised, so a parent is the text before the last '/')
        for path in seen:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in seen:
                    err("spec.format.files", f"{parent!r} is both a file and a directory")
                parent = parent.rpartition("/")[0]
        if not errs and total > MAX_SIZE:
            err("spec.format.files", f"the files add up to more than {MAX_SIZE} bytes")
        return errs

    def validate(self, *, strict: bool = False) -> Manifest:
        """Raise the first problem (with a count of the rest); return self when valid."""
        errs = self.problems(strict=strict)
        if errs:
            first = errs[0]
            if len(errs) > 1:
                first.message += f" (and {len(errs) - 1} more problem(s))"
            raise first
        return self

    # ---- writing -------------------------------------------------------------------
    def to_yaml(self) -> str:
        from modelpkg import yamltext

        data = _with_timestamps(self.data)
        text = yamltext.dump(data)  # PyYAML's text, written without its representer
        if text is not None:
            return text
        import yaml

        # libyaml's emitter when there is one: the same text, 3x faster (65,000 files: 4 s);
        # it cannot write text that is not valid Unicode (a lone surrogate), the Python one can
        fast, python = _dumpers()
        try:
            return yaml.dump(data, Dumper=fast, sort_keys=False, allow_unicode=True)
        except UnicodeEncodeError:
            return yaml.dump(data, Dumper=python, sort_keys=False, allow_unicode=True)

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=False, default=str)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Manifest) and self.data == other.data

    def __repr__(self) -> str:
        return f"Manifest({self.namespace}/{self.name}@{self.version}, {len(self.files)} files)"
