"""Framework, format and io schema of a model, guessed from its files.

Only file names and ``config.json`` are read (never weights): cheap for any model size.
The execution format is chosen in the order MLOS Core prefers to run them: onnx, gguf,
safetensors, pytorch, tensorflow, tflite, coreml.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

# execution format -> (framework name as upstream writes it, predicate on a relative path)
_FRAMEWORKS = {
    "onnx": "ONNX",
    "gguf": "GGUF",
    "safetensors": "PyTorch",
    "pytorch": "PyTorch",
    "tensorflow": "TensorFlow",
    "tflite": "TensorFlow Lite",
    "coreml": "Core ML",
}
_ORDER = ["onnx", "gguf", "safetensors", "pytorch", "tensorflow", "tflite", "coreml"]

_TEXT_ENCODERS = {
    "bert", "distilbert", "roberta", "albert", "electra", "deberta", "deberta-v2",
    "xlm-roberta", "mpnet", "camembert", "ernie", "nomic_bert", "modernbert",
}  # fmt: skip
_TOKEN_TYPE = {"bert", "albert", "electra", "ernie", "deberta", "deberta-v2"}
_DECODERS = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3",
    "phi", "phi3", "falcon", "gemma", "gemma2", "opt", "bloom", "starcoder2", "olmo",
}  # fmt: skip
_SEQ2SEQ = {"t5", "mt5", "bart", "mbart", "marian", "pegasus", "flan-t5", "longt5"}
_VISION = {"vit", "deit", "resnet", "convnext", "convnextv2", "swin", "beit", "efficientnet",
           "mobilenet_v2", "regnet", "dinov2"}  # fmt: skip
_SPEECH = {"whisper"}


@dataclass
class Detection:
    """What we could tell about a model from its file names and config.json."""

    execution_format: str | None = None
    framework: str | None = None
    execution_files: list[dict[str, str]] = field(default_factory=list)
    multi_encoder: bool = False
    model_type: str | None = None
    io: dict[str, Any] | None = None

    def spec(self) -> dict[str, Any]:
        """The ``spec`` additions for a manifest (format details and io)."""
        out: dict[str, Any] = {}
        if self.io:
            out["io"] = self.io
        return out


def format_of(path: str) -> str | None:
    """The execution format one file belongs to, or None for tokenizers, configs..."""
    p = PurePosixPath(path)
    name, suffix = p.name.lower(), p.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".gguf":
        return "gguf"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".pt", ".pth") or (suffix == ".bin" and name.startswith("pytorch_model")):
        return "pytorch"
    if name == "saved_model.pb" or (name.startswith("tf_model") and suffix == ".h5"):
        return "tensorflow"
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".mlmodel" or ".mlpackage/" in path.lower():
        return "coreml"
    return None


def file_role(path: str) -> str:
    """``execution_files[].type``: encoder, decoder, text/vision encoder or single."""
    name = PurePosixPath(path).name.lower()
    for role in ("text_encoder", "vision_encoder"):
        if role in name or role in path.lower():
            return role
    if "decoder" in name:
        return "decoder"
    if "encoder" in name:
        return "encoder"
    return "single"


def detect(files: Iterable[str], config_json: dict[str, Any] | None = None) -> Detection:
    """Detect format, framework, execution files and (from ``config_json``) the io schema."""
    by_format: dict[str, list[str]] = {}
    files = list(files)
    for rel in files:
        fmt = format_of(rel)
        if fmt:
            by_format.setdefault(fmt, []).append(rel)
    det = Detection()
    chosen = next((f for f in _ORDER if f in by_format), None)
    if chosen:
        det.execution_format = chosen
        det.framework = _FRAMEWORKS[chosen]
        paths = sorted(by_format[chosen])
        if chosen == "coreml":
            paths = paths[:1]
        det.execution_files = [{"path": p, "format": chosen, "type": file_role(p)} for p in paths]
        encoders = [f for f in det.execution_files if f["type"].endswith("encoder")]
        det.multi_encoder = len(encoders) > 1
    if config_json:
        model_type = config_json.get("model_type")
        if isinstance(model_type, str):
            det.model_type = model_type
            det.io = io_schema(model_type, config_json)
            if det.io and "tokenizer.json" not in files:
                for tensor in det.io["inputs"]:
                    pre = tensor.get("preprocessing")
                    if pre and pre.get("type") == "tokenizer":
                        pre.pop("tokenizer", None)  # the model ships no tokenizer.json
    return det


def detect_dir(root: Path, files: Iterable[str]) -> Detection:
    """:func:`detect` for a model directory (reads ``config.json`` when present and small)."""
    return detect(files, read_config_json(root / "config.json"))


def read_config_json(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > 4 * 1024 * 1024:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tensor(name: str, dtype: str, shape: list[int], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "dtype": dtype, "shape": shape}
    if description:
        out["description"] = description
    return out


def _int(config: dict[str, Any], *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return -1


def _text_inputs(model_type: str, tokenizer: bool = True) -> list[dict[str, Any]]:
    pre = {"type": "tokenizer", "tokenizer": "tokenizer.json", "tokenizer_type": model_type}
    ids = _tensor("input_ids", "int64", [-1, -1], "token ids")
    if tokenizer:
        ids["preprocessing"] = pre
    inputs = [ids, _tensor("attention_mask", "int64", [-1, -1], "1 for real tokens")]
    if model_type in _TOKEN_TYPE:
        inputs.append(_tensor("token_type_ids", "int64", [-1, -1], "segment ids"))
    return inputs


def io_schema(model_type: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """spec.io for common Hugging Face families; None when the family is unknown."""
    mt = model_type.lower()
    hidden = _int(config, "hidden_size", "d_model", "n_embd", "dim")
    vocab = _int(config, "vocab_size")
    if mt in _TEXT_ENCODERS:
        return {
            "inputs": _text_inputs(mt),
            "outputs": [_tensor("last_hidden_state", "float32", [-1, -1, hidden])],
        }
    if mt in _DECODERS:
        return {
            "inputs": _text_inputs(mt),
            "outputs": [_tensor("logits", "float32", [-1, -1, vocab], "next-token scores")],
        }
    if mt in _SEQ2SEQ:
        inputs = _text_inputs(mt)
        inputs.append(_tensor("decoder_input_ids", "int64", [-1, -1], "decoder token ids"))
        return {"inputs": inputs, "outputs": [_tensor("logits", "float32", [-1, -1, vocab])]}
    if mt in _VISION:
        size = _int(config, "image_size")
        channels = _int(config, "num_channels")
        pixel = _tensor(
            "pixel_values",
            "float32",
            [
                -1,
                channels if channels > 0 else 3,
                size if size > 0 else 224,
                size if size > 0 else 224,
            ],
        )
        pixel["preprocessing"] = {"type": "image", "config": "preprocessor_config.json"}
        labels = config.get("id2label")
        n_labels = len(labels) if isinstance(labels, dict) else -1
        return {"inputs": [pixel], "outputs": [_tensor("logits", "float32", [-1, n_labels])]}
    if mt in _SPEECH:
        mels = _int(config, "num_mel_bins")
        feats = _tensor("input_features", "float32", [-1, mels, 3000], "log-mel spectrogram")
        feats["preprocessing"] = {"type": "audio", "config": "preprocessor_config.json"}
        return {
            "inputs": [feats, _tensor("decoder_input_ids", "int64", [-1, -1])],
            "outputs": [_tensor("logits", "float32", [-1, -1, vocab])],
        }
    return None
