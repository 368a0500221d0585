"""sha256 streaming and the hash index (unchanged files are not read again)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import axon.hashing
from axon.hashing import HashIndex, file_key, hash_files, hash_stats, sha256_file


def test_sha256_file_streams_and_reports(tmp_path: Path) -> None:
    data = os.urandom(axon.hashing.CHUNK * 2 + 123)
    p = tmp_path / "f"
    p.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(p, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and len(seen) == 3


def test_index_skips_unchanged_and_catches_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = HashIndex(tmp_path / "idx.sqlite")
    p = tmp_path / "f"
    p.write_bytes(b"one")
    calls: list[Path] = []
    real = axon.hashing.sha256_file

    def spy(path: Path, on_bytes: object = None) -> str:
        calls.append(Path(path))
        return real(path, on_bytes)  # type: ignore[arg-type]

    monkeypatch.setattr(axon.hashing, "sha256_file", spy)
    first = index.digest(p)
    assert index.digest(p) == first and len(calls) == 1  # second time from the index
    assert index.digest(p, full=True) == first and len(calls) == 2
    st = p.stat()
    p.write_bytes(b"two")  # same size; restore mtime: ctime still moves
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert index.digest(p) == hashlib.sha256(b"two").hexdigest()


def test_corrupt_index_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "idx.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    p = tmp_path / "f"
    p.write_bytes(b"x")
    assert HashIndex(path).digest(p) == hashlib.sha256(b"x").hexdigest()


def test_hash_files_parallel(tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * (1000 + i))
        paths.append(p)
    got = hash_files(paths, index=HashIndex(tmp_path / "i.sqlite"))
    assert got == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert hash_files([]) == {}


def test_forget_under(tmp_path: Path) -> None:
    index = HashIndex(tmp_path / "i.sqlite")
    (tmp_path / "d").mkdir()
    p = tmp_path / "d" / "f"
    p.write_bytes(b"x")
    index.digest(p)
    assert index.lookup(p) is not None
    index.forget_under(tmp_path / "d")
    assert index.lookup(p) is None


def test_fresh_index_shared_by_many_threads_never_loses_its_table(tmp_path: Path) -> None:
    # regression: threads racing the schema set-up took "database is locked" for corruption
    # and deleted the index under the others ("no such table: hashes")
    paths = []
    for i in range(16):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 100)
        paths.append(p)
    for round_ in range(10):
        index = HashIndex(tmp_path / f"i{round_}.sqlite")
        with ThreadPoolExecutor(max_workers=16) as pool:
            digests = list(pool.map(index.digest, paths))
        got = dict(zip(paths, digests, strict=True))
        assert got == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
        assert all(index.lookup(p) == got[p] for p in paths)


def test_hash_stats_remembers_only_what_did_not_change_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many files at once: hashed ones are remembered in one go with the identity they had;
    one rewritten while it was read keeps no identity and is not remembered (its digest is
    of bytes it may no longer hold)."""
    index = HashIndex(tmp_path / "i.sqlite")
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 100)
        paths.append(p)
    real = axon.hashing.sha256_file

    def rewrite_f3(path: Path, on_bytes: object = None) -> str:
        sha = real(path, on_bytes)  # type: ignore[arg-type]
        if Path(path).name == "f3":
            Path(path).write_bytes(b"changed meanwhile")
        return sha

    monkeypatch.setattr(axon.hashing, "sha256_file", rewrite_f3)
    got = hash_stats([(p, p.stat()) for p in paths], index=index)
    assert all(h.read for h in got.values())
    assert got[paths[3]].key is None and index.lookup(paths[3]) is None
    for p in paths[:3] + paths[4:]:
        assert got[p].key == file_key(p.stat()) and index.lookup(p) == got[p].sha256
    again = hash_stats([(p, p.stat()) for p in paths], index=index)
    assert [again[p].read for p in paths] == [False, False, False, True, False]
