"""The conformance suite every transport passes (the contract of axon/transports/base.py).

A transport's tests run it by subclassing :class:`TransportConformance` (or
:class:`DirectoryConformance`) in a ``test_*`` module, as ``tests/test_transport_conformance.py``
does for the filesystem, SSH and API transports and ``tests/test_storage_s3_conformance.py``
for S3. The subclass provides:

* a ``transport`` fixture yielding a ready :class:`~axon.transports.base.Transport` (closed
  by the fixture);
* ``snapshot(transport, ref)``: the *visible* published model as ``{path: bytes}`` (with
  ``manifest.yaml``), read consistently, or None when absent. It may raise :class:`Stale`
  when the read raced a swap and must be retried. For directory-like targets,
  :class:`DirectoryConformance` implements it from a local path; for an S3 layout,
  :class:`tests.conformance.s3.S3Conformance`.

Class knobs: ``supports_resume`` (a cut file resumes at an offset > 0), ``big_size`` (bytes of
the file cut in the resume test: larger than the transport's first progress report). Every
transport sends two paths with the same bytes once.

This module is not a test module: nothing here is collected until a ``Test...`` subclass in a
``test_*`` module names a transport. The helpers (``write_model``, ``publish``,
``dir_snapshot``...) serve the transports' own tests too.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from axon.errors import TransportError
from axon.transports.base import CommitInfo, Transport
from modelpkg.manifest import MANIFEST_NAME, FileEntry, Manifest
from modelpkg.refs import ModelRef
from tests.fixtures.common import wait_for

MiB = 1024 * 1024
REF = ModelRef.parse("hf/conformance-model@v1")


class Stale(Exception):
    """A snapshot raced a swap (it read a tree that was replaced meanwhile): retry."""


class Cut(Exception):
    """Raised from on_bytes to cut a transfer mid-file."""


# ---- helpers -------------------------------------------------------------------------------
def write_model(src: Path, files: dict[str, bytes], ref: ModelRef = REF) -> Manifest:
    """Write ``files`` under ``src`` and return their strict manifest."""
    entries = []
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(FileEntry(rel, len(data), hashlib.sha256(data).hexdigest()))
    return Manifest.new(
        namespace=ref.namespace, name=ref.name, version=ref.version, files=entries
    ).validate(strict=True)


def base_files(tag: str = "a") -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "bert", "tag": "%s"}' % tag.encode(),
        "weights.bin": os.urandom(256 * 1024),
        "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    }


def publish(
    transport: Transport, src: Path, manifest: Manifest, ref: ModelRef = REF
) -> tuple[CommitInfo, int, list[str]]:
    """A whole publish; returns (commit info, bytes reported sent, paths sent)."""
    session = transport.open(ref, manifest)
    sent = [0]
    paths = []
    for entry in session.needed:
        paths.append(entry.path)
        session.send(entry, src / entry.path, lambda n: sent.__setitem__(0, sent[0] + n))
    return session.commit(), sent[0], paths


def expected_snapshot(src: Path, manifest: Manifest) -> dict[str, bytes]:
    return {f.path: (src / f.path).read_bytes() for f in manifest.files}


# ---- the suite -------------------------------------------------------------------------------
class TransportConformance:
    supports_resume = True
    big_size = 24 * MiB

    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[Transport]:
        raise NotImplementedError("subclasses provide a transport fixture")

    def snapshot(self, transport: Transport, ref: ModelRef) -> dict[str, bytes] | None:
        raise NotImplementedError

    def stable_snapshot(self, transport: Transport, ref: ModelRef) -> dict[str, bytes] | None:
        for _ in range(100):
            try:
                return self.snapshot(transport, ref)
            except Stale:
                continue
        raise AssertionError("snapshot kept racing swaps")

    def assert_published(self, transport: Transport, src: Path, manifest: Manifest) -> None:
        snap = self.stable_snapshot(transport, REF)
        assert snap is not None, "nothing visible after commit"
        listed = Manifest.from_text(snap.pop(MANIFEST_NAME))
        assert listed.files == manifest.files
        assert snap == expected_snapshot(src, manifest)

    # -- tests --
    def test_fresh_publish(self, transport: Transport, tmp_path: Path) -> None:
        src = tmp_path / "src"
        manifest = write_model(src, base_files())
        assert transport.fetch_manifest(REF) is None
        session = transport.open(REF, manifest)
        assert not session.unchanged
        assert sorted(e.path for e in session.needed) == sorted(f.path for f in manifest.files)
        info, sent, _ = publish(transport, src, manifest)
        assert sent == manifest.total_size
        self.assert_published(transport, src, manifest)
        if info.path is not None:
            assert info.path.rstrip("/").endswith(str(REF.relpath))

    def test_unchanged_republish_sends_nothing(self, transport: Transport, tmp_path: Path) -> None:
        src = tmp_path / "src"
        manifest = write_model(src, base_files())
        publish(transport, src, manifest)
        session = transport.open(REF, manifest)
        assert session.unchanged
        assert session.needed == []
        session.commit()
        self.assert_published(transport, src, manifest)

    def test_changed_file_only_sends_that_file(self, transport: Transport, tmp_path: Path) -> None:
        src = tmp_path / "src"
        files = base_files()
        publish(transport, src, write_model(src, files))
        files["config.json"] = b'{"model_type": "bert", "changed": true}'
        manifest = write_model(src, files)
        _info, sent, paths = publish(transport, src, manifest)
        assert paths == ["config.json"]
        assert sent == len(files["config.json"])
        self.assert_published(transport, src, manifest)

    def test_same_content_twice_is_sent_once(self, transport: Transport, tmp_path: Path) -> None:
        src = tmp_path / "src"
        blob = os.urandom(64 * 1024)
        manifest = write_model(src, {"a.bin": blob, "copy/a.bin": blob, "b.txt": b"b"})
        assert len(transport.open(REF, manifest).needed) == 2
        _info, sent, _paths = publish(transport, src, manifest)
        assert sent == len(blob) + 1
        self.assert_published(transport, src, manifest)

    def test_resume_of_a_partial_file(self, transport: Transport, tmp_path: Path) -> None:
        src = tmp_path / "src"
        manifest = write_model(src, {"big.bin": os.urandom(self.big_size), "x.txt": b"x"})
        session = transport.open(REF, manifest)
        big = next(e for e in session.needed if e.path == "big.bin")

        def cut(_n: int) -> None:
            raise Cut

        with pytest.raises(Cut):
            session.send(big, src / big.path, cut)
        session = transport.open(REF, manifest)
        big = next(e for e in session.needed if e.path == "big.bin")
        offset = session.offset(big)
        if self.supports_resume:
            assert 0 < offset < big.size
        sent = [0]
        for entry in session.needed:
            session.send(entry, src / entry.path, lambda n: sent.__setitem__(0, sent[0] + n))
        assert sent[0] == big.size - offset + 1
        session.commit()
        self.assert_published(transport, src, manifest)

    def test_abort_leaves_the_previous_version(self, transport: Transport, tmp_path: Path) -> None:
        src, src2 = tmp_path / "src", tmp_path / "src2"
        old = write_model(src, base_files("old"))
        publish(transport, src, old)
        new = write_model(src2, base_files("new"))
        session = transport.open(REF, new)
        for entry in session.needed:
            session.send(entry, src2 / entry.path)
        session.abort()
        self.assert_published(transport, src, old)
        fetched = transport.fetch_manifest(REF)
        assert fetched is not None and fetched.files == old.files
        publish(transport, src2, new)  # a later publish still works
        self.assert_published(transport, src2, new)

    def test_commit_before_sending_everything_fails(
        self, transport: Transport, tmp_path: Path
    ) -> None:
        src = tmp_path / "src"
        old = write_model(src, base_files("old"))
        publish(transport, src, old)
        new = write_model(tmp_path / "src2", base_files("new"))
        session = transport.open(REF, new)
        with pytest.raises(TransportError):
            session.commit()
        session.abort()
        self.assert_published(transport, src, old)

    def test_fetch_manifest(self, transport: Transport, tmp_path: Path) -> None:
        src = tmp_path / "src"
        manifest = write_model(src, base_files())
        assert transport.fetch_manifest(REF) is None
        publish(transport, src, manifest)
        got = transport.fetch_manifest(REF)
        assert got is not None
        assert got.files == manifest.files
        assert (got.namespace, got.name, got.version) == (REF.namespace, REF.name, REF.version)

    def test_replace_is_atomic_under_a_concurrent_reader(
        self, transport: Transport, tmp_path: Path
    ) -> None:
        versions = []
        for i in range(2):
            src = tmp_path / f"src{i}"
            versions.append((src, write_model(src, base_files(f"v{i}"))))
        publish(transport, *versions[0])
        wanted = [expected_snapshot(src, m) for src, m in versions]
        seen: list[int] = []
        problems: list[str] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    snap = self.snapshot(transport, REF)
                except Stale:
                    continue
                except Exception as exc:  # reported by the main thread
                    problems.append(f"{type(exc).__name__}: {exc}")
                    return
                if snap is None:
                    problems.append("model directory absent during a replace")
                    continue
                snap.pop(MANIFEST_NAME, None)
                if snap in wanted:
                    seen.append(wanted.index(snap))
                else:
                    problems.append(f"a mixed or partial model: {sorted(snap)}")

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            for i in range(6):
                now = (i + 1) % 2
                publish(transport, *versions[now])
                # the reader must see each replace land before the next one starts
                wait_for(
                    lambda now=now: bool(problems) or (bool(seen) and seen[-1] == now),
                    timeout=30,
                    what=f"a reader seeing version {now} after replace {i}",
                )
        finally:
            stop.set()
            thread.join(30)
        assert problems == []
        assert set(seen) == {0, 1}, f"the reader saw versions {sorted(set(seen))}"


class DirectoryConformance(TransportConformance):
    """For transports whose published model is a directory readable on this machine."""

    def published_root(self, transport: Transport) -> Path:
        return Path(getattr(transport, "root"))  # noqa: B009

    def snapshot(self, transport: Transport, ref: ModelRef) -> dict[str, bytes] | None:
        return dir_snapshot(self.published_root(transport) / ref.relpath)


def dir_snapshot(final: Path) -> dict[str, bytes] | None:
    """Read a model dir through one directory fd, so a swap cannot mix two versions.

    If a listed file is missing or wrong, the read is only excused (:class:`Stale`) when the
    directory we hold was swapped out meanwhile; otherwise it was a partial model.
    """
    try:
        fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        return _read_tree(fd, final)
    finally:
        os.close(fd)


def _read_at(fd: int, rel: str) -> bytes:
    f = os.open(rel, os.O_RDONLY, dir_fd=fd)
    with os.fdopen(f, "rb") as fh:
        return fh.read()


def _read_tree(fd: int, final: Path) -> dict[str, bytes]:
    def swapped() -> bool:
        try:
            return os.stat(final).st_ino != os.fstat(fd).st_ino
        except FileNotFoundError:
            return True

    try:
        text = _read_at(fd, MANIFEST_NAME)
        files = {MANIFEST_NAME: text}
        for entry in Manifest.from_text(text).files:
            data = _read_at(fd, entry.path)
            if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
                raise FileNotFoundError(f"{entry.path} does not match the manifest")
            files[entry.path] = data
    except (FileNotFoundError, NotADirectoryError) as exc:
        if swapped():
            raise Stale from exc
        raise AssertionError(f"partial model visible at {final}: {exc}") from exc
    return files
