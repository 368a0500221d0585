"""Filesystem/NFS transport: what the conformance suite does not cover (errors, modes, links,
kill -9 mid-publish). Small real filesystems (tmpfs) stand in for a full or read-only target."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from axon.errors import (
    NoSpaceError,
    TargetPermissionError,
    TargetUnreachableError,
    TransportError,
)
from axon.targets import InstanceTarget
from axon.transports.filesystem import FilesystemTransport
from modelpkg.refs import ModelRef
from tests.conformance.transport import REF, base_files, dir_snapshot, publish, write_model
from tests.fixtures.common import tmpfs
from tests.fixtures.upstream_entry import place_like_upstream
from tests.helpers import run_axon

MiB = 1024 * 1024


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "no-such-dir"
    manifest = write_model(tmp_path / "src", base_files())
    with pytest.raises(TargetUnreachableError) as info:
        FilesystemTransport(root, name="local").open(REF, manifest)
    assert str(root) in str(info.value)
    assert info.value.hint and "storage_path" in info.value.hint
    assert not root.exists()


def test_read_only_target_is_a_permission_error(tmp_path: Path) -> None:
    manifest = write_model(tmp_path / "src", base_files())
    with tmpfs(tmp_path / "ro", "ro,size=1m") as root:
        with pytest.raises(TargetPermissionError) as info:
            publish(FilesystemTransport(root, name="ro-target"), tmp_path / "src", manifest)
        assert str(root) in str(info.value) and info.value.target == "ro-target"
        assert "write access" in (info.value.hint or "")


def test_full_target_is_no_space_and_keeps_the_previous_version(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=1m") as root:
        transport = FilesystemTransport(root)
        small = write_model(tmp_path / "v1", base_files())
        publish(transport, tmp_path / "v1", small)
        big = write_model(tmp_path / "v2", {"weights.bin": os.urandom(2 * MiB)})
        session = transport.open(REF, big)
        with pytest.raises(NoSpaceError) as info:
            for entry in session.needed:
                session.send(entry, tmp_path / "v2" / entry.path)
        assert str(root) in str(info.value)
        session.abort()
        snap = dir_snapshot(root / REF.relpath)
        assert (
            snap is not None and snap["config.json"] == (tmp_path / "v1/config.json").read_bytes()
        )
        assert [p.name for p in (root / REF.relpath).parent.iterdir()] == [REF.version]


def test_modes_are_applied(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    manifest = write_model(tmp_path / "src", base_files())
    publish(FilesystemTransport(root, dir_mode=0o750, file_mode=0o640), tmp_path / "src", manifest)
    final = root / REF.relpath
    for path in [final, final / "tokenizer", root / REF.namespace]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o750, path
    for path in [final / "config.json", final / "tokenizer/vocab.txt", final / "manifest.yaml"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_unchanged_files_are_hard_linked_not_copied(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    transport = FilesystemTransport(root)
    files = base_files()
    publish(transport, tmp_path / "src", write_model(tmp_path / "src", files))
    before = (root / REF.relpath / "weights.bin").stat().st_ino
    files["config.json"] = b"{}"
    info, sent, _ = publish(transport, tmp_path / "src", write_model(tmp_path / "src", files))
    assert sent == 2
    assert (root / REF.relpath / "weights.bin").stat().st_ino == before
    assert info.details["linked"] == 2


def test_unchanged_republish_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    transport = FilesystemTransport(root)
    manifest = write_model(tmp_path / "src", base_files())
    publish(transport, tmp_path / "src", manifest)
    final = root / REF.relpath
    stamps = {p: p.stat().st_mtime_ns for p in [final, final.parent, *final.rglob("*")]}
    info, sent, _ = publish(transport, tmp_path / "src", manifest)
    assert sent == 0 and info.details["unchanged"] is True
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(p.name for p in final.parent.iterdir()) == [REF.version]


_SLOW_PUBLISH = """
import sys, time
from pathlib import Path
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef
from axon.transports.filesystem import FilesystemTransport
root, src = Path(sys.argv[1]), Path(sys.argv[2])
manifest = Manifest.load(src / "manifest.yaml")
session = FilesystemTransport(root).open(ModelRef.parse(sys.argv[3]), manifest)
for entry in session.needed:
    session.send(entry, src / entry.path, lambda n: time.sleep(0.5))
session.commit()
"""


def test_kill_9_mid_publish_keeps_the_old_version_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    transport = FilesystemTransport(root)
    old = write_model(tmp_path / "old", base_files())
    publish(transport, tmp_path / "old", old)
    src = tmp_path / "new"
    new = write_model(src, {"big.bin": os.urandom(64 * MiB)})
    (src / "manifest.yaml").write_text(new.to_yaml())
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PUBLISH, str(root), str(src), str(REF)])
    parts = root / REF.relpath.parent
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        partial = [p for p in parts.rglob(".axon-partial/*") if p.stat().st_size > 0]
        if partial:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial, "the child never started writing"
    snap = dir_snapshot(root / REF.relpath)
    assert snap is not None and snap["weights.bin"] == (tmp_path / "old/weights.bin").read_bytes()
    session = transport.open(REF, new)
    assert 0 < session.offset(session.needed[0]) < 64 * MiB
    info, sent, _ = publish(transport, src, new)
    assert sent == 64 * MiB - session.offset(session.needed[0])
    snap = dir_snapshot(root / REF.relpath)
    assert snap is not None and snap["big.bin"] == (src / "big.bin").read_bytes()
    assert info.details["unchanged"] is False


def test_from_target_and_instance_path(tmp_path: Path) -> None:
    target = InstanceTarget(
        name="local",
        endpoint="http://localhost:8080",
        access_method="nfs",
        storage_path=str(tmp_path),
        dir_mode=0o755,
        file_mode=0o644,
    )
    transport = FilesystemTransport.from_target(target)
    assert transport.root == tmp_path and transport.method == "nfs"
    assert (transport.dir_mode, transport.file_mode, transport.name) == (0o755, 0o644, "local")
    assert transport.instance_path(REF) == f"{tmp_path}/{REF.relpath}"
    assert transport.describe() == f"nfs://{tmp_path}"
    with pytest.raises(TargetUnreachableError):
        FilesystemTransport.from_target(
            InstanceTarget(
                name="share",
                endpoint="http://h:8080",
                access_method="nfs",
                storage_path="nfs://nowhere.invalid/export/models",
            )
        )


def test_commit_drops_day_old_abandoned_staging_but_keeps_fresh_ones(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    parent = root / REF.relpath.parent
    stale, fresh = parent / f".{REF.version}.staging-aaaa", parent / f".{REF.version}.staging-bbbb"
    for path in (stale, fresh):
        (path / ".axon-partial").mkdir(parents=True)
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))
    publish(
        FilesystemTransport(root), tmp_path / "src", write_model(tmp_path / "src", base_files())
    )
    assert not stale.exists() and fresh.exists()


def test_a_source_file_changing_mid_copy_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    src = tmp_path / "src"
    manifest = write_model(src, {"big.bin": os.urandom(20 * MiB)})
    session = FilesystemTransport(root).open(REF, manifest)

    def rewrite(_n: int) -> None:
        with open(src / "big.bin", "r+b") as fh:  # same size, other bytes, new mtime
            fh.seek(19 * MiB)
            fh.write(os.urandom(1024))

    with pytest.raises(TransportError) as info:
        session.send(session.needed[0], src / "big.bin", rewrite)
    assert "changed" in str(info.value) and getattr(info.value, "retryable", None) is False
    session.abort()
    assert dir_snapshot(root / REF.relpath) is None


def _identity(path: Path) -> tuple[int, int, int, int, int]:
    from axon.hashing import file_key

    return file_key(path.stat())


def test_a_verified_source_is_copied_whole_without_hashing_it_again(tmp_path: Path) -> None:
    """Validation vouched for the bytes at this identity: the copy skips hashing them (the
    wrong sha256 in the manifest below would otherwise fail it) and copies them exactly,
    odd sizes included."""
    root = tmp_path / "models"
    root.mkdir()
    src = tmp_path / "src"
    data = os.urandom(9 * MiB + 123)
    manifest = write_model(src, {"w.bin": data})
    entry = manifest.files[0]
    key = _identity(src / "w.bin")
    lying = type(entry)(entry.path, entry.size, "0" * 64)
    session = FilesystemTransport(root).open(REF, manifest.with_files([lying]))
    session.send(lying, src / "w.bin", verified=key)
    session.commit()
    assert (root / REF.relpath / "w.bin").read_bytes() == data


def test_a_verified_source_copies_through_a_buffer_where_the_kernel_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_copy_range(*_a: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", no_copy_range)
    root = tmp_path / "models"
    root.mkdir()
    src = tmp_path / "src"
    data = os.urandom(8 * MiB + 7)
    manifest = write_model(src, {"w.bin": data})
    session = FilesystemTransport(root).open(REF, manifest)
    session.send(manifest.files[0], src / "w.bin", verified=_identity(src / "w.bin"))
    session.commit()
    assert (root / REF.relpath / "w.bin").read_bytes() == data


def test_a_source_changed_since_it_was_verified_is_hashed_and_refused(tmp_path: Path) -> None:
    """Same size, other bytes after validation: the identity no longer matches, so the copy
    hashes and the mismatch is caught; nothing is published."""
    root = tmp_path / "models"
    root.mkdir()
    src = tmp_path / "src"
    manifest = write_model(src, {"w.bin": os.urandom(3 * MiB)})
    key = _identity(src / "w.bin")
    time.sleep(0.01)
    with open(src / "w.bin", "r+b") as fh:
        fh.write(b"\0" * 4096)
    assert _identity(src / "w.bin") != key
    session = FilesystemTransport(root).open(REF, manifest)
    with pytest.raises(TransportError) as info:
        session.send(manifest.files[0], src / "w.bin", verified=key)
    assert "sha256" in str(info.value)
    session.abort()
    assert dir_snapshot(root / REF.relpath) is None


def test_a_resumed_copy_is_hashed_even_when_the_source_is_verified(tmp_path: Path) -> None:
    """The prefix on the target came from an earlier attempt, not from the verified file:
    a corrupt prefix is caught although the source's identity matches."""
    root = tmp_path / "models"
    root.mkdir()
    src = tmp_path / "src"
    data = os.urandom(20 * MiB)
    manifest = write_model(src, {"w.bin": data})
    entry = manifest.files[0]
    transport = FilesystemTransport(root)
    first = transport.open(REF, manifest)
    with pytest.raises(TransportError):
        first.send(entry, src / "w.bin", _stop_after(MiB))  # after the first 8 MiB chunk
    partial = next((root / REF.relpath.parent).glob(".*staging-*/.axon-partial/*"))
    assert 0 < partial.stat().st_size < entry.size
    with open(partial, "r+b") as fh:
        fh.write(b"\xff" * 16)  # the earlier attempt's bytes went bad
    again = transport.open(REF, manifest)
    assert again.offset(entry) > 0
    with pytest.raises(TransportError) as info:
        again.send(entry, src / "w.bin", verified=_identity(src / "w.bin"))
    assert "sha256" in str(info.value)


def _stop_after(limit: int) -> Callable[[int], None]:
    seen = [0]

    def on_bytes(n: int) -> None:
        seen[0] += n
        if seen[0] >= limit:
            raise TransportError("stopped by the test", target="test")

    return on_bytes


def test_commit_sweeps_day_old_copies_aside_but_not_fresh_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash mid --atomic switch can leave the previous version aside (``.rollback-``).
    Its age is the later of mtime and ctime: ``cp -al`` backdates the mtime, the ctime says
    it was made just now, so a copy a switch may be using is kept."""
    from axon.transports import stagedir

    root = tmp_path / "models"
    root.mkdir()
    parent = root / REF.relpath.parent
    aside = parent / f".{REF.version}.rollback-0123456789ab"
    (aside / "sub").mkdir(parents=True)
    (aside / "sub" / "w.bin").write_bytes(b"old version")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(aside, (week_ago, week_ago))  # as cp -al leaves it: the original's mtime
    src = tmp_path / "src"
    transport = FilesystemTransport(root)
    publish(transport, src, write_model(src, base_files()))
    assert aside.exists(), "made moments ago (ctime): may belong to a switch in progress"
    monkeypatch.setattr(stagedir, "STALE_SECONDS", 0.0)
    time.sleep(0.05)
    publish(transport, src, write_model(src, base_files("b")))
    assert not aside.exists()
    assert dir_snapshot(root / REF.relpath) is not None


# ---- model ids whose directories nest ----------------------------------------------------
NESTED = ModelRef.parse("hf/conformance-model/v1@x")  # lives at REF's directory /x


def _all_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, housekeeping (``.``-names) included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("first", "second"), [(REF, NESTED), (NESTED, REF)], ids=["inside", "holding"]
)
def test_publishing_a_model_whose_directory_nests_with_another_is_refused(
    tmp_path: Path, make_model_dir: Callable[..., Path], first: ModelRef, second: ModelRef
) -> None:
    """``n/b@v1`` at ``n/b/v1/`` and ``n/b/v1@x`` at ``n/b/v1/x/``: publishing the second
    into a shared directory replaced (or wrote into) the first. `axon publish` refuses it
    (exit 7, the target refuses), naming the other model and what to do; nothing is
    written, not even a staging directory, and no retry is made."""
    shared = tmp_path / "shared"
    shared.mkdir()
    src = make_model_dir()
    for ref in (first, second):  # two developers, two caches
        home = {"AXON_HOME": str(tmp_path / f"home-{ref.version}")}
        assert run_axon("install", str(src), "--as", str(ref), env=home).code == 0
    first_home = {"AXON_HOME": str(tmp_path / f"home-{first.version}")}
    assert run_axon("publish", str(first), "-t", str(shared), "-q", env=first_home).code == 0
    before = _all_files(shared)
    home = {"AXON_HOME": str(tmp_path / f"home-{second.version}")}
    done = run_axon("publish", str(second), "-t", str(shared), "--json", env=home)
    assert done.code == 7, done.err
    (result,) = done.json()["results"]
    error = result["error"]
    assert f"refusing to publish {second}" in error["message"] and str(first) in error["message"]
    assert f"remove {first}" in error["hint"] and result["attempts"] == 1
    assert result["files_sent"] == 0 and result["bytes_sent"] == 0  # refused at open
    assert error["path"] == f"{shared}/{first.relpath}"
    assert _all_files(shared) == before


def test_a_nesting_model_published_meanwhile_is_not_replaced_at_commit(tmp_path: Path) -> None:
    """Checked again right before the rename: ``n/b/v1@x`` published by someone else while
    ``n/b@v1`` was staged is not swept away by its commit."""
    from axon.errors import RemoteError

    root = tmp_path / "models"
    root.mkdir()
    manifest = write_model(tmp_path / "src", base_files())
    session = FilesystemTransport(root).open(REF, manifest)
    for entry in session.needed:
        session.send(entry, tmp_path / "src" / entry.path)
    session.prepare()
    nested = write_model(tmp_path / "other", base_files("b"), NESTED)
    publish(FilesystemTransport(root), tmp_path / "other", nested, NESTED)
    before = dir_snapshot(root / NESTED.relpath)
    with pytest.raises(RemoteError, match=str(NESTED)) as info:
        session.commit()
    assert info.value.retryable is False and info.value.exit_code == 7
    session.abort()
    assert before is not None and dir_snapshot(root / NESTED.relpath) == before
    assert not (root / REF.relpath / "manifest.yaml").exists()


def test_a_model_published_meanwhile_around_a_staged_one_is_not_written_into(
    tmp_path: Path,
) -> None:
    """``n/b/v1@x`` staged (its staging dir lies in ``n/b/v1/``), then ``n/b@v1`` published
    by someone else: preparing the first must not write into the second's directory."""
    from axon.errors import RemoteError

    root = tmp_path / "models"
    root.mkdir()
    nested = write_model(tmp_path / "other", base_files("b"), NESTED)
    session = FilesystemTransport(root).open(NESTED, nested)
    for entry in session.needed:
        session.send(entry, tmp_path / "other" / entry.path)
    manifest = write_model(tmp_path / "src", base_files())
    publish(FilesystemTransport(root), tmp_path / "src", manifest)
    before = _all_files(root / REF.relpath)
    with pytest.raises(RemoteError, match=str(REF)):
        session.prepare()
    session.abort()
    assert _all_files(root / REF.relpath) == before
    assert sorted(os.listdir(root / REF.relpath)) == [
        "config.json",
        "manifest.yaml",
        "tokenizer",
        "weights.bin",
    ]


def test_files_placed_unsynced_before_a_restart_are_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Received files are placed without an fsync each; prepare makes them all durable at
    once before the commit. A process killed meanwhile leaves them in the page cache: the
    next publish keeps them. A machine that restarted meanwhile may have lost their bytes
    while their sizes look right: the staging dir (marked with the boot id) starts over,
    and a staging dir still marked is never committed."""
    from axon.transports import stagedir
    from axon.transports.blobcopy import StageError

    root = tmp_path / "models"
    root.mkdir()
    src = tmp_path / "src"
    files = {f"f{i}.bin": os.urandom(1000 + i) for i in range(6)}
    manifest = write_model(src, files)
    transport = FilesystemTransport(root)
    first = transport.open(REF, manifest)
    for entry in first.needed[:4]:
        first.send(entry, src / entry.path)
    stage = next((root / REF.relpath.parent).glob(".*staging-*"))
    marker = stage / ".axon-partial" / stagedir.UNSYNCED
    assert marker.read_text() == stagedir.boot_id() != ""

    # the same boot (a killed process): what was placed is kept
    assert len(transport.open(REF, manifest).needed) == 2
    # ... but never committed before prepare made it durable
    (stage / "manifest.yaml").write_text(manifest.to_yaml())
    with pytest.raises(StageError, match="nothing prepared"):
        stagedir.commit(str(root), str(REF.relpath), first.plan.digest)
    (stage / "manifest.yaml").unlink()

    # another boot: the staging dir starts over
    other_boot = tmp_path / "boot_id"
    other_boot.write_text("00000000-0000-0000-0000-000000000000\n")
    monkeypatch.setattr(stagedir, "_BOOT_ID", str(other_boot))
    again = transport.open(REF, manifest)
    assert len(again.needed) == len(files) and not stage.exists()
    for entry in again.needed:
        again.send(entry, src / entry.path)
    again.commit()
    assert not marker.exists()
    snap = dir_snapshot(root / REF.relpath)
    assert snap is not None and {k: snap[k] for k in files} == files


def test_an_unchanged_republish_does_not_parse_the_published_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target holds the very text this publish would write: unchanged, without parsing
    it (a manifest of thousands of files costs more to parse than the rest of the check)."""
    import axon.transports.staged as staged

    root = tmp_path / "models"
    root.mkdir()
    manifest = write_model(tmp_path / "src", base_files())
    transport = FilesystemTransport(root)
    publish(transport, tmp_path / "src", manifest)

    def no_parse(text: str | None) -> None:
        raise AssertionError("the published manifest was parsed")

    monkeypatch.setattr(staged, "_current_manifest", no_parse)
    session = transport.open(REF, manifest)
    assert session.unchanged and session.needed == []


def test_many_files_are_made_durable_at_once_not_one_fsync_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version of many small files is made durable with one syncfs of the target's
    filesystem before it is swapped in (an fsync per file waits for a disk flush each);
    a few files are fsync'ed each, after all of them were written."""
    from axon.transports import stagedir

    if not stagedir._syncfs_reports_errors():
        pytest.skip("syncfs is used on Linux >= 5.8 only")
    synced: list[str] = []
    fsynced: list[int] = []
    real_syncfs, real_fsync = stagedir._syncfs, os.fsync

    def syncfs(path: str) -> bool:
        synced.append(path)
        return real_syncfs(path)

    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(stagedir, "_syncfs", syncfs)
    monkeypatch.setattr(os, "fsync", fsync)
    root = tmp_path / "models"
    root.mkdir()
    many = {f"shards/s{i:03d}.bin": os.urandom(100 + i) for i in range(stagedir.SYNCFS_MIN)}
    manifest = write_model(tmp_path / "many", many)
    publish(FilesystemTransport(root), tmp_path / "many", manifest)
    assert len(synced) == 1
    assert len(fsynced) < 10  # the staging dir's directories, the marker, the swap
    snap = dir_snapshot(root / REF.relpath)
    assert snap is not None and {k: snap[k] for k in many} == many

    synced.clear()
    fsynced.clear()
    few = write_model(tmp_path / "few", base_files())
    publish(FilesystemTransport(root), tmp_path / "few", few)
    assert synced == [] and len(fsynced) >= len(few.files)


# ---- a version another tool placed (the upstream Go axon's publish) -----------------------
# `axon publish` of the Go axon copies its cache dir, bookkeeping included, file by file to
# <models>/<ns>/<name>/<version>/ (tests/interop runs the real binary).


def test_files_another_tool_placed_are_hashed_there_and_not_sent_again(tmp_path: Path) -> None:
    """After the Go axon's publish placed the model (its layout, its manifest, no sha256s),
    our publish of the same model sends nothing: each file at the same path with the same
    size is hashed where it lies and used when its sha256 matches. The new version holds
    our manifest and the model's files only (no upstream bookkeeping)."""
    root = tmp_path / "models"
    files = base_files()
    place_like_upstream(root / REF.relpath, REF, files)
    manifest = write_model(tmp_path / "src", files)
    info, sent, paths = publish(FilesystemTransport(root), tmp_path / "src", manifest)
    assert (sent, paths) == (0, [])
    assert info.details["adopted"] == len(files) and info.details["unchanged"] is False
    snap = dir_snapshot(root / REF.relpath)
    assert snap is not None
    assert snap.pop("manifest.yaml") == manifest.to_yaml().encode()
    assert snap == files
    assert sorted(p.name for p in (root / REF.relpath).parent.iterdir()) == [REF.version]


def test_a_placed_file_is_used_only_when_its_bytes_hash_right(tmp_path: Path) -> None:
    """Verified by hash, not by trust: the placed manifest claims the right sha256s (a cache
    entry axon wrote, copied by the Go axon), but one file of the right size holds other
    bytes, and a symbolic link stands where another file should be: those two are sent, the
    rest is used as it lies."""
    root = tmp_path / "models"
    final = root / REF.relpath
    files = base_files()
    manifest = write_model(tmp_path / "src", files)
    placed = dict(files)
    placed["weights.bin"] = os.urandom(len(files["weights.bin"]))
    placed["config.json"] = b"-" * len(files["config.json"])
    place_like_upstream(final, REF, placed, manifest.to_yaml())
    (final / "config.json").unlink()
    (tmp_path / "elsewhere.json").write_bytes(files["config.json"])
    (final / "config.json").symlink_to(tmp_path / "elsewhere.json")
    info, sent, paths = publish(FilesystemTransport(root), tmp_path / "src", manifest)
    assert sorted(paths) == ["config.json", "weights.bin"]
    assert sent == len(files["weights.bin"]) + len(files["config.json"])
    assert info.details["adopted"] == 1  # tokenizer/vocab.txt
    snap = dir_snapshot(final)
    assert snap is not None and {k: snap[k] for k in files} == files
    assert not (final / "config.json").is_symlink()


def test_a_version_a_publish_wrote_is_still_linked_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our own published versions keep the cheap path: files are hard-linked by what the
    manifest says, nothing is hashed on the target."""
    from axon.transports import stagedir

    root = tmp_path / "models"
    root.mkdir()
    transport = FilesystemTransport(root)
    files = base_files()
    publish(transport, tmp_path / "src", write_model(tmp_path / "src", files))
    monkeypatch.setattr(stagedir, "adopt", lambda *a, **k: pytest.fail("hashed our own files"))
    monkeypatch.setitem(stagedir.OPERATIONS, "adopt", stagedir.adopt)
    files["config.json"] = b"{}"
    info, _sent, paths = publish(transport, tmp_path / "src", write_model(tmp_path / "src", files))
    assert paths == ["config.json"] and info.details["linked"] == 2
    assert info.details["adopted"] == 0


def test_files_left_by_a_copy_cut_before_its_manifest_are_used(tmp_path: Path) -> None:
    """A copy cut before it wrote manifest.yaml (the Go axon copies file by file) leaves
    files and no manifest: the complete ones are hashed and used, a truncated one is sent."""
    root = tmp_path / "models"
    final = root / REF.relpath
    files = base_files()
    for rel, data in files.items():
        (final / rel).parent.mkdir(parents=True, exist_ok=True)
        (final / rel).write_bytes(data if rel != "weights.bin" else data[:1000])
    manifest = write_model(tmp_path / "src", files)
    info, _sent, paths = publish(FilesystemTransport(root), tmp_path / "src", manifest)
    assert paths == ["weights.bin"] and info.details["adopted"] == 2
    snap = dir_snapshot(final)
    assert snap is not None and {k: snap[k] for k in files} == files


def test_a_copy_of_this_very_manifest_with_bookkeeping_beside_it_is_not_unchanged(
    tmp_path: Path,
) -> None:
    """The Go axon copied a cache entry axon wrote: our manifest, byte for byte, beside its
    bookkeeping, and a file of the right size with other bytes. That is not the version
    the manifest describes: the files are hashed, the wrong one sent, the rest used."""
    root = tmp_path / "models"
    final = root / REF.relpath
    files = base_files()
    manifest = write_model(tmp_path / "src", files)
    placed = {**files, "weights.bin": os.urandom(len(files["weights.bin"]))}
    place_like_upstream(final, REF, placed, manifest.to_yaml())
    info, _sent, paths = publish(FilesystemTransport(root), tmp_path / "src", manifest)
    assert info.details["unchanged"] is False and paths == ["weights.bin"]
    assert info.details["adopted"] == len(files) - 1
    snap = dir_snapshot(final)
    assert snap is not None and snap.pop("manifest.yaml") == manifest.to_yaml().encode()
    assert snap == files
