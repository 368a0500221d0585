"""The dev cache: upstream layout, listing, verify (cheap and --full), checked_manifest."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

import axon.hashing
from axon.cache import METADATA_NAME, Cache
from axon.config import load_config
from axon.errors import IntegrityError, ManifestError, ModelNotFoundError
from modelpkg.refs import ModelRef
from tests.fixtures.models import MakeModelDir

UPSTREAM_MANIFEST = """apiVersion: v1
kind: Model
metadata:
  name: google/flan-t5
  namespace: hf
  version: latest
spec:
  framework: {name: PyTorch, version: "2.1"}
  format:
    type: pytorch
    files:
      - {path: pytorch_model.bin, size: 0, sha256: ""}
      - {path: config.json, size: 0, sha256: ""}
"""


def upstream_model(cache: Cache) -> Path:
    """A model dir exactly as the Go axon writes it (size 0, empty sha256, .axon archive)."""
    d = cache.models_dir / "hf" / "google" / "flan-t5" / "latest"
    d.mkdir(parents=True)
    (d / "manifest.yaml").write_text(UPSTREAM_MANIFEST)
    (d / METADATA_NAME).write_text(
        json.dumps(
            {
                "installed_at": "2024-05-01T10:00:00Z",
                "namespace": "hf",
                "name": "google/flan-t5",
                "version": "latest",
            }
        )
    )
    (d / "pytorch_model.bin").write_bytes(b"\x00weights" * 100)
    (d / "config.json").write_text('{"model_type": "t5"}')
    (d / "hf-google_flan-t5-latest.axon").write_bytes(b"not really a tarball")
    return d


@pytest.fixture
def cache(axon_home: Path) -> Cache:
    return Cache.from_config(load_config())


def test_upstream_cache_lists_and_reads(cache: Cache) -> None:
    path = upstream_model(cache)
    models = cache.list()
    assert [str(m.ref) for m in models] == ["hf/google/flan-t5@latest"]
    model = cache.get("hf/google/flan-t5")
    assert model.path == path
    assert model.installed_at == "2024-05-01T10:00:00Z"
    assert model.manifest.framework == "PyTorch"


def test_upstream_manifest_is_checked_and_filled_in(cache: Cache) -> None:
    path = upstream_model(cache)
    manifest = cache.checked_manifest(ModelRef.parse("hf/google/flan-t5"))
    by_path = {f.path: f for f in manifest.files}
    data = (path / "pytorch_model.bin").read_bytes()
    assert by_path["pytorch_model.bin"].sha256 == hashlib.sha256(data).hexdigest()
    assert by_path["pytorch_model.bin"].size == len(data)
    assert manifest.problems(strict=True) == []
    # the stored manifest is not rewritten
    assert "size: 0" in (path / "manifest.yaml").read_text()


def test_upstream_archive_is_not_an_extra_file(cache: Cache) -> None:
    upstream_model(cache)
    report = cache.verify("hf/google/flan-t5@latest")
    assert report.ok, report.problems


def test_installed_model_verifies_without_reading(
    cache: Cache, installed_model: ModelRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = axon.hashing.sha256_file

    def spy(path: str | os.PathLike[str], on_bytes: object = None) -> str:
        reads.append(str(path))
        return real(path, on_bytes)  # type: ignore[arg-type]

    monkeypatch.setattr(axon.hashing, "sha256_file", spy)
    report = cache.verify(installed_model)
    assert report.ok and report.files_checked == 6
    assert (report.files_hashed, report.bytes_hashed) == (0, 0)
    assert reads == []
    full = cache.verify(installed_model, full=True)
    assert full.ok and full.files_hashed == 6 and len(reads) == 6


def test_verify_names_missing_extra_and_corrupt(cache: Cache, installed_model: ModelRef) -> None:
    d = cache.path_for(installed_model)
    (d / "tokenizer.json").unlink()
    (d / "notes.txt").write_text("hi")
    (d / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 64}')
    report = cache.verify(installed_model)
    assert not report.ok
    assert report.missing == ["tokenizer.json"]
    assert report.extra == ["notes.txt"]
    assert len(report.corrupt) == 1 and report.corrupt[0].startswith("1_Pooling/config.json")


def test_same_size_and_restored_mtime_is_caught_by_ctime(
    cache: Cache, installed_model: ModelRef
) -> None:
    p = cache.path_for(installed_model) / "model.safetensors"
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    time.sleep(0.01)  # let ctime move on coarse clocks
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    report = cache.verify(installed_model)
    assert [c.split(":")[0] for c in report.corrupt] == ["model.safetensors"]
    with pytest.raises(IntegrityError) as info:
        cache.checked_manifest(installed_model)
    assert any("model.safetensors" in p for p in info.value.problems)


def test_checked_manifest_reports_missing(cache: Cache, installed_model: ModelRef) -> None:
    (cache.path_for(installed_model) / "vocab.txt").unlink()
    with pytest.raises(IntegrityError) as info:
        cache.checked_manifest(installed_model)
    assert info.value.problems == ["missing: vocab.txt"]


def test_get_unknown_model_hints_at_versions(cache: Cache, installed_model: ModelRef) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        cache.get(installed_model.with_version("v2"))
    assert "v1" in (info.value.hint or "")
    with pytest.raises(ModelNotFoundError, match="not in the cache"):
        cache.get("nobody/nothing")


def test_model_without_manifest(cache: Cache) -> None:
    d = cache.models_dir / "ns" / "m" / "v1"
    d.mkdir(parents=True)
    (d / METADATA_NAME).write_text("{}")
    with pytest.raises(ManifestError, match="no manifest"):
        cache.get("ns/m@v1")
    assert cache.list() == []  # skipped, not a crash


def test_manifest_with_unsafe_path_is_reported_not_followed(cache: Cache, tmp_path: Path) -> None:
    d = cache.models_dir / "ns" / "evil" / "v1"
    d.mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (d / "manifest.yaml").write_text(
        "kind: Model\nspec:\n  format:\n    files:\n      - {path: ../../../../../secret}\n"
    )
    report = cache.verify("ns/evil@v1")
    assert not report.ok
    assert any("unsafe file path" in c for c in report.corrupt)
    with pytest.raises(ManifestError):
        cache.checked_manifest("ns/evil@v1")


def test_staging_leftovers_are_not_models(cache: Cache, installed_model: ModelRef) -> None:
    (cache.models_dir / ".install.staging-abc").mkdir()
    (cache.models_dir / ".install.staging-abc" / METADATA_NAME).write_text("{}")
    assert [m.ref for m in cache.list()] == [installed_model]


def test_uninstall(cache: Cache, installed_model: ModelRef) -> None:
    path = cache.uninstall(installed_model)
    assert not path.exists()
    assert not (cache.models_dir / "hf").exists()  # empty parents pruned
    assert cache.list() == []
    with pytest.raises(ModelNotFoundError):
        cache.uninstall(installed_model)


def test_verify_names_a_corrupt_file_when_the_last_listed_file_is_missing(
    installed_model: ModelRef, axon_home: Path
) -> None:
    # regression: the mismatch message used the loop variable of another loop (KeyError)
    cache = Cache.from_config()
    model = cache.get(installed_model)
    files = sorted(model.manifest.files, key=lambda f: f.path)
    first, last = files[0], files[-1]
    target = model.path / first.path
    target.write_bytes(b"z" * target.stat().st_size)
    (model.path / last.path).unlink()
    report = cache.verify(installed_model)
    assert last.path in report.missing
    assert any(c.startswith(f"{first.path}: sha256") for c in report.corrupt)


# ---- model ids whose directories nest --------------------------------------------------
@pytest.mark.parametrize(
    ("first", "second"),
    [("n/b@v1", "n/b/v1@x"), ("n/b/v1@x", "n/b@v1"), ("n/b@v1", "n/b/v1/x/y@z")],
)
def test_a_model_whose_directory_nests_with_another_is_refused(
    cache: Cache, axon_home: Path, make_model_dir: MakeModelDir, first: str, second: str
) -> None:
    """``n/b@v1`` lives at ``n/b/v1/`` and ``n/b/v1@x`` at ``n/b/v1/x/``: installing the
    second replaced (or wrote into) the first. Refused (exit 4) naming the other model and
    what to do; the first stays whole and the only model."""
    from tests.helpers import run_axon

    src = make_model_dir()
    assert run_axon("install", str(src), "--as", first).code == 0
    before = _tree(cache.models_dir)
    done = run_axon("install", str(src), "--as", second)
    assert done.code == 4, done.err
    assert f"cannot install {second}" in done.err and f"the cached model {first}" in done.err
    assert f"axon uninstall {first}" in done.err and "Traceback" not in done.err
    assert _tree(cache.models_dir) == before
    assert [str(r) for r in cache.refs()] == [first] and cache.verify(first).ok
    # a re-install of the same model, and a sibling, are no overlap
    assert run_axon("install", str(src), "--as", first).code == 0
    assert run_axon("install", str(src), "--as", "n/b@v2").code == 0


def test_a_source_named_by_its_manifest_is_checked_too(
    cache: Cache, make_model_dir: MakeModelDir
) -> None:
    from axon.errors import InvalidReferenceError
    from axon.install import install_source

    src = make_model_dir()
    install_source(str(src), as_ref="n/b/v1@x", cache=cache)
    named = install_source(str(src), as_ref="n/b@v1", cache=Cache(cache.root.parent / "other"))
    with pytest.raises(InvalidReferenceError, match="n/b/v1@x"):  # its manifest says n/b@v1
        install_source(str(named.path), cache=cache)
    assert [str(r) for r in cache.refs()] == ["n/b/v1@x"] and cache.verify("n/b/v1@x").ok


def test_the_clash_is_found_before_a_byte_is_copied(
    cache: Cache, make_model_dir: MakeModelDir
) -> None:
    from axon.errors import InvalidReferenceError
    from axon.install import install_source

    src = make_model_dir()
    install_source(str(src), as_ref="n/b@v1", cache=cache)
    with pytest.raises(InvalidReferenceError, match="n/b@v1"):
        install_source(str(src), as_ref="n/b/v1@x", cache=cache, progress=_NoCopy())


class _NoCopy:
    """A progress sink for an install that must fail before it copies anything."""

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        pytest.fail("the copy began")

    def advance(self, key: str, nbytes: int) -> None:
        pass

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass


class _InstallsMeanwhile(_NoCopy):
    """A progress sink that installs ``other`` into ``cache`` once the copy has begun: a
    concurrent ``axon install`` of a model whose directory nests with this one's."""

    def __init__(self, cache: Cache, source: Path, other: str) -> None:
        self.cache, self.source, self.other = cache, source, other

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        from axon.install import install_source

        install_source(str(self.source), as_ref=self.other, cache=self.cache)


def test_a_nesting_model_installed_meanwhile_is_not_replaced(
    cache: Cache, make_model_dir: MakeModelDir
) -> None:
    """The check is made again right before the rename: ``n/b/v1@x`` installed while
    ``n/b@v1`` was being copied is not swept away by it."""
    from axon.errors import InvalidReferenceError
    from axon.install import install_source

    src = make_model_dir()
    meanwhile = _InstallsMeanwhile(cache, src, "n/b/v1@x")
    with pytest.raises(InvalidReferenceError, match="n/b/v1@x"):
        install_source(str(src), as_ref="n/b@v1", cache=cache, progress=meanwhile)
    assert [str(r) for r in cache.refs()] == ["n/b/v1@x"] and cache.verify("n/b/v1@x").ok
    assert not [p for p in cache.models_dir.iterdir() if p.name.startswith(".")]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_checking_many_files_is_one_stat_each_and_a_few_index_queries(
    cache: Cache, make_model_dir: MakeModelDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model of 1,200 small files: checking it stats each file once and asks the hash
    index a few hundred paths per query (not a query, an INSERT and a commit per file);
    unchanged, it reads no file, and every file comes back with the identity it was
    checked at (what a local publish trusts)."""
    from axon.install import install_source

    src = make_model_dir(extra={f"shards/s{i:04d}.bin": os.urandom(64) for i in range(1200)})
    install_source(str(src), as_ref="hf/many@v1", cache=cache)
    ref = ModelRef.parse("hf/many@v1")
    root = str(cache.path_for(ref))
    cache.index.forget_under(cache.path_for(ref))  # the first check hashes every file
    statements: list[str] = []
    db = cache.index._db()
    assert db is not None
    db.set_trace_callback(statements.append)
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: object, *a: object, **k: object) -> os.stat_result:
        if str(path).startswith(root + "/shards/"):
            stats.append(str(path))
        return real_stat(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting_stat)
    manifest, identities = cache.checked(ref)
    shards = [f for f in manifest.files if f.path.startswith("shards/")]
    assert len(shards) == 1200 and set(identities) == {f.path for f in manifest.files}
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    assert len(selects) <= 4 and len(commits) == 1, (len(selects), len(commits))
    # hashing re-stats a file it read, to tell whether it changed meanwhile: two each
    assert len(stats) == 2 * 1200

    statements.clear()
    stats.clear()
    reads: list[str] = []

    def no_read(path: object, *_a: object) -> str:
        reads.append(str(path))
        return ""

    monkeypatch.setattr(axon.hashing, "sha256_file", no_read)
    again, identities = cache.checked(ref)
    assert again.files == manifest.files and reads == []
    assert len(stats) == 1200  # one stat per file, nothing else
    assert not [s for s in statements if not s.lstrip().upper().startswith("SELECT")]
    first = shards[0].path
    assert identities[first] == axon.hashing.file_key(real_stat(f"{root}/{first}"))
