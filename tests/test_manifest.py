"""manifest.yaml: lenient reading of upstream variants, strict validation of ours."""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from axon.errors import ManifestError
from modelpkg.manifest import FileEntry, Manifest, check_relpath

SHA = "a" * 64


def test_upstream_variants_read() -> None:
    m = Manifest.from_text(
        "apiVersion: v1\nkind: Model\nmetadata: {name: x, namespace: hf, version: latest}\n"
        "spec:\n  framework: {name: PyTorch}\n  format:\n    type: pytorch\n"
        "    files: [{path: w.bin, size: 0, sha256: ''}]\n  custom: kept\n",
        source="m.yaml",
    )
    assert m.framework == "PyTorch" and m.execution_format == "pytorch"
    assert m.files == [FileEntry("w.bin", 0, "")]
    assert m.problems() == []
    assert m.data["spec"]["custom"] == "kept"
    strict = m.problems(strict=True)
    assert any(e.field == "spec.format.files[0].sha256" for e in strict)


def test_json_manifest() -> None:
    m = Manifest.from_text('{"kind": "Model", "metadata": {"name": "x"}}')
    assert m.name == "x"


def test_new_is_strict_and_round_trips() -> None:
    m = Manifest.new(
        namespace="a",
        name="b",
        version="v1",
        files=[FileEntry("z", 1, SHA), FileEntry("a", 2, SHA)],
    )
    assert m.validate(strict=True) is m
    assert [f.path for f in m.files] == ["a", "z"]
    assert Manifest.from_text(m.to_yaml()) == m


@pytest.mark.parametrize(
    ("files", "field", "words"),
    [
        ([{"path": "../x", "size": 1, "sha256": SHA}], "spec.format.files[0].path", "unsafe"),
        ([{"path": "/abs", "size": 1, "sha256": SHA}], "spec.format.files[0].path", "absolute"),
        ([{"path": "a", "size": "big", "sha256": SHA}], "spec.format.files[0].size", "integer"),
        ([{"path": "a", "size": -1, "sha256": SHA}], "spec.format.files[0].size", "negative"),
        ([{"path": "a", "size": 1, "sha256": "xyz"}], "spec.format.files[0].sha256", "sha256"),
        (
            [{"path": "a", "size": 1, "sha256": SHA}, {"path": "a", "size": 1, "sha256": SHA}],
            "spec.format.files[1].path",
            "duplicate",
        ),
        (
            [{"path": "a", "size": 1, "sha256": SHA}, {"path": "a/b", "size": 1, "sha256": SHA}],
            "spec.format.files",
            "both a file and a directory",
        ),
    ],
)
def test_problems_name_the_field(files: list[dict[str, object]], field: str, words: str) -> None:
    m = Manifest({"apiVersion": "v1", "kind": "Model", "spec": {"format": {"files": files}}})
    errs = m.problems()
    assert any(e.field == field and words in e.message for e in errs), [str(e) for e in errs]


def test_broken_yaml_and_bad_top_level(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not valid YAML"):
        Manifest.from_text("a: [b", source="x.yaml")
    with pytest.raises(ManifestError, match="expected a mapping"):
        Manifest.from_text("- 1\n- 2\n")
    with pytest.raises(ManifestError, match="empty"):
        Manifest.from_text("")
    with pytest.raises(ManifestError, match=r"no manifest\.yaml"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize("path", ["", "a//b", "./a", "a/..", "a\\b", "a\x00b", "manifest.yaml"])
def test_check_relpath_refuses(path: str) -> None:
    with pytest.raises(ManifestError):
        check_relpath(path)


@given(st.text(max_size=60))
def test_any_accepted_relpath_stays_inside(path: str) -> None:
    try:
        check_relpath(path)
    except ManifestError:
        return
    root = PurePosixPath("/models/ns/name/v1")
    joined = PurePosixPath(posixpath.normpath(root / path))
    assert joined.is_relative_to(root) and joined != root


def test_file_entry_mismatch_names_what_differs() -> None:
    sha = "a" * 64
    entry = FileEntry("w.bin", 10, sha)
    assert entry.mismatch(10, sha) is None
    assert entry.mismatch(11, sha) == "w.bin: size 11, manifest says 10"
    assert (
        entry.mismatch(10, "b" * 64) == "w.bin: sha256 bbbbbbbbbbbb... does not match the manifest"
    )
    assert FileEntry("w.bin", 0, "").mismatch(99, "c" * 64) is None  # upstream: says nothing
