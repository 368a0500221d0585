"""Atomic directory replacement: never a half tree, old tree kept on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpkg.atomic import (
    atomic_dir,
    atomic_write_text,
    clean_leftovers,
    replace_dir,
    staging_name,
)
from modelpkg.layout import is_leftover


def test_atomic_dir_creates_and_replaces(tmp_path: Path) -> None:
    final = tmp_path / "m" / "v1"
    with atomic_dir(final) as staged:
        (staged / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with atomic_dir(final) as staged:
        (staged / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert [p.name for p in final.parent.iterdir()] == ["v1"]  # no leftovers


def test_atomic_dir_failure_keeps_old(tmp_path: Path) -> None:
    final = tmp_path / "v1"
    with atomic_dir(final) as staged:
        (staged / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as staged:
        (staged / "a").write_text("new")
        raise RuntimeError("boom")
    assert (final / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_replace_dir_over_existing(tmp_path: Path) -> None:
    final = tmp_path / "v"
    final.mkdir()
    (final / "old").write_text("x")
    staged = staging_name(final)
    staged.mkdir()
    (staged / "new").write_text("y")
    replace_dir(staged, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert not staged.exists()


def test_atomic_write_and_leftovers(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    atomic_write_text(p, "hello")
    assert p.read_text() == "hello"
    junk = staging_name(tmp_path / "model")
    junk.mkdir()
    assert is_leftover(junk.name)
    assert clean_leftovers(tmp_path) == [junk]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.txt"]
