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


def _relpath_rule(path: str) -> bool:
    """check_relpath's rules written plainly, one at a time (the reference it must keep)."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    parts = path.split("/")
    return not (
        path == ""
        or len(encoded) > 1024
        or any(ord(c) < 32 or ord(c) == 127 for c in path)
        or "\\" in path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(len(p.encode("utf-8")) > 255 for p in parts)
        or parts == ["manifest.yaml"]
    )


_PATH_PIECES = st.sampled_from(
    [
        "a",
        "b",
        "/",
        ".",
        "..",
        "\\",
        "\x00",
        "\x1f",
        "\x7f",
        "\ud800",
        "é",
        "manifest.yaml",
        "x" * 200,
    ]
)


@given(st.lists(_PATH_PIECES, max_size=12).map("".join) | st.text(max_size=40))
def test_check_relpath_keeps_every_rule(path: str) -> None:
    try:
        check_relpath(path)
        accepted = True
    except ManifestError:
        accepted = False
    assert accepted == _relpath_rule(path)


def test_a_file_below_another_file_is_found_at_any_depth() -> None:
    def listing(*paths: str) -> Manifest:
        files = [{"path": p, "size": 1, "sha256": SHA} for p in paths]
        return Manifest({"spec": {"format": {"files": files}}})

    errs = listing("a/b/c/d.bin", "x", "a/b").problems()
    assert [e.message for e in errs] == ["'a/b' is both a file and a directory"]
    assert listing("a/b/c", "a/bc", "ab/c").problems() == []


def test_copies_share_nothing_mutable() -> None:
    data = {
        "metadata": {"name": "m", "labels": {"k": "v"}},
        "spec": {"format": {"files": [{"path": "a", "size": 1, "sha256": SHA}]}, "io": [[1]]},
    }
    m = Manifest(data)
    data["spec"]["io"][0].append(2)  # type: ignore[index]
    data["metadata"]["labels"]["k"] = "changed"  # type: ignore[index]
    assert m.data["spec"]["io"] == [[1]] and m.data["metadata"]["labels"] == {"k": "v"}
    for other in (
        m.with_files([FileEntry("b", 2, SHA)]),
        m.with_identity("ns", "n", "v2"),
        m.as_uploaded("ns", "n", "v2"),
    ):
        other.data["spec"]["io"][0].append(3)
        other.data["metadata"]["labels"]["k"] = "other"
        other.data["spec"]["format"].setdefault("files", []).append({"path": "z"})
    assert m.data["spec"]["io"] == [[1]] and m.data["metadata"]["labels"] == {"k": "v"}
    assert m.files == [FileEntry("a", 1, SHA)] and m.data["metadata"]["name"] == "m"
    assert list(m.with_identity("ns", "n", "v2").data) == ["metadata", "spec"]  # order kept


def test_cyclic_and_deep_data() -> None:
    cyclic: dict[str, object] = {"kind": "Model"}
    cyclic["self"] = cyclic
    assert Manifest(cyclic).data["self"]["self"]["kind"] == "Model"
    deep: dict[str, object] = {}
    node = deep
    for _ in range(100_000):
        node["x"] = node = {}
    with pytest.raises(ManifestError, match="nested too deeply"):
        Manifest(deep)
