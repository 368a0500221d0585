"""Re-use of what upstream's publish placed, over SSH, without the binary: the directory is
written in the shape the binary leaves (tests/fixtures/upstream_entry.py, checked against
the binary by test_ours_reads_upstream.py). The remote helper hashes the files where they
lie."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conformance.transport import REF, base_files, dir_snapshot, publish, write_model
from tests.fixtures.upstream_entry import place_like_upstream


def test_over_ssh_files_upstream_placed_are_hashed_on_the_host_and_not_sent(
    sshd: Any, tmp_path: Path
) -> None:
    root = tmp_path / "remote-models"
    root.mkdir()
    files = base_files()
    placed = {**files, "weights.bin": os.urandom(len(files["weights.bin"]))}  # same size
    place_like_upstream(root / REF.relpath, REF, placed)
    manifest = write_model(tmp_path / "src", files)
    transport = sshd.transport(root)
    try:
        info, sent, paths = publish(transport, tmp_path / "src", manifest)
    finally:
        transport.close()
    assert paths == ["weights.bin"] and sent == len(files["weights.bin"])
    assert info.details["adopted"] == len(files) - 1
    snap = dir_snapshot(root / REF.relpath)
    assert snap is not None and snap.pop("manifest.yaml") == manifest.to_yaml().encode()
    assert snap == files
