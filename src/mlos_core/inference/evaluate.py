"""Evaluation of a model on a dataset this instance holds: only aggregates leave it.

``mlos-core serve --datasets-dir DIR``: a dataset is a directory of ``.npz`` files,
``DIR/<name>/`` or, owned by a namespace, ``DIR/<namespace>/<name>/``. Each file holds one
array per input of the model (named as the model names it; first axis: the examples) and
``labels`` (one row per example); other arrays are ignored. With tokens, a tenant may use the
datasets of the namespaces it owns; the top-level ones (``DIR/<name>/``) only a tenant owning
every namespace may (``"*"``).

Every file is checked before anything runs (names, element types, shapes, example counts;
a 400 naming the file and the array). The arrays are then read in batches straight out of
the ``.npz`` (compressed or not): memory stays bounded by the batch, however large the
dataset. Fewer examples than ``--min-eval-examples`` are refused (an aggregate over one
example is that example).

Metrics, over the model's first output ``y`` and ``labels``:

- ``accuracy``: ``argmax(y)`` (``y > 0`` for one logit) equals the integer label;
- ``loss``: softmax cross-entropy of ``y`` as logits (sigmoid cross-entropy for one logit);
- ``mse``, ``mae``: squared and absolute error of ``y`` against ``labels``, per element.

Each is a mean over the examples (``mse``/``mae``: over their elements), so the example-
weighted mean of several instances' answers is the metric over all their examples.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from mlos_core.errors import BadRequest, CoreError, NotFound, Unprocessable
from mlos_core.inference.runtime import OnnxModel, RunFailed, TensorSpec, to_array

LABELS = "labels"
METRICS = ("accuracy", "loss", "mse", "mae")
CLASS_METRICS = ("accuracy", "loss")
BATCH_BYTES = 4 * 1024 * 1024  # of inputs read at once (labels come on top)
OUTPUT_BATCH_BYTES = 32 * 1024 * 1024  # of the outputs of one batch, when they can be told
MAX_BATCH = 1024  # examples
DEFAULT_MIN_EXAMPLES = 10
log = logging.getLogger("mlos_core.inference")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")


def parse_dataset_name(raw: Any) -> tuple[str | None, str]:
    """``"name"`` or ``"namespace/name"`` -> (namespace or None, name); BadRequest else."""
    if not isinstance(raw, str) or not raw:
        raise BadRequest("dataset must be a name: 'name' or 'namespace/name'", code="bad_dataset")
    parts = raw.split("/")
    if len(parts) > 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise BadRequest(
            f"dataset {raw[:100]!r} is not a dataset name: use 'name' or 'namespace/name' "
            "(letters, digits, '.', '_', '-', '+'; not starting with '.')",
            code="bad_dataset",
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def parse_metrics(raw: Any) -> list[str] | None:
    """The metrics asked for (None: chosen from the labels); BadRequest naming an unknown one."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(m, str) for m in raw):
        raise BadRequest(
            f"metrics must be a non-empty list of names out of {', '.join(METRICS)}",
            code="bad_metric",
        )
    for m in raw:
        if m not in METRICS:
            raise BadRequest(
                f"unknown metric {m[:60]!r}: this server computes {', '.join(METRICS)}",
                code="bad_metric",
            )
    return list(dict.fromkeys(raw))


def dataset_dir(root: Path, namespace: str | None, name: str) -> Path:
    """The directory of a dataset; NotFound listing none of the others (they may be another
    tenant's)."""
    path = root / namespace / name if namespace else root / name
    shown = f"{namespace}/{name}" if namespace else name
    if not path.is_dir() or path.is_symlink():
        raise NotFound(
            f"dataset {shown!r} is not on this instance (it has no directory {shown}/ in its "
            "--datasets-dir); place the .npz files there",
            code="unknown_dataset",
        )
    return path


# ---- reading .npz files in batches ----------------------------------------------------------
@dataclass
class _Member:
    """One array of an .npz: its header, read without reading its data."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    member: str  # the zip member's name

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


@dataclass
class DataFile:
    """One .npz of a dataset, its arrays' headers read and checked."""

    path: Path
    shown: str  # how messages name it: "<dataset>/<file>"
    members: dict[str, _Member] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.members[LABELS].rows

    def batches(self, names: list[str], rows: int) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
        """``rows`` examples at a time of the arrays ``names``."""
        with zipfile.ZipFile(self.path) as zf, contextlib.ExitStack() as stack:
            streams: dict[str, IO[bytes]] = {}
            for name in names:
                m = self.members[name]
                stream = stack.enter_context(zf.open(m.member))
                _read_header(stream)  # already checked: skip it
                streams[name] = stream
            for start in range(0, self.rows, rows):
                n = min(rows, self.rows - start)
                batch = {}
                for name, stream in streams.items():
                    m = self.members[name]
                    data = _read_exact(stream, n * m.row_bytes, self.shown, name)
                    batch[name] = np.frombuffer(data, dtype=m.dtype).reshape((n, *m.shape[1:]))
                yield batch


def _read_exact(stream: IO[bytes], size: int, shown: str, name: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise Unprocessable(
            f"dataset file {shown}: array {name!r} ends early (the file is truncated); "
            "replace the file",
            code="bad_dataset",
        )
    return data


def _read_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"unsupported .npy version {version}")


def open_file(path: Path, shown: str) -> DataFile:
    """The headers of ``path``'s arrays; BadRequest when it is no .npz of plain arrays."""
    out = DataFile(path, shown)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename.removesuffix(".npy")
                with zf.open(info) as stream:
                    shape, fortran, dtype = _read_header(stream)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise BadRequest(
                        f"dataset file {shown}: array {name!r} holds {dtype} values; datasets "
                        "hold numbers (no objects, no strings)",
                        code="bad_dataset",
                    )
                if fortran and len(shape) > 1:
                    raise BadRequest(
                        f"dataset file {shown}: array {name!r} is in Fortran order; save it "
                        "with np.ascontiguousarray",
                        code="bad_dataset",
                    )
                out.members[name] = _Member(name, dtype, tuple(shape), info.filename)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise BadRequest(
            f"dataset file {shown} is not a readable .npz ({exc}); write it with np.savez",
            code="bad_dataset",
        ) from None
    return out


# ---- the evaluation ---------------------------------------------------------------------------
@dataclass
class Sums:
    """Running sums of the metrics (float64), and the examples they cover."""

    examples: int = 0
    correct: float = 0.0
    loss: float = 0.0
    sq: float = 0.0
    abs: float = 0.0
    elements: int = 0

    def result(self, metrics: list[str]) -> dict[str, float]:
        n, e = max(self.examples, 1), max(self.elements, 1)
        values = {
            "accuracy": self.correct / n,
            "loss": self.loss / n,
            "mse": self.sq / e,
            "mae": self.abs / e,
        }
        return {m: values[m] for m in metrics}


@dataclass
class Plan:
    """A checked dataset: its files, the metrics, the batch size, the example count."""

    files: list[DataFile]
    metrics: list[str]
    rows_per_batch: int

    @property
    def examples(self) -> int:
        return sum(f.rows for f in self.files)


def plan(model: OnnxModel, root: Path, shown: str, metrics: list[str] | None) -> Plan:
    """Every file of the dataset at ``root`` checked against ``model``'s inputs; BadRequest
    naming the file and the array otherwise."""
    names = sorted(
        e.name
        for e in os.scandir(root)
        if e.name.endswith(".npz") and not e.name.startswith(".") and e.is_file()
    )
    if not names:
        raise BadRequest(
            f"dataset {shown!r} holds no .npz files; place files with the model's inputs and "
            f"'{LABELS}' there",
            code="bad_dataset",
        )
    files = [open_file(root / n, f"{shown}/{n}") for n in names]
    chosen = metrics
    for f in files:
        _check_file(model, f)
        if chosen is None:
            kind = f.members[LABELS].dtype.kind
            chosen = list(CLASS_METRICS) if kind in "biu" else ["mse", "mae"]
        for m in chosen:
            if m in CLASS_METRICS and f.members[LABELS].dtype.kind not in "biu":
                raise BadRequest(
                    f"dataset file {f.shown}: metric {m!r} needs integer class labels, "
                    f"'{LABELS}' holds {f.members[LABELS].dtype}",
                    code="bad_metric",
                )
    assert chosen is not None
    first = files[0]
    row_bytes = sum(max(1, first.members[i.name].row_bytes) for i in model.inputs)
    rows = max(1, min(MAX_BATCH, BATCH_BYTES // max(1, row_bytes)))
    # the outputs of a batch count too (an encoder's are far larger than its inputs)
    out_row = model.output_bytes(_one_row_sizes(model, first))
    if out_row:
        rows = max(1, min(rows, OUTPUT_BATCH_BYTES // out_row))
    if any(isinstance(i.shape[0], int) and i.shape[0] == 1 for i in model.inputs if i.shape):
        rows = 1  # a graph fixed to one example at a time
    return Plan(files, chosen, rows)


def _one_row_sizes(model: OnnxModel, f: DataFile) -> dict[str, int]:
    """The named axes' sizes for one example of ``f`` (the first axis: 1)."""
    sizes: dict[str, int] = {}
    for spec in model.inputs:
        shape = f.members[spec.name].shape
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                sizes.setdefault(dim, 1 if axis == 0 else shape[axis])
    return sizes


def _check_file(model: OnnxModel, f: DataFile) -> None:
    if LABELS not in f.members:
        raise BadRequest(
            f"dataset file {f.shown} has no array '{LABELS}' (one row per example); it has: "
            f"{', '.join(sorted(f.members)) or 'no arrays'}",
            code="bad_dataset",
        )
    rows = f.members[LABELS].rows
    for spec in model.inputs:
        m = f.members.get(spec.name)
        if m is None:
            raise BadRequest(
                f"dataset file {f.shown} has no array {spec.name!r}, an input of model "
                f"{model.model_id} (it takes: {model.takes()}; the file has: "
                f"{', '.join(sorted(f.members))})",
                code="bad_dataset",
            )
        _check_member(spec, m, f.shown, model)
        if m.rows != rows:
            raise BadRequest(
                f"dataset file {f.shown}: array {spec.name!r} has {m.rows} examples, "
                f"'{LABELS}' has {rows}; every array has one row per example",
                code="bad_dataset",
            )


def _check_member(spec: TensorSpec, m: _Member, shown: str, model: OnnxModel) -> None:
    where = f"dataset file {shown}: array {spec.name!r}"
    takes = f"the model's input {spec.name!r} takes {spec.dtype} {spec.shown_shape()}"
    if len(m.shape) != len(spec.shape) or not spec.shape:
        raise BadRequest(
            f"{where} has shape {list(m.shape)}; {takes} (the first axis: the examples)",
            code="bad_dataset",
        )
    for axis in range(1, len(m.shape)):
        dim = spec.shape[axis]
        if isinstance(dim, int) and m.shape[axis] != dim:
            raise BadRequest(
                f"{where} has shape {list(m.shape)}, size {m.shape[axis]} along axis {axis}; "
                f"{takes}",
                code="bad_dataset",
            )
    if spec.dtype is not None and spec.dtype.kind in "biu" and m.dtype.kind == "f":
        raise BadRequest(f"{where} holds {m.dtype} values; {takes}", code="bad_dataset")


def evaluate(model: OnnxModel, p: Plan, run_batch: Any) -> tuple[Sums, float]:
    """Run ``p`` through ``model`` batch by batch (blocking; ``run_batch(feeds)`` gives the
    outputs and may hand the work to the inference pool)."""
    started = time.perf_counter()
    sums = Sums()
    names = [i.name for i in model.inputs]
    for f in p.files:
        start = 0
        for batch in f.batches([*names, LABELS], p.rows_per_batch):
            n = batch[LABELS].shape[0]
            rows = f"rows {start}..{start + n - 1}"
            feeds = {
                i.name: to_array(
                    i,
                    batch[i.name],
                    where=f"dataset file {f.shown} ({rows}): {i.name!r}",
                    echo=False,
                )
                for i in model.inputs
            }
            model.check_axes(feeds, where=f"dataset file {f.shown}: array")
            try:
                outputs = run_batch(feeds)
            except RunFailed as exc:
                raise _refused(exc, model, f.shown, rows) from None
            _accumulate(sums, outputs[0], batch[LABELS], p.metrics, f.shown, model)
            start += n
    return sums, time.perf_counter() - started


def _refused(exc: RunFailed, model: OnnxModel, shown: str, rows: str) -> CoreError:
    """The answer to a batch the runtime failed on: the file, its rows and the node, never
    the runtime's words (they quote the data: "idx=987654 must be within ..."): those go to
    this server's log only."""
    log.warning(
        "evaluating %s: dataset file %s, %s: onnxruntime: %s", model.model_id, shown, rows, exc.text
    )
    if exc.invalid:
        return BadRequest(
            f"model {model.model_id} refused an example of dataset file {shown} ({rows})"
            f"{exc.where()}: a value is outside what the model takes (a token id past its "
            "vocabulary?); the runtime's own words, which quote the data, are in this "
            "instance's log only",
            code="bad_dataset",
        )
    return Unprocessable(
        f"model {model.model_id} failed on dataset file {shown} ({rows}){exc.where()}; the "
        "runtime's own words, which may quote the data, are in this instance's log only",
        code="inference_failed",
    )


def _accumulate(
    sums: Sums,
    y: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    metrics: list[str],
    shown: str,
    model: OnnxModel,
) -> None:
    n = labels.shape[0]
    out_name = model.outputs[0].name
    if y.ndim == 0 or y.shape[0] != n:
        raise Unprocessable(
            f"model {model.model_id}'s output {out_name!r} has shape {list(y.shape)} for {n} "
            "examples: evaluation needs one output row per example",
            code="bad_output",
        )
    flat = y.reshape(n, -1).astype(np.float64)
    if any(m in CLASS_METRICS for m in metrics):
        if y.ndim > 2:
            raise Unprocessable(
                f"model {model.model_id}'s output {out_name!r} has shape {list(y.shape)}: "
                "accuracy and loss need [examples, classes] or one logit per example "
                "(ask for mse/mae instead)",
                code="bad_output",
            )
        classes = labels.reshape(n, -1)
        if classes.shape[1] != 1:
            raise BadRequest(
                f"dataset file {shown}: '{LABELS}' has shape {list(labels.shape)}; accuracy "
                "and loss take one integer class per example",
                code="bad_dataset",
            )
        target = classes[:, 0].astype(np.int64)
        width = flat.shape[1]
        if width == 1:
            z = flat[:, 0]
            if "accuracy" in metrics:
                sums.correct += float(np.sum((z > 0).astype(np.int64) == target))
            if "loss" in metrics:
                # log(1 + e^z) - y z, stable for any z
                sums.loss += float(np.sum(np.logaddexp(0.0, z) - target * z))
        else:
            if target.min() < 0 or target.max() >= width:
                raise BadRequest(
                    f"dataset file {shown}: a label is outside 0..{width - 1}, the classes "
                    f"of output {out_name!r}",
                    code="bad_dataset",
                )
            if "accuracy" in metrics:
                sums.correct += float(np.sum(np.argmax(flat, axis=1) == target))
            if "loss" in metrics:
                top = flat.max(axis=1, keepdims=True)
                lse = top[:, 0] + np.log(np.exp(flat - top).sum(axis=1))
                sums.loss += float(np.sum(lse - flat[np.arange(n), target]))
    if "mse" in metrics or "mae" in metrics:
        want = labels.reshape(n, -1).astype(np.float64)
        if want.shape != flat.shape:
            raise BadRequest(
                f"dataset file {shown}: '{LABELS}' has {want.shape[1]} value(s) per example, "
                f"output {out_name!r} {flat.shape[1]}: mse and mae compare them element by "
                "element",
                code="bad_dataset",
            )
        diff = flat - want
        sums.sq += float(np.sum(diff * diff))
        sums.abs += float(np.sum(np.abs(diff)))
        sums.elements += diff.size
    sums.examples += n
