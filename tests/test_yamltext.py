"""modelpkg.yamltext writes exactly what PyYAML writes, or leaves the data to PyYAML."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpkg import yamltext
from modelpkg.manifest import FileEntry, Manifest

TRICKY = [
    "",
    "a",
    "on",
    "No",
    "null",
    "~",
    "true",
    "0x1F",
    "0o17",
    "1_000",
    "1:20",
    "12",
    "-5",
    "+1",
    ".5",
    "1e5",
    "1.0e+5",
    ".inf",
    "2026-11-30",
    "2026-11-30T15:00:46Z",
    "<<",
    "=",
    "a: b",
    "a #b",
    "#x",
    "- x",
    "-x",
    "x-",
    "?",
    ":",
    "a:",
    "'q'",
    '"d"',
    "it's",
    "\\",
    "tab\there",
    "line\nbreak",
    " lead",
    "trail ",
    "ünï",
    "\x7f",
    "%x",
    "@x",
    "`x`",
    "!t",
    "&a",
    "*a",
    "[x]",
    "{x}",
    "a,b",
    "x" * 127,
    "y" * 128,
    "word " * 30,
    "---",
    "...",
    "axon.mlos.io/v1",
    "onnx__MatMul_00001",
    "tokenizer/vocab-00001.json",
    "a" * 64,
    "1" * 64,
    "0123456789abcdef" * 4,
]
texts = st.sampled_from(TRICKY) | st.text(max_size=20)
scalars = texts | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
data = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=25,
)


def pyyaml(value: dict[str, Any]) -> str:
    return yaml.dump(value, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True)


@settings(max_examples=400)
@given(st.dictionaries(texts, data, max_size=6))
def test_the_text_is_pyyamls_or_none(value: dict[str, Any]) -> None:
    try:
        expected = pyyaml(value)
    except UnicodeEncodeError:
        expected = None  # a lone surrogate: PyYAML's Python dumper's business
    written = yamltext.dump(value)
    assert written is None or written == expected


def test_a_manifest_is_written_without_pyyaml() -> None:
    files = [FileEntry(f"shards/{i:05d}.bin", i, f"{i:064x}") for i in range(300)]
    m = Manifest.new(namespace="hf", name="bert", version="v1", files=files)
    m.data["metadata"]["created"] = "2026-11-30T15:00:46Z"
    m.data["metadata"]["description"] = "a model, described: in words"
    m.data["spec"]["io"] = {"inputs": [{"name": "ids", "shape": [1, -1]}], "labels": {}}
    written = yamltext.dump(m.data)
    assert written is not None and written == pyyaml(m.data)
    assert Manifest.from_text(written) == m
    # metadata.created is a timestamp in the Model Package Format: written plain, as one
    stamped = written.replace("created: '2026-11-30T15:00:46Z'", "created: 2026-11-30T15:00:46Z")
    assert stamped != written and m.to_yaml() == stamped and Manifest.from_text(stamped) == m


def test_timestamps_are_kept_as_written() -> None:
    for stamp in ("0001-01-01T00:00:00Z", "2026-11-30", "2026-05-01 10:20:30.5 +02:00"):
        text = f"metadata:\n  created: {stamp}\n  note: '{stamp}'\n"
        read = yamltext.load(text)
        assert read is not None and read["metadata"]["created"] == stamp
        assert type(read["metadata"]["created"]) is yamltext.Timestamp
        assert type(read["metadata"]["note"]) is str  # quoted: a string, and stays one
        assert yamltext.dump(read) == text
        assert Manifest.from_text(text).to_yaml() == text


def test_what_it_leaves_to_pyyaml() -> None:
    for value in ({"f": 1.5}, {"k" * 128: 1}, {1: "x"}, {"d": "word " * 30}):
        assert yamltext.dump(value) is None
        assert Manifest(value).to_yaml() == pyyaml(value)


@settings(max_examples=400)
@given(st.dictionaries(texts, data, max_size=6))
def test_pyyamls_text_is_read_as_pyyaml_reads_it(value: dict[str, Any]) -> None:
    try:
        text = pyyaml(value)
    except UnicodeEncodeError:
        return
    read = yamltext.load(text)
    assert read is None or read == yaml.load(text, Loader=yaml.CSafeLoader)


EDITS = st.sampled_from(
    [" #c", "\n", " ", "  ", "- ", ": ", "'", '"', "*a", "&a ", "!!str ", "{", "[", "-", ":", "0"]
)


@settings(max_examples=600)
@given(
    st.dictionaries(texts, data, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0), EDITS), max_size=3),
)
def test_edited_text_is_read_as_pyyaml_reads_it_or_left_to_it(
    value: dict[str, Any], edits: list[tuple[int, str]]
) -> None:
    try:
        text = pyyaml(value)
    except UnicodeEncodeError:
        return
    for where, piece in edits:
        at = where % (len(text) + 1)
        text = text[:at] + piece + text[at:]
    read = yamltext.load(text)
    if read is not None:  # taken only when PyYAML reads exactly that
        assert read == yaml.load(text, Loader=yaml.CSafeLoader)


def test_a_manifest_is_read_without_pyyaml() -> None:
    files = [FileEntry(f"shards/{i:05d}.bin", i, f"{i:064x}") for i in range(300)]
    m = Manifest.new(namespace="hf", name="bert", version="v1", files=files)
    m.data["metadata"]["created"] = "2026-11-30T15:00:46Z"
    m.data["spec"]["io"] = {"inputs": [{"name": "ids", "shape": [1, -1]}], "labels": {}}
    text = m.to_yaml()
    assert yamltext.load(text) == m.data
    assert yamltext.load(text.replace("kind: Model", "kind: Model # a comment")) is None
    assert Manifest.from_text(text.replace("kind: Model", "kind: Model # a comment")) == m
    assert yamltext.load(text.replace("- path", "-   path", 1)) is None
