"""manifest.yaml: the Model Package Format (see docs/compatibility.md).

Read leniently, write strictly:

* Reading accepts every upstream variant: ``apiVersion: v1`` or ``axon.mlos.io/v1``,
  frameworks spelled ``PyTorch``, files with ``size: 0`` and an empty ``sha256`` (upstream
  writes those), JSON instead of YAML, unknown keys (kept as they are).
* :meth:`Manifest.validate` with ``strict=True`` (what we require of a manifest *we* write or
  publish) wants every file with its real size and a lowercase 64-hex sha256, relative
  normalised paths, no duplicates.

Unknown keys survive a load/dump round trip: the manifest is kept as the raw mapping, with
typed accessors for what axon uses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modelpkg.errors import ManifestError
from modelpkg.layout import (
    MANIFEST_NAME as MANIFEST_NAME,  # re-exported: the file this module reads
)

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


def check_relpath(path: str, *, field: str = "path", source: str | None = None) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a model dir, else raise.

    Refuses absolute paths, ``..``, ``.`` and empty segments, backslashes, NUL and control
    characters, and over-long paths: every one of these could write outside the model dir.
    Text that is not valid Unicode (a lone surrogate) and segments over NAME_MAX bytes are
    refused too: no filesystem could hold them.
    """

    def bad(why: str) -> ManifestError:
        return ManifestError(
            f"unsafe file path {path!r}: {why}",
            field=field,
            path=source,
            hint="file paths must be relative to the model directory, without '..'",
        )

    if not isinstance(path, str) or path == "":
        raise bad("empty")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise bad("not valid Unicode (a lone surrogate)") from None
    if len(encoded) > MAX_PATH:
        raise bad(f"longer than {MAX_PATH} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise bad("control character")
    if "\\" in path:
        raise bad("backslash")
    if path.startswith("/"):
        raise bad("absolute path")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bad("'.', '..' or empty segment")
    if any(len(p.encode("utf-8")) > MAX_NAME for p in parts):
        raise bad(f"a segment longer than {MAX_NAME} bytes")
    if parts[0] == MANIFEST_NAME and len(parts) == 1:
        raise bad("manifest.yaml cannot list itself")
    return path


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases: a manifest never needs ``*anchor`` references, and
    a few hundred bytes of nested aliases expand to gigabytes once copied or written as JSON
    (a "billion laughs" sent to mlos-core). An alias is a YAML error here."""
    import yaml

    if "*" not in text:  # no alias possible: take libyaml's fast C loader when present
        fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(text, Loader=fast)  # a safe loader

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases (*name) are not allowed in a manifest", mark
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliasLoader)  # a SafeLoader subclass: safe


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
            self.data: dict[str, Any] = dict(copy.deepcopy(data))
        except RecursionError:  # hostile input nested thousands deep
            raise ManifestError("nested too deeply to be a manifest", path=source) from None
        self.source = source

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

        try:
            data = json.loads(text) if text.lstrip().startswith("{") else _load_yaml(text)
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
            if not isinstance(item, Mapping):
                continue
            size = item.get("size")
            sha = item.get("sha256")
            out.append(
                FileEntry(
                    path=str(item.get("path", "")),
                    size=size if isinstance(size, int) and not isinstance(size, bool) else 0,
                    sha256=sha.lower() if isinstance(sha, str) else "",
                )
            )
        return out

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def with_files(self, files: Iterable[FileEntry]) -> Manifest:
        """A copy whose ``spec.format.files`` is replaced (sorted by path)."""
        data = copy.deepcopy(self.data)
        spec = data.setdefault("spec", {})
        if not isinstance(spec, dict):
            spec = data["spec"] = {}
        fmt = spec.setdefault("format", {})
        if not isinstance(fmt, dict):
            fmt = spec["format"] = {}
        fmt["files"] = [f.to_dict() for f in sorted(files, key=lambda f: f.path)]
        return Manifest(data, source=self.source)

    def with_identity(self, namespace: str, name: str, version: str) -> Manifest:
        data = copy.deepcopy(self.data)
        meta = data.setdefault("metadata", {})
        if not isinstance(meta, dict):
            meta = data["metadata"] = {}
        meta.update({"namespace": namespace, "name": name, "version": version})
        return Manifest(data, source=self.source)

    def as_uploaded(self, namespace: str, name: str, version: str) -> Manifest:
        """The manifest an upload to mlos-core stores for ``namespace/name@version``: the
        identity from the model id, ``apiVersion`` and ``kind`` filled in when missing, as
        JSON carries it (docs/upload-protocol.md)."""
        data = json.loads(
            json.dumps(self.with_identity(namespace, name, version).data, default=str)
        )
        data.setdefault("apiVersion", API_VERSION)
        data.setdefault("kind", "Model")
        return Manifest(data, source=self.source)

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
        seen: set[str] = set()
        for i, item in enumerate(raw_files):
            field = f"spec.format.files[{i}]"
            if not isinstance(item, Mapping):
                err(field, f"must be a mapping with path/size/sha256, got {item!r:.60}")
                continue
            path = item.get("path")
            try:
                check_relpath(path, field=f"{field}.path", source=src)  # type: ignore[arg-type]
            except ManifestError as exc:
                errs.append(exc)
                continue
            if path in seen:
                err(f"{field}.path", f"duplicate path {path!r}")
            seen.add(path)  # type: ignore[arg-type]
            size, sha = item.get("size"), item.get("sha256")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
                err(f"{field}.size", f"must be an integer, got {size!r:.40}")
            elif isinstance(size, int) and size < 0:
                err(f"{field}.size", f"negative size {size}")
            elif isinstance(size, int) and size > MAX_SIZE:
                err(f"{field}.size", f"larger than {MAX_SIZE} bytes (2^63 - 1)")
            elif strict and size is None:
                err(f"{field}.size", f"missing for {path!r}")
            if sha not in (None, "") and not (
                isinstance(sha, str) and _SHA256.fullmatch(sha.lower())
            ):
                err(f"{field}.sha256", f"not a sha256 hex digest: {sha!r:.80}")
            elif strict and isinstance(sha, str) and sha and sha != sha.lower():
                err(f"{field}.sha256", "must be lowercase hex")
            elif strict and not sha:
                err(
                    f"{field}.sha256",
                    f"missing for {path!r}",
                    "run `axon verify --full` or reinstall",
                )
        # a file and a directory of the same name cannot both exist
        for path in seen:
            parent = PurePosixPath(path).parent
            while str(parent) != ".":
                if str(parent) in seen:
                    err("spec.format.files", f"{str(parent)!r} is both a file and a directory")
                parent = parent.parent
        if not errs and self.total_size > MAX_SIZE:
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
        import yaml

        # libyaml's emitter when there is one: the same text, 3x faster (65,000 files: 4 s);
        # it cannot write text that is not valid Unicode (a lone surrogate), the Python one can
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        try:
            return yaml.dump(self.data, Dumper=dumper, sort_keys=False, allow_unicode=True)
        except UnicodeEncodeError:
            return yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=False, default=str)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Manifest) and self.data == other.data

    def __repr__(self) -> str:
        return f"Manifest({self.namespace}/{self.name}@{self.version}, {len(self.files)} files)"
