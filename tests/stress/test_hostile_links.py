"""Symlinks planted in a cached model dir before ``axon publish``: a listed file swapped for a
link to something else outside, and an unlisted link to a secret. Neither the secret's
bytes nor anything new outside the cache may reach the target, and what is published is the
model whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.stress.checkers import check_fs_root, tree_digest
from tests.stress.figures import record
from tests.stress.harness import make_homes, run_axon

pytestmark = pytest.mark.slow

SECRET = b"TOP-SECRET-" * 100


def _published_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_swapped_and_planted_links_in_the_cache(tmp_path: Path) -> None:
    a, _b = make_homes(tmp_path, "hf/links@v1", 64 * 1024)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    shared = tmp_path / "shared"
    shared.mkdir()
    model_dir = a.model_dir
    (model_dir / "planted-link").symlink_to(secret)  # not in the manifest
    done = run_axon(a, "publish", "hf/links@v1", "-t", str(shared), "-q")
    # a file the manifest does not list is not part of the model: published without it
    assert done.returncode == 0, done.stderr
    assert SECRET not in _published_bytes(shared)
    assert check_fs_root(shared) == (1, [])
    assert not (shared / "hf/links/v1/planted-link").exists()
    (model_dir / "planted-link").unlink()
    vocab = model_dir / "vocab.txt"
    vocab.unlink()
    vocab.symlink_to(secret)  # a listed file now points outside, other content
    before = tree_digest(shared)
    done = run_axon(a, "publish", "hf/links@v1", "-t", str(shared), "-q", "--full-verify")
    assert done.returncode == 5, done.stderr  # EXIT_INTEGRITY: the cache does not match
    assert tree_digest(shared) == before
    assert SECRET not in _published_bytes(shared)
    assert secret.read_bytes() == SECRET and not os.path.islink(secret)
    record("hostile_input", "link_cases", 2, add=True)
