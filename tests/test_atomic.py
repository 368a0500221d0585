"""Atomic directory replacement: never a half tree, old tree kept on failure."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from modelpkg import atomic
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


def _read_tree(final: Path) -> set[str] | None:
    """Every file of ``final`` read through one directory fd; None if it was not there, an
    empty set if the tree it opened was replaced and removed while it read."""
    try:
        fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        contents = set()
        for name in os.listdir(fd):
            with open(os.open(name, os.O_RDONLY, dir_fd=fd), encoding="utf-8") as fh:
                contents.add(fh.read())
        return contents
    except FileNotFoundError:  # an old tree, removed under us: never a mix
        return set()
    finally:
        os.close(fd)


@pytest.mark.parametrize("with_exchange", [True, False])
def test_replace_dir_under_a_concurrent_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_exchange: bool
) -> None:
    if not with_exchange:  # the rename-aside fallback (filesystems without RENAME_EXCHANGE)
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    elif atomic._renameat2() is None:
        pytest.skip("this kernel/filesystem has no renameat2(RENAME_EXCHANGE)")
    final = tmp_path / "v1"
    with atomic_dir(final) as staged:
        for i in range(20):
            (staged / f"f{i}").write_text("gen-0")
    stop, seen, problems, gaps = threading.Event(), set(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            tree = _read_tree(final)
            if tree is None:
                gaps[0] += 1
            elif len(tree) > 1:
                problems.append(f"a mixed tree: {sorted(tree)}")
            else:
                seen.update(tree)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for gen in range(1, 40):
            with atomic_dir(final, durable=False) as staged:
                for i in range(20):
                    (staged / f"f{i}").write_text(f"gen-{gen}")
            time.sleep(0.002)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert len(seen) >= 2, f"the reader saw {sorted(seen)}"
    if with_exchange:
        assert gaps[0] == 0, f"{final} was missing {gaps[0]} times during exchanges"
    assert _read_tree(final) == {"gen-39"}
