"""One model's runtime: which file of a version runs, its ONNX Runtime session, and the
checks every input passes before it reaches the session.

Only ONNX models run here (CPU, :mod:`onnxruntime`, the ``inference`` extra). A model in
another format (safetensors, GGUF, PyTorch, ...) is refused with
:class:`~mlos_core.errors.NotSupported` saying what to publish instead.

A session is built from the version directory opened once (``/proc/self/fd/N/...``): an
atomic re-publish that swaps the directory while the session loads cannot hand it the old
graph and the new external weights. Inputs are checked against the graph's declared names,
element types and shapes (a 400 naming the input and what it takes); an input one axis short
of a graph whose first axis is a batch gets that axis (upstream clients send one unbatched
example: ``{"input_ids": [101, 2023, 102]}``).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlos_core.errors import BadRequest, NotSupported, TooLarge, Unprocessable

MODEL_FILE = "model.onnx"
MiB = 1024 * 1024
MAX_OUTPUT_BYTES = 256 * MiB  # the outputs of one request (its memory, before any JSON)
# file suffixes of formats without a runtime here -> the name users know them by
OTHER_FORMATS = {
    ".safetensors": "safetensors",
    ".gguf": "GGUF",
    ".bin": "PyTorch (.bin)",
    ".pt": "PyTorch",
    ".pth": "PyTorch",
    ".ckpt": "a checkpoint",
    ".h5": "Keras (.h5)",
    ".keras": "Keras",
    ".pb": "TensorFlow",
    ".tflite": "TensorFlow Lite",
    ".mlmodel": "Core ML",
    ".mlpackage": "Core ML",
}
EXPORT_HINT = (
    "mlos-core runs ONNX models only: export it to ONNX (e.g. `optimum-cli export onnx` or "
    "torch.onnx.export), put the model.onnx in the package and publish that"
)

# ONNX element types (as onnxruntime spells them) -> numpy dtypes
DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}

Dim = int | str | None  # a fixed size, a named dynamic axis, or an unnamed one


def runtime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class TensorSpec:
    """One declared input or output of a graph."""

    name: str
    dtype: np.dtype[Any] | None  # None: a type this server does not feed (strings, maps)
    type_name: str  # as onnxruntime names it: tensor(int64)
    shape: tuple[Dim, ...]

    def shown_shape(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        kind = self.dtype.name if self.dtype is not None else self.type_name
        return f"{self.name} ({kind} {self.shown_shape()})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype.name if self.dtype is not None else self.type_name,
            "shape": list(self.shape),
        }

    @property
    def batched(self) -> bool:
        """Is the first axis a batch (dynamic, or 1)?"""
        return bool(self.shape) and (not isinstance(self.shape[0], int) or self.shape[0] == 1)


def find_model_file(model_dir: Path, model_id: str) -> str:
    """The path (relative to ``model_dir``) of the ONNX file to run; NotSupported when the
    version holds none (naming the format it does hold), or several with none named
    ``model.onnx`` at its top."""
    onnx: list[str] = []
    others: set[str] = set()
    for rel in _files(model_dir):
        suffix = os.path.splitext(rel)[1].lower()
        if suffix == ".onnx":
            onnx.append(rel)
        elif suffix in OTHER_FORMATS:
            others.add(OTHER_FORMATS[suffix])
    if MODEL_FILE in onnx:
        return MODEL_FILE
    if len(onnx) == 1:
        return onnx[0]
    if onnx:
        listed = ", ".join(sorted(onnx)[:5])
        raise NotSupported(
            f"model {model_id} has {len(onnx)} ONNX files ({listed}) and none is "
            f"{MODEL_FILE} at its top: mlos-core runs one graph per model (an encoder + "
            "decoder pair has no runtime here); publish the graph to run as model.onnx",
            code="format_not_supported",
        )
    held = ", ".join(sorted(others)) if others else "no model file this server knows"
    raise NotSupported(
        f"model {model_id} is in a format without a runtime on this instance ({held}); "
        + EXPORT_HINT,
        code="format_not_supported",
    )


def _files(model_dir: Path) -> Iterator[str]:
    """Relative paths of the regular files under ``model_dir``, links not followed, hidden
    entries skipped."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(model_dir / rel if rel else model_dir))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                yield path


def identity(model_dir: Path, rel: str) -> tuple[int, ...]:
    """What changes when the version is replaced: the directory (a publish renames a new one
    into place) and the model file (a copy over it). OSError when either is gone."""
    d = os.stat(model_dir)
    f = os.stat(model_dir / rel)
    return (d.st_dev, d.st_ino, d.st_mtime_ns, f.st_ino, f.st_size, f.st_mtime_ns)


class OnnxModel:
    """One loaded graph: its session, declared inputs and outputs."""

    def __init__(self, model_id: str, model_dir: Path, rel: str, *, threads: int) -> None:
        import onnxruntime as ort

        self.model_id = model_id
        self.rel = rel
        started = time.perf_counter()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: warnings about the graph are not ours
        # idle intra-op threads sleep rather than spin: they share the cores with the event
        # loop and the other runs (spinning doubled latency on two busy cores)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with _pinned_dir(model_dir) as base:
            self.identity = identity(base, rel)
            try:
                self.session = ort.InferenceSession(
                    str(base / rel), sess_options=opts, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own classes for a bad graph
                raise Unprocessable(
                    f"model {model_id}: {rel} is not an ONNX graph onnxruntime can load "
                    f"({_short(exc).replace(str(base), '<model>')}); publish a valid ONNX file",
                    code="invalid_model_file",
                ) from None
        self.load_seconds = time.perf_counter() - started
        self.inputs = tuple(_spec(a) for a in self.session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self.session.get_outputs())
        self.output_names = [o.name for o in self.outputs]
        self._by_name = {i.name: i for i in self.inputs}
        self.batcher: Any = None  # this session's request queue, with --max-batch

    def signature(self) -> dict[str, Any]:
        return {
            "file": self.rel,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
        }

    def takes(self) -> str:
        return ", ".join(i.describe() for i in self.inputs)

    # ---- inputs -------------------------------------------------------------------------
    def feeds(self, body: Mapping[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """The request's named tensors as arrays of the declared types and shapes; BadRequest
        naming the input and what the model takes otherwise."""
        unknown = [k for k in body if k not in self._by_name]
        if unknown:
            raise BadRequest(
                f"model {self.model_id} has no input named {unknown[0]!r}; it takes: "
                f"{self.takes()}",
                code="invalid_input",
            )
        missing = [i.name for i in self.inputs if i.name not in body]
        if missing:
            raise BadRequest(
                f"input {missing[0]!r} is missing; model {self.model_id} takes: {self.takes()}",
                code="invalid_input",
            )
        feeds = {i.name: to_array(i, body[i.name], where=f"input {i.name!r}") for i in self.inputs}
        sizes = self.check_axes(feeds, where="input")
        out = self.output_bytes(sizes)
        if out is not None and out > MAX_OUTPUT_BYTES:
            raise TooLarge(
                f"the outputs of model {self.model_id} for this request would take "
                f"{out / MiB:.0f} MiB, over this server's {MAX_OUTPUT_BYTES // MiB} MiB for one "
                "request: send fewer or shorter examples at once",
                code="outputs_too_large",
            )
        return feeds

    def check_axes(
        self, arrays: Mapping[str, np.ndarray[Any, Any]], *, where: str
    ) -> dict[str, int]:
        """Named dynamic axes (``batch``, ``sequence``) have one size across the inputs; their
        sizes."""
        seen: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            arr = arrays[spec.name]
            for axis, dim in enumerate(spec.shape):
                if not isinstance(dim, str):
                    continue
                size = arr.shape[axis]
                if dim in seen and seen[dim][0] != size:
                    other = seen[dim][1]
                    raise BadRequest(
                        f"{where} {spec.name!r} has {size} along axis {axis} ({dim!r}) but "
                        f"{where} {other!r} has {seen[dim][0]}: the model takes one {dim!r} "
                        f"for all its inputs ({self.takes()})",
                        code="invalid_input",
                    )
                seen.setdefault(dim, (size, spec.name))
        return {dim: size for dim, (size, _) in seen.items()}

    def output_bytes(self, sizes: Mapping[str, int]) -> int | None:
        """What the outputs take for inputs whose named axes have ``sizes``; None when an
        output's size cannot be told before running (an axis the inputs do not name)."""
        total = 0
        for spec in self.outputs:
            if spec.dtype is None:
                return None
            n = 1
            for dim in spec.shape:
                if isinstance(dim, int):
                    n *= dim
                elif isinstance(dim, str) and dim in sizes:
                    n *= sizes[dim]
                else:
                    return None
            total += n * spec.dtype.itemsize
        return total

    # ---- running ------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """The outputs for ``feeds`` (blocking: call it in the inference pool). The runtime's
        refusal of a value (a token id past the vocabulary) is a 400; any other failure a 422,
        each with the runtime's own words, bounded (they may quote the caller's inputs: this
        is for a caller's own request, never for a dataset's rows)."""
        try:
            return self.run_raw(feeds)
        except RunFailed as exc:
            if exc.invalid:
                raise BadRequest(
                    f"model {self.model_id} refused the input: {exc.text}",
                    code="invalid_input",
                ) from None
            raise Unprocessable(
                f"model {self.model_id} failed on this input: {exc.text}",
                code="inference_failed",
            ) from None

    def run_raw(self, feeds: Mapping[str, np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """As :meth:`run`, a failure raised as :class:`RunFailed` (the runtime's words apart
        from what names the failing node), for a caller that must not answer them."""
        try:
            out = self.session.run(self.output_names, dict(feeds))
        except Exception as exc:
            raise RunFailed(exc) from None
        return [np.asarray(o) for o in out]


class RunFailed(Exception):
    """onnxruntime failed on an input: ``invalid`` (it refused a value: a 400) or not (a 422);
    ``text``: its own words, bounded; ``node`` and ``op``: the failing node, when it says."""

    def __init__(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.invalid = kind in ("InvalidArgument", "InvalidProtobuf") or "INVALID_ARGUMENT" in str(
            exc
        )
        self.text = _short(exc)
        found = _NODE.search(str(exc))
        self.op: str | None = found.group(1) if found else None
        self.node: str | None = found.group(2)[:200] if found else None
        super().__init__(self.text)

    def where(self) -> str:
        """The failing node as messages name it ("in node 'x' (Gather)"), or ""."""
        if self.node is None:
            return ""
        return f" in node {self.node!r} ({self.op})"


# onnxruntime: "Non-zero status code returned while running Gather node. Name:'/emb/Gather' ..."
_NODE = re.compile(r"while running (\w+) node\. Name:'([^']*)'")


@contextlib.contextmanager
def _pinned_dir(model_dir: Path) -> Iterator[Path]:
    """``model_dir`` as a path through an open descriptor: every file read below it comes
    from the directory as it was when opened, whatever is renamed over the path meanwhile."""
    try:
        fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise Unprocessable(f"model directory unreadable: {exc.strerror}") from None
    try:
        proc = Path(f"/proc/self/fd/{fd}")
        yield proc if proc.is_dir() else model_dir
    finally:
        os.close(fd)


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int | str) else None for d in (arg.shape or []))
    return TensorSpec(arg.name, DTYPES.get(arg.type), arg.type, shape)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    # onnxruntime prefixes "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_array(
    spec: TensorSpec, value: Any, *, where: str, echo: bool = True
) -> np.ndarray[Any, Any]:
    """``value`` (nested lists, or an array read from a dataset) as an array of ``spec``'s
    element type and shape; BadRequest naming ``where`` and what ``spec`` takes (and, with
    ``echo``, the value out of range: never for a dataset's rows)."""
    if spec.dtype is None:
        raise NotSupported(
            f"{where}: the model takes {spec.type_name}, which this server cannot feed",
            code="input_type_not_supported",
        )
    takes = f"the model's input {spec.name!r} takes {spec.dtype.name} {spec.shown_shape()}"
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, RecursionError):
            raise BadRequest(
                f"{where} is not a rectangular array (rows of different lengths?); {takes}",
                code="invalid_input",
            ) from None
    kind = arr.dtype.kind
    if kind not in "biuf" or (kind == "f" and spec.dtype.kind in "biu"):
        got = {"f": "numbers with fractions", "U": "strings", "O": "mixed values"}.get(
            kind, f"{arr.dtype.name} values"
        )
        if arr.size == 0 and kind == "f":  # [] arrives as float64
            arr = arr.astype(spec.dtype)
        else:
            raise BadRequest(f"{where} holds {got}; {takes}", code="invalid_input")
    if spec.dtype.kind in "iu" and kind in "iu" and arr.size:
        info = np.iinfo(spec.dtype)
        low, high = arr.min(), arr.max()
        if low < info.min or high > info.max:
            value_shown = f"{low if low < info.min else high}," if echo else "a value"
            raise BadRequest(
                f"{where} holds {value_shown} outside {spec.dtype.name}; {takes}",
                code="invalid_input",
            )
    if spec.dtype.kind == "b" and kind in "iu" and arr.size and not np.isin(arr, (0, 1)).all():
        raise BadRequest(f"{where} holds values other than 0 and 1; {takes}", code="invalid_input")
    if arr.ndim == len(spec.shape) - 1 and spec.batched:
        arr = arr[np.newaxis, ...]  # one unbatched example, as upstream clients send it
    if arr.ndim != len(spec.shape):
        raise BadRequest(
            f"{where} has {arr.ndim} dimension(s) {list(arr.shape)}; {takes}",
            code="invalid_input",
        )
    for axis, (size, dim) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if isinstance(dim, int) and size != dim:
            raise BadRequest(
                f"{where} has shape {list(arr.shape)}, size {size} along axis {axis}; {takes}",
                code="invalid_input",
            )
    return np.ascontiguousarray(arr, dtype=spec.dtype)
