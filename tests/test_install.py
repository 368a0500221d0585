"""axon install: directories, .axon archives (good, corrupt, malicious), hf/ sources,
atomicity, and format/io detection."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from axon.cache import Cache
from axon.detect import detect, format_of
from axon.errors import (
    IntegrityError,
    InvalidReferenceError,
    NoSpaceError,
    SourceError,
    TargetUnreachableError,
    UnsafeArchiveError,
)
from axon.install import classify_source, install_source, parse_hf_source
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef

MakeDir = Callable[..., Path]


@pytest.fixture
def cache(axon_home: Path) -> Cache:
    return Cache.from_config()


def leftovers(cache: Cache) -> list[str]:
    if not cache.models_dir.exists():
        return []
    return [p.name for p in cache.models_dir.iterdir() if p.name.startswith(".")]


# ---- directories ---------------------------------------------------------------------------
def test_install_dir_writes_strict_manifest(cache: Cache, make_model_dir: MakeDir) -> None:
    src = make_model_dir()
    model = install_source(str(src), as_ref="hf/tiny-bert@v1", cache=cache)
    m = model.manifest
    assert m.problems(strict=True) == []
    files = {f.path: f for f in m.files}
    assert set(files) == {
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    }
    data = (src / "model.safetensors").read_bytes()
    assert files["model.safetensors"].sha256 == hashlib.sha256(data).hexdigest()
    assert files["model.safetensors"].size == len(data)
    assert (m.execution_format, m.framework) == ("safetensors", "PyTorch")
    io_spec = m.data["spec"]["io"]
    assert [t["name"] for t in io_spec["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert io_spec["outputs"][0]["shape"] == [-1, -1, 32]
    assert model.metadata["namespace"] == "hf" and model.metadata["version"] == "v1"
    assert model.metadata["installed_at"].endswith("Z")
    assert leftovers(cache) == []


def test_hf_snapshot_symlinks_are_followed(cache: Cache, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc").write_bytes(b"weights")
    snap = tmp_path / "snapshots" / "rev"
    (snap / "onnx").mkdir(parents=True)
    (snap / "onnx" / "model.onnx").symlink_to(blobs / "abc")
    model = install_source(str(snap), as_ref="hf/snap@rev", cache=cache)
    p = model.path / "onnx" / "model.onnx"
    assert not p.is_symlink() and p.read_bytes() == b"weights"
    assert model.manifest.execution_format == "onnx"


def test_reinstall_replaces_the_version_whole(cache: Cache, make_model_dir: MakeDir) -> None:
    install_source(str(make_model_dir()), as_ref="ns/m@v1", cache=cache)
    src2 = make_model_dir(extra={"new.txt": b"new"})
    (src2 / "vocab.txt").unlink()
    model = install_source(str(src2), as_ref="ns/m@v1", cache=cache)
    assert not (model.path / "vocab.txt").exists()
    assert (model.path / "new.txt").read_bytes() == b"new"
    assert cache.verify(model.ref).ok


def test_manifest_in_source_gives_the_ref_and_is_checked(
    cache: Cache, make_model_dir: MakeDir
) -> None:
    first = install_source(str(make_model_dir()), as_ref="team/bert@v3", cache=cache)
    # an installed model dir is itself a valid source (its manifest names it)
    copy = install_source(str(first.path), cache=Cache(cache.root.parent / "other-cache"))
    assert copy.ref == ModelRef.parse("team/bert@v3")
    # ... and a damaged one is refused
    (first.path / "vocab.txt").write_text("changed")
    with pytest.raises(IntegrityError) as info:
        install_source(str(first.path), as_ref="team/bert@v4", cache=cache)
    assert any("vocab.txt" in p for p in info.value.problems)
    assert not cache.exists(ModelRef.parse("team/bert@v4"))


def test_dir_without_manifest_needs_as(cache: Cache, make_model_dir: MakeDir) -> None:
    with pytest.raises(SourceError, match="cannot tell which reference") as info:
        install_source(str(make_model_dir()), cache=cache)
    assert "--as" in (info.value.hint or "")
    assert leftovers(cache) == []


def test_missing_source(cache: Cache, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such directory or file"):
        install_source(str(tmp_path / "nope"), as_ref="a/b", cache=cache)


def test_plain_file_is_not_a_source(cache: Cache, tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(SourceError, match="not a model directory"):
        install_source(str(f), as_ref="a/b", cache=cache)


def test_empty_dir(cache: Cache, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty directory"):
        install_source(str(tmp_path / "empty"), as_ref="a/b", cache=cache)


@pytest.mark.parametrize("ref", ["../x", "a/../b", "/abs/x", "a/b@", "a/b@c@d", "nons", "a/b\x00"])
def test_bad_reference(cache: Cache, make_model_dir: MakeDir, ref: str) -> None:
    with pytest.raises(InvalidReferenceError):
        install_source(str(make_model_dir()), as_ref=ref, cache=cache)


def test_fifo_in_source_is_refused(cache: Cache, make_model_dir: MakeDir) -> None:
    src = make_model_dir()
    os.mkfifo(src / "pipe")
    with pytest.raises(SourceError, match="not a regular file"):
        install_source(str(src), as_ref="a/b", cache=cache)


class Interrupt:
    """A progress sink that presses Ctrl-C once some bytes were copied."""

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        pass

    def advance(self, key: str, nbytes: int) -> None:
        raise KeyboardInterrupt

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass


def test_interrupted_install_leaves_nothing(cache: Cache, make_model_dir: MakeDir) -> None:
    with pytest.raises(KeyboardInterrupt):
        install_source(str(make_model_dir()), as_ref="a/b@v1", cache=cache, progress=Interrupt())
    assert cache.list() == []
    assert leftovers(cache) == []


def test_interrupted_reinstall_keeps_the_old_version(cache: Cache, make_model_dir: MakeDir) -> None:
    old = install_source(str(make_model_dir()), as_ref="a/b@v1", cache=cache)
    before = {f.path: f.sha256 for f in old.manifest.files}
    with pytest.raises(KeyboardInterrupt):
        install_source(
            str(make_model_dir(seed=7)), as_ref="a/b@v1", cache=cache, progress=Interrupt()
        )
    after = cache.get("a/b@v1")
    assert {f.path: f.sha256 for f in after.manifest.files} == before
    assert cache.verify(after.ref).ok


# ---- archives ------------------------------------------------------------------------------
def make_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_install_archive(cache: Cache, make_model_dir: MakeDir, tmp_path: Path) -> None:
    src = make_model_dir()
    archive = tmp_path / "m.axon"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=".")
    model = install_source(str(archive), as_ref="hf/tiny-bert@v2", cache=cache)
    assert (model.path / "1_Pooling" / "config.json").is_file()
    assert len(model.manifest.files) == 6
    assert cache.verify(model.ref).ok


def test_archive_with_top_dir_and_manifest(
    cache: Cache, make_model_dir: MakeDir, tmp_path: Path
) -> None:
    first = install_source(str(make_model_dir()), as_ref="team/m@v1", cache=cache)
    archive = tmp_path / first.ref.archive_name
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(first.path, arcname="team-m")
    other = Cache(tmp_path / "cache2")
    model = install_source(str(archive), cache=other)
    assert model.ref == first.ref  # from the manifest inside
    assert {f.path for f in model.manifest.files} == {f.path for f in first.manifest.files}


@pytest.mark.parametrize(
    ("name", "kind", "data", "words"),
    [
        ("../evil.txt", tarfile.REGTYPE, b"x", "outside"),
        ("a/../../evil.txt", tarfile.REGTYPE, b"x", "outside"),
        ("/etc/evil", tarfile.REGTYPE, b"x", "outside"),
        ("link", tarfile.SYMTYPE, None, "symlink"),
        ("hard", tarfile.LNKTYPE, None, "hard link"),
        ("dev", tarfile.CHRTYPE, None, "device"),
        ("blk", tarfile.BLKTYPE, None, "device"),
        ("fifo", tarfile.FIFOTYPE, None, "fifo"),
    ],
)
def test_malicious_archives_are_refused(
    cache: Cache, tmp_path: Path, name: str, kind: bytes, data: bytes | None, words: str
) -> None:
    bad = tarfile.TarInfo(name)
    bad.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        bad.linkname = "/etc/passwd"
    archive = make_archive(tmp_path / "bad.axon", [(reg("config.json"), b"{}"), (bad, data)])
    with pytest.raises(UnsafeArchiveError, match=words):
        install_source(str(archive), as_ref="a/b@v1", cache=cache)
    assert cache.list() == [] and leftovers(cache) == []
    # wherever a naive extraction would have put it (the staging dir sits in the cache)
    assert list(tmp_path.rglob("evil*")) == [] and not Path("/etc/evil").exists()


def test_duplicate_member_refused(cache: Cache, tmp_path: Path) -> None:
    archive = make_archive(
        tmp_path / "dup.axon", [(reg("config.json"), b"{}"), (reg("./config.json"), b"{2}")]
    )
    with pytest.raises(UnsafeArchiveError, match="twice"):
        install_source(str(archive), as_ref="a/b@v1", cache=cache)


def test_truncated_archive(cache: Cache, make_model_dir: MakeDir, tmp_path: Path) -> None:
    src = make_model_dir(weights_size=200_000)
    archive = tmp_path / "t.axon"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=".")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"not a valid \.axon archive"):
        install_source(str(archive), as_ref="a/b@v1", cache=cache)
    assert cache.list() == [] and leftovers(cache) == []


def test_garbage_archive(cache: Cache, tmp_path: Path) -> None:
    archive = tmp_path / "g.axon"
    archive.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError, match=r"not a valid \.axon archive"):
        install_source(str(archive), as_ref="a/b@v1", cache=cache)


def test_archive_manifest_mismatch(cache: Cache, tmp_path: Path) -> None:
    manifest = Manifest.new(
        namespace="a", name="b", version="v1", files=[]
    ).data  # then list a file with a wrong digest
    manifest["spec"]["format"]["files"] = [{"path": "config.json", "size": 2, "sha256": "0" * 64}]
    text = Manifest(manifest).to_yaml().encode()
    archive = make_archive(
        tmp_path / "mm.axon", [(reg("manifest.yaml"), text), (reg("config.json"), b"{}")]
    )
    with pytest.raises(IntegrityError, match=r"config\.json"):
        install_source(str(archive), cache=cache)


# ---- Hugging Face --------------------------------------------------------------------------
def test_parse_hf_source() -> None:
    assert parse_hf_source("hf/google/flan-t5@main") == ("google/flan-t5", "main")
    assert parse_hf_source("hf/bert-base-uncased") == ("bert-base-uncased", None)
    with pytest.raises(InvalidReferenceError):
        parse_hf_source("hf/../etc")
    assert classify_source("hf/some/repo") == "hf"


# ---- detection -----------------------------------------------------------------------------
def test_format_of() -> None:
    assert format_of("onnx/encoder_model.onnx") == "onnx"
    assert format_of("model-00001-of-00002.safetensors") == "safetensors"
    assert format_of("pytorch_model.bin") == "pytorch"
    assert format_of("training_args.bin") is None
    assert format_of("model.pt") == "pytorch"
    assert format_of("tf_model.h5") == "tensorflow"
    assert format_of("saved_model/saved_model.pb") == "tensorflow"
    assert format_of("llama-q4_k_m.gguf") == "gguf"
    assert format_of("model.tflite") == "tflite"
    assert format_of("tokenizer.json") is None


def test_detect_prefers_onnx_and_names_encoders() -> None:
    det = detect(
        ["model.safetensors", "onnx/encoder_model.onnx", "onnx/decoder_model.onnx", "x.json"]
    )
    assert (det.execution_format, det.framework) == ("onnx", "ONNX")
    assert [(f["path"], f["type"]) for f in det.execution_files] == [
        ("onnx/decoder_model.onnx", "decoder"),
        ("onnx/encoder_model.onnx", "encoder"),
    ]
    assert det.multi_encoder is False
    clip = detect(["text_encoder/model.onnx", "vision_encoder/model.onnx"])
    assert clip.multi_encoder is True


@pytest.mark.parametrize(
    ("config", "inputs", "output"),
    [
        ({"model_type": "gpt2", "vocab_size": 50257}, ["input_ids", "attention_mask"], "logits"),
        (
            {"model_type": "t5", "vocab_size": 32128},
            ["input_ids", "attention_mask", "decoder_input_ids"],
            "logits",
        ),
        ({"model_type": "vit", "image_size": 384}, ["pixel_values"], "logits"),
        ({"model_type": "whisper"}, ["input_features", "decoder_input_ids"], "logits"),
        ({"model_type": "distilbert"}, ["input_ids", "attention_mask"], "last_hidden_state"),
    ],
)
def test_io_schema_families(config: dict[str, object], inputs: list[str], output: str) -> None:
    det = detect(["model.safetensors"], config)
    assert det.io is not None
    assert [t["name"] for t in det.io["inputs"]] == inputs
    assert det.io["outputs"][0]["name"] == output
    if config["model_type"] == "vit":
        assert det.io["inputs"][0]["shape"] == [-1, 3, 384, 384]


def test_unknown_family_has_no_io() -> None:
    assert detect(["w.gguf"], {"model_type": "something-new"}).io is None
    assert detect(["w.gguf"]).execution_format == "gguf"


SLOW_INSTALL = """
import sys, time
from pathlib import Path
from axon.cache import Cache
from axon.install import install_source

class Slow:
    def begin(self, key, description, total=None): pass
    def advance(self, key, nbytes): time.sleep(60)
    def end(self, key, *, ok=True, note=""): pass
    def message(self, text): pass

install_source(sys.argv[1], as_ref="a/b@v1", cache=Cache(Path(sys.argv[2])), progress=Slow())
"""


def test_sigkill_mid_install_leaves_no_model(cache: Cache, make_model_dir: MakeDir) -> None:
    import subprocess
    import sys
    import time

    src = make_model_dir()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_INSTALL, str(src), str(cache.root)])
    try:
        deadline = time.monotonic() + 30
        while not leftovers(cache) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftovers(cache), "the install never started staging"
    finally:
        proc.kill()
        proc.wait()
    assert cache.list() == []  # the half-written staging dir is not a model
    assert not cache.exists(ModelRef.parse("a/b@v1"))
    assert cache.clean_stale(max_age=3600) == []  # too recent: could be a running install
    assert len(cache.clean_stale(max_age=0)) == 1
    assert leftovers(cache) == []


def test_source_changing_during_copy_is_refused(tmp_path: Path) -> None:
    from axon.sources import copy_hashing

    src = tmp_path / "weights.bin"
    src.write_bytes(b"a" * 10_000)

    done: list[int] = []

    def writer(n: int) -> None:  # another process appends once while we copy
        if not done:
            done.append(n)
            with open(src, "ab") as fh:
                fh.write(b"more")

    with pytest.raises(SourceError, match="changed while"):
        copy_hashing(src, tmp_path / "copy.bin", writer)
    digest = copy_hashing(src, tmp_path / "copy2.bin", lambda n: None)
    assert digest.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (tmp_path / "copy2.bin").read_bytes() == src.read_bytes()


# A stand-in for the Hugging Face Hub (the real one is on the internet, which tests never
# touch): just the three HTTP calls snapshot_download makes, served on 127.0.0.1.
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        import http.server
        import re
        import threading

        hub = self
        self.repos = repos
        self.requests: list[str] = []
        info = re.compile(r"/api/models/(.+)/revision/([^/?]+)")
        resolve = re.compile(r"/(.+)/resolve/([^/]+)/(.+)")
        tree = re.compile(r"/api/models/(.+)/tree/([^/?]+)")

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.reply(head=True)

            def do_GET(self) -> None:
                self.reply(head=False)

            def reply(self, *, head: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append(f"{self.command} {path}")
                if m := info.fullmatch(path):
                    files = hub.repos.get(m[1])
                    if files is None:
                        return self.send(
                            404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"}
                        )
                    body = json.dumps(
                        {
                            "id": m[1],
                            "sha": HUB_COMMIT,
                            "siblings": [{"rfilename": f} for f in files],
                        }
                    ).encode()
                    return self.send(200, body, {"Content-Type": "application/json"}, head)
                if (m := tree.fullmatch(path)) and m[1] in hub.repos:
                    entries = [
                        {
                            "type": "file",
                            "path": f,
                            "size": len(d),
                            "oid": hashlib.sha1(d).hexdigest(),
                        }
                        for f, d in hub.repos[m[1]].items()
                    ]
                    return self.send(200, json.dumps(entries).encode(), {}, head)
                if (m := resolve.fullmatch(path)) and m[3] in hub.repos.get(m[1], {}):
                    data = hub.repos[m[1]][m[3]]
                    headers = {
                        "X-Repo-Commit": HUB_COMMIT,
                        "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    }
                    return self.send(200, data, headers, head)
                return self.send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, head)

            def send(
                self, code: int, body: bytes, headers: dict[str, str], head: bool = False
            ) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    """Environment for a child `axon`: huggingface_hub computes its URLs from HF_ENDPOINT at
    import time, so only a fresh process is sure to talk to nothing but 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="0",
    )
    return env


def axon_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, object], str]:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "axon", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, data, proc.stderr


@pytest.fixture
def fake_hub():  # type: ignore[no-untyped-def]
    from tests.fixtures.common import require_module
    from tests.fixtures.models import safetensors_bytes

    require_module("huggingface_hub", "hf")

    hub = FakeHub(
        {
            "tiny-org/tiny-bert": {
                "config.json": b'{"model_type": "bert", "hidden_size": 16}',
                "model.safetensors": safetensors_bytes(64),
                "tokenizer.json": b"{}",
                "onnx/model.onnx": b"onnx-bytes",
            }
        }
    )
    yield hub
    hub.close()


def test_install_from_the_hub(
    cache: Cache, fake_hub: FakeHub, tmp_path: Path, axon_home: Path
) -> None:
    env = hub_env(tmp_path, fake_hub.url)
    code, data, err = axon_json(env, "install", "hf/tiny-org/tiny-bert@main")
    assert code == 0, err
    assert data["ref"] == "hf/tiny-org/tiny-bert@main" and data["format"] == "onnx"
    model = cache.get("hf/tiny-org/tiny-bert@main")
    assert {f.path for f in model.manifest.files} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "onnx/model.onnx",
    }
    assert (model.path / "onnx" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert not (model.path / "onnx" / "model.onnx").is_symlink()
    assert cache.verify(model.ref).ok
    assert "GET /api/models/tiny-org/tiny-bert/revision/main" in fake_hub.requests


def test_hub_unknown_repo(cache: Cache, fake_hub: FakeHub, tmp_path: Path) -> None:
    code, _, err = axon_json(hub_env(tmp_path, fake_hub.url), "install", "hf/nobody/nothing")
    assert code == SourceError.exit_code
    assert "not found on the Hugging Face Hub" in err and "Traceback" not in err
    assert cache.list() == []


def test_hub_without_network(cache: Cache, tmp_path: Path) -> None:
    from tests.fixtures.common import free_port

    # A closed loopback port stands in for "no network"; nothing leaves this machine.
    env = hub_env(tmp_path, f"http://127.0.0.1:{free_port()}")
    code, _, err = axon_json(env, "install", "hf/someone/tiny-model")
    assert code == TargetUnreachableError.exit_code
    assert "cannot download hf/someone/tiny-model" in err and "Traceback" not in err
    assert cache.list() == []


def test_concurrent_installs_of_one_version_leave_one_whole_model(
    cache: Cache, make_model_dir: MakeDir
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sources = [make_model_dir(seed=i, weights_size=300_000) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: install_source(str(s), as_ref="a/b@v1", cache=cache), sources))
    model = cache.get("a/b@v1")
    assert cache.verify(model.ref, full=True).ok  # one of the four, complete
    assert cache.verify(model.ref).ok  # and the hash index holds no other install's digests
    weights = (model.path / "model.safetensors").read_bytes()
    assert weights in [(s / "model.safetensors").read_bytes() for s in sources]
    assert leftovers(cache) == []


def test_an_archive_bigger_than_the_free_space_is_refused_before_writing(
    tmp_path: Path, make_model_dir: MakeDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny .axon that inflates past the cache's free space (a decompression bomb, or just
    too big) is refused member by member before a byte of it is written: the cache's disk,
    which serving processes may share, never fills up."""
    from tests.fixtures.common import tmpfs

    with tmpfs(tmp_path / "small", "size=4m") as small:
        monkeypatch.setenv("AXON_HOME", str(small / "home"))
        src = make_model_dir(extra={"zeros.bin": bytes(16 * 1024 * 1024)})
        archive = tmp_path / "bomb.axon"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(src, arcname=".")
        assert archive.stat().st_size < 100_000
        with pytest.raises(NoSpaceError) as info:
            install_source(str(archive), as_ref="hf/bomb@v1", cache=Cache.from_config())
        message = str(info.value)
        assert "zeros.bin" in message and "16.0 MiB" in message and "bomb.axon" in message
        assert info.value.hint
        usage = os.statvfs(small)
        assert usage.f_bfree * usage.f_frsize > 3 * 1024 * 1024  # nothing big was written
        assert not list((small / "home").rglob("zeros.bin"))


def test_a_directory_too_big_for_the_cache_is_no_space_and_leaves_nothing(
    tmp_path: Path, make_model_dir: MakeDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.common import tmpfs

    with tmpfs(tmp_path / "small", "size=4m") as small:
        monkeypatch.setenv("AXON_HOME", str(small / "home"))
        src = make_model_dir(extra={"big.bin": os.urandom(6 * 1024 * 1024)})
        with pytest.raises(NoSpaceError) as info:
            install_source(str(src), as_ref="hf/big@v1", cache=Cache.from_config())
        assert "cache" in str(info.value) and info.value.exit_code == 7
        assert not [p for p in (small / "home" / "cache" / "models").rglob("*") if p.is_file()]


def test_where_the_kernel_cannot_copy_the_source_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range refused (EXDEV: another filesystem on older kernels): one pass reads,
    hashes and writes; the separate hashing pass is not run (it would read it all again)."""
    import errno

    import axon.sources as sources

    def refuse(*_a: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def second_pass(*_a: object, **_k: object) -> str:
        raise AssertionError("the source was read a second time")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(sources, "_sha256_fd", second_pass)
    data = os.urandom(3 * 1024 * 1024 + 5)
    src = tmp_path / "w.bin"
    src.write_bytes(data)
    seen: list[int] = []
    digest = sources.copy_hashing(src, tmp_path / "copy.bin", seen.append)
    assert digest.sha256 == hashlib.sha256(data).hexdigest() and digest.size == len(data)
    assert (tmp_path / "copy.bin").read_bytes() == data and sum(seen) == len(data)


# ---- symlinks in a source directory ------------------------------------------------------
SECRET = b"TOP-SECRET-" * 10


def _model_with_link(root: Path, name: str, target: str | Path) -> Path:
    """``root/model``: a config.json and ``name``, a symlink to ``target``."""
    src = root / "model"
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_bytes(b"{}")
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    (src / name).symlink_to(target)
    return src


def _installed_bytes(axon_home: Path) -> bytes:
    models = axon_home / "cache" / "models"
    return b"".join(p.read_bytes() for p in sorted(models.rglob("*")) if p.is_file())


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_symlink_leading_out_of_the_directory_is_refused_by_name(
    axon_home: Path, tmp_path: Path, how: str
) -> None:
    """`ln -s /etc/passwd model/passwd` (or `../../etc/hostname`): the file it points to is
    not part of the model. Refused naming the link and where it leads (exit 4), nothing
    installed; `--follow-symlinks` says the user wants it, and then it is copied."""
    from tests.helpers import run_axon

    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    target = secret if how == "absolute" else Path("../" * 8) / secret.relative_to("/")
    src = _model_with_link(tmp_path, "sub/passwd", target)
    done = run_axon("install", str(src), "--as", "a/b@v1")
    assert done.code == 4, done.err
    assert f"{src}/sub/passwd" in done.err and str(secret) in done.err
    assert "--follow-symlinks" in done.err and "Traceback" not in done.err
    assert SECRET not in _installed_bytes(axon_home)
    assert not (axon_home / "cache" / "models" / "a").exists()

    done = run_axon("install", str(src), "--as", "a/b@v1", "--follow-symlinks")
    assert done.code == 0, done.err
    installed = axon_home / "cache" / "models" / "a" / "b" / "v1" / "sub" / "passwd"
    assert installed.read_bytes() == SECRET and not installed.is_symlink()


def test_a_symlink_inside_the_directory_is_followed(cache: Cache, tmp_path: Path) -> None:
    src = _model_with_link(tmp_path, "alias.json", "config.json")
    (src / "deep").mkdir()
    (src / "deep" / "up.json").symlink_to("../config.json")
    model = install_source(str(src), as_ref="a/b@v1", cache=cache)
    for rel in ("alias.json", "deep/up.json"):
        assert (model.path / rel).read_bytes() == b"{}" and not (model.path / rel).is_symlink()


def test_a_snapshot_link_leading_past_its_blobs_is_refused(cache: Cache, tmp_path: Path) -> None:
    """A Hugging Face snapshot's links may lead into its repo's blobs/, nowhere else."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    (tmp_path / "repo" / "blobs").mkdir(parents=True)
    (tmp_path / "repo" / "blobs" / "abc").write_bytes(b"weights")
    snap = tmp_path / "repo" / "snapshots" / "rev"
    snap.mkdir(parents=True)
    (snap / "model.onnx").symlink_to("../../blobs/abc")
    (snap / "config.json").symlink_to(secret)
    with pytest.raises(SourceError, match="outside the model directory") as info:
        install_source(str(snap), as_ref="hf/snap@rev", cache=cache)
    assert str(secret) in str(info.value) and cache.list() == [] and leftovers(cache) == []
    # blobs/ itself a link (to anywhere) is not the snapshot's own storage
    (snap / "config.json").unlink()
    os.rename(tmp_path / "repo" / "blobs", tmp_path / "elsewhere")
    (tmp_path / "repo" / "blobs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SourceError, match="outside the model directory"):
        install_source(str(snap), as_ref="hf/snap@rev", cache=cache)


# what each odd link is refused as: (without --follow-symlinks, with it); None: installed
ODD_LINKS = {
    "dir-outside": ("symlinked directory", None),
    "dir-inside": ("symlinked directory", "symlink loop"),
    "loop": ("symlink loop", "symlink loop"),
    "dir-loop": ("symlinked directory", "symlink loop"),
    "dev-zero": ("outside the model directory", "not a regular file"),
    "fifo": ("outside the model directory", "not a regular file"),
    "fifo-inside": ("not a regular file", "not a regular file"),
    "broken": ("broken symlink", "broken symlink"),
}


@pytest.mark.parametrize("case", ODD_LINKS)
@pytest.mark.parametrize("follow", [False, True])
def test_odd_links_are_refused_without_hanging(
    axon_home: Path, tmp_path: Path, case: str, follow: bool
) -> None:
    """A linked directory, a loop, a link to /dev/zero or to a fifo (opening it would block
    until a writer came) or to nothing: exit 4 naming the link, in well under the timeout.
    ``--follow-symlinks`` follows directories, never devices, fifos or loops."""
    from tests.helpers import run_axon

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    os.mkfifo(tmp_path / "fifo")
    targets = {
        "dir-outside": ("link", outside),
        "dir-inside": ("link", Path(".")),  # the model dir itself: a loop once followed
        "loop": ("loop", Path("loop")),
        "dir-loop": ("sub/up", Path("..")),
        "dev-zero": ("link", Path("/dev/zero")),
        "fifo": ("link", tmp_path / "fifo"),
        "fifo-inside": ("link", Path("pipe")),
        "broken": ("link", tmp_path / "nothing-here"),
    }
    name, target = targets[case]
    src = _model_with_link(tmp_path, name, target)
    if case == "fifo-inside":
        os.mkfifo(src / "pipe")
    args = ["install", str(src), "--as", "a/b@v1", *(["--follow-symlinks"] if follow else [])]
    done = run_axon(*args, timeout=60)
    words = ODD_LINKS[case][follow]
    if words is None:  # asked for: the linked directory's files
        assert done.code == 0, done.err
        assert SECRET in _installed_bytes(axon_home)
        return
    assert done.code == 4, done.err
    assert words in done.err and "Traceback" not in done.err
    assert f"{src}/{name}" in done.err and f"{src}/{name}/" not in done.err  # the link, by name
    assert SECRET not in _installed_bytes(axon_home)
    assert not (axon_home / "cache" / "models" / "a").exists()


def test_a_link_changed_after_listing_cannot_lead_out(tmp_path: Path) -> None:
    """The file opened is checked, not the name listed: a link retargeted between listing
    and copying (outside, or to another file) is refused, and its bytes are not copied."""
    from axon.sources import copy_hashing, source_files

    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    src = _model_with_link(tmp_path, "alias.json", "config.json")
    listing = source_files(src)
    (listing_file,) = [f for f in listing.files if f.rel == "alias.json"]
    (src / "alias.json").unlink()
    (src / "alias.json").symlink_to(secret)
    dst = tmp_path / "copy.json"
    with pytest.raises(SourceError, match=r"alias\.json"):
        copy_hashing(Path(listing_file.path), dst, lambda n: None, listed=listing_file)
    assert not dst.exists() or SECRET not in dst.read_bytes()
    # the same inode, but now reached through a link leading out: refused by where it is
    (src / "alias.json").unlink()
    moved = tmp_path / "moved.json"
    os.rename(src / "config.json", moved)
    (src / "config.json").symlink_to(moved)
    (config_file,) = [f for f in listing.files if f.rel == "config.json"]
    with pytest.raises(SourceError, match="outside the model directory"):
        copy_hashing(Path(config_file.path), dst, lambda n: None, listed=config_file,
                     roots=listing.roots)  # fmt: skip


def test_a_read_only_cache_is_a_permission_error_not_a_crash(
    tmp_path: Path, make_model_dir: MakeDir
) -> None:
    """A cache on a read-only filesystem was "unexpected error" (exit 1, OSError EROFS); it
    is exit 7 naming the cache, with what to do."""
    from tests.fixtures.common import tmpfs
    from tests.helpers import run_axon

    src = make_model_dir()
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        done = run_axon("install", str(src), "--as", "a/b@v1", env={"AXON_HOME": str(ro)})
    assert done.code == 7, done.err
    assert f"cannot write the cache at {ro}/cache/models" in done.err
    assert "AXON_HOME" in done.err and "Traceback" not in done.err
