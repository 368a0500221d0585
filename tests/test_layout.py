"""modelpkg.layout: two model references never share a directory."""

from __future__ import annotations

from pathlib import Path

from modelpkg.layout import MANIFEST_NAME, overlapping_model


def _model(root: Path, rel: str, *files: str) -> None:
    here = root / rel
    here.mkdir(parents=True)
    (here / MANIFEST_NAME).write_text("name: x\n")
    for name in files:
        (here / name).parent.mkdir(parents=True, exist_ok=True)
        (here / name).write_text("x")


def test_a_model_inside_another_models_directory_overlaps(tmp_path: Path) -> None:
    _model(tmp_path, "n/b/v1", "weights.bin")
    assert overlapping_model(str(tmp_path), "n/b/v1/x") == "n/b/v1"  # n/b/v1@x
    assert overlapping_model(str(tmp_path), "n/b/v1/x/y/z") == "n/b/v1"


def test_a_model_whose_directory_holds_another_model_overlaps(tmp_path: Path) -> None:
    _model(tmp_path, "n/b/v1/x")  # n/b/v1@x
    assert overlapping_model(str(tmp_path), "n/b/v1") == "n/b/v1/x"  # n/b@v1


def test_the_same_model_and_siblings_do_not_overlap(tmp_path: Path) -> None:
    _model(tmp_path, "n/b/v1", "sub/file.bin")
    assert overlapping_model(str(tmp_path), "n/b/v1") is None  # a re-publish
    assert overlapping_model(str(tmp_path), "n/b/v2") is None
    assert overlapping_model(str(tmp_path), "n/bb/v1") is None
    assert overlapping_model(str(tmp_path), "m/b/v1") is None


def test_housekeeping_and_empty_directories_do_not_count(tmp_path: Path) -> None:
    (tmp_path / "n/b/v1/.x.staging-0123456789abcdef").mkdir(parents=True)
    (tmp_path / "n/b/v1/.x.staging-0123456789abcdef" / MANIFEST_NAME).write_text("x")
    assert overlapping_model(str(tmp_path), "n/b/v1") is None
    (tmp_path / "n/b/v1/empty").mkdir()
    assert overlapping_model(str(tmp_path), "n/b/v1") is None
