"""Property tests for every parser that reads untrusted text: model references, manifest
paths and documents, the config file and .axon archives. Whatever the input: only our own
error type (never KeyError/TypeError/...), and nothing accepted that leads outside a root."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon.errors import (
    ConfigError,
    IntegrityError,
    InvalidReferenceError,
    ManifestError,
    SourceError,
)
from modelpkg.manifest import Manifest, check_relpath
from modelpkg.refs import ModelRef
from tests.helpers import write_config
from tests.stress.figures import record, scale
from tests.stress.harness import billion_laughs

pytestmark = pytest.mark.timeout(3600)
EXAMPLES = scale(60, 1000)
CFG = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
ROOT = Path("/srv/models-root")

# Pieces a hostile input is made of: separators, dots, encodings, controls, unicode.
HOSTILE = st.sampled_from(
    [
        "/",
        "..",
        ".",
        "@",
        "\\",
        "\x00",
        "\n",
        "%2e",
        "%2f",
        "~",
        "-",
        " ",
        "é",
        "\u202e",
        "a",
        "b1",
        "_",
        "+",
        ":",
        "//",
        "../",
        "..\\",
        "C:",
        "*",
        "$HOME",
        "'",
        '"',
        ";",
    ]
)
hostile_text = st.one_of(st.text(max_size=80), st.lists(HOSTILE, max_size=14).map("".join))


def _inside(root: Path, rel: str) -> bool:
    resolved = os.path.normpath(os.path.join(root, rel))
    return resolved.startswith(str(root) + os.sep)


@CFG
@given(hostile_text)
def test_model_ref_parse_never_escapes(text: str) -> None:
    record("hostile_input", "model_refs", 1, add=True)
    try:
        ref = ModelRef.parse(text)
    except InvalidReferenceError:
        return
    assert _inside(ROOT, str(ref.relpath))
    assert len(ref.relpath.parts) >= 3
    assert ModelRef.parse(str(ref)) == ref  # what we print parses back the same


@CFG
@given(hostile_text)
def test_check_relpath_never_escapes(text: str) -> None:
    record("hostile_input", "manifest_paths", 1, add=True)
    try:
        rel = check_relpath(text)
    except ManifestError:
        return
    assert not os.path.isabs(rel) and _inside(ROOT, rel)
    assert ".." not in rel.split("/")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
file_entries = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "path": hostile_text | json_values,
            "size": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
            "sha256": st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=66)
            | json_values,
        },
    )
    | json_values,
    max_size=6,
)
manifests = st.fixed_dictionaries(
    {},
    optional={
        "apiVersion": st.sampled_from(["v1", "axon.mlos.io/v1", "x"]) | json_values,
        "kind": st.just("Model") | json_values,
        "metadata": st.fixed_dictionaries(
            {}, optional={"name": hostile_text, "namespace": hostile_text, "version": json_values}
        )
        | json_values,
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "format": st.fixed_dictionaries(
                    {}, optional={"files": file_entries, "execution_format": json_values}
                )
                | json_values
            },
        )
        | json_values,
    },
)


@CFG
@given(manifests)
def test_manifest_problems_only_raise_manifest_errors(data: dict[str, Any]) -> None:
    record("hostile_input", "manifests", 1, add=True)
    manifest = Manifest(data)
    for strict in (False, True):
        problems = manifest.problems(strict=strict)
        assert all(isinstance(p, ManifestError) for p in problems)
        if not problems:  # accepted: every listed path stays inside a model dir
            assert all(_inside(ROOT, f.path) for f in manifest.files)
            assert all(f.size >= 0 for f in manifest.files)
    _ = manifest.files, manifest.total_size, manifest.execution_format, manifest.framework


@CFG
@given(st.one_of(st.binary(max_size=300), hostile_text, manifests.map(yaml.safe_dump)))
def test_manifest_from_text_only_raises_manifest_error(text: Any) -> None:
    record("hostile_input", "manifest_texts", 1, add=True)
    try:
        manifest = Manifest.from_text(text)
        manifest.validate(strict=False)
    except ManifestError:
        return


config_docs = st.fixed_dictionaries(
    {},
    optional={
        "cache_dir": json_values,
        "log_level": json_values,
        "registry": json_values,
        "download": json_values,
        "mlos_targets": st.dictionaries(
            st.text(max_size=8),
            st.fixed_dictionaries(
                {},
                optional={
                    k: json_values | st.text(max_size=20)
                    for k in (
                        "type",
                        "endpoint",
                        "storage_type",
                        "storage_path",
                        "access_method",
                        "ssh_port",
                        "dir_mode",
                        "file_mode",
                        "timeout",
                        "instances",
                        "strategy",
                    )
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
        "clusters": json_values,
    },
)


@CFG
@given(st.one_of(config_docs.map(yaml.safe_dump), hostile_text))
def test_config_with_wrong_types_is_a_config_error(text: str) -> None:
    from axon.config import load_config

    record("hostile_input", "config_files", 1, add=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError:
            return


# ---- archives ---------------------------------------------------------------------------
member_names = st.one_of(
    st.sampled_from(
        [
            "../evil",
            "/etc/evil",
            "a/../../evil",
            "./ok.bin",
            "dir/",
            "a\\..\\evil",
            "ok.bin",
            "manifest.yaml",
            "x/" * 3 + "deep.bin",
            "..",
            ".",
            "",
            "model/config.json",
        ]
    ),
    hostile_text,
)
member_kinds = st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "chr"])
members = st.lists(st.tuples(member_names, member_kinds, hostile_text), min_size=1, max_size=6)


def _tar_bytes(entries: list[tuple[str, str, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = (extra or "x").encode("utf-8", "replace")
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = extra or "../../outside"
            else:
                info.type = tarfile.FIFOTYPE if kind == "fifo" else tarfile.CHRTYPE
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root) or path.parent.resolve().is_relative_to(root)


@CFG
@given(members)
def test_archive_install_never_writes_outside(entries: list[tuple[str, str, str]]) -> None:
    from axon.cache import Cache
    from axon.install import install_source

    record("hostile_input", "archives", 1, add=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        jail = base / "jail"
        (jail / "cache").mkdir(parents=True)
        archive = base / "in.axon"
        try:
            archive.write_bytes(_tar_bytes(entries))
        except (ValueError, UnicodeError):
            return  # tarfile itself cannot write this name
        before = _tree(base)
        try:
            model = install_source(str(archive), as_ref="fz/arch@v1", cache=Cache(jail / "cache"))
        except (SourceError, ManifestError, IntegrityError, InvalidReferenceError):
            model = None
        # Nothing the archive named may land anywhere but in the installed model: not in the
        # cache around the staging dir, not next to the jail, not at an absolute path.
        named = {PurePosixPath(name.replace("\\", "/")).name for name, _k, _e in entries} - {""}
        inside = model.path.resolve() if model is not None else None
        for rel in sorted(_tree(base) - before):
            path = base / rel
            assert rel.startswith("jail/cache/"), f"{rel} written outside the cache"
            if path.name in named:
                assert inside is not None and _under(path, inside), f"{rel} outside the model"
        assert not Path("/etc/evil").exists()  # the absolute member of the corpus
        for path in (jail / "cache").rglob("*"):
            assert not path.is_symlink(), path
            if path.is_file():
                assert path.resolve().is_relative_to(jail.resolve())
        if model is not None:
            assert all(_inside(model.path, f.path) for f in Manifest.load(model.path).files)


def test_regression_unhashable_api_version_is_a_problem_not_a_crash() -> None:
    # Found by test_manifest_problems_only_raise_manifest_errors: a list as apiVersion made
    # Manifest.problems() raise TypeError (mlos-core answered 500 to such an upload).
    problems = Manifest({"apiVersion": ["v1"], "kind": "Model"}).problems()
    assert [p.field for p in problems] == ["apiVersion"]


def test_regression_yaml_alias_bomb_is_refused() -> None:
    # Found by the hostile corpus: 516 bytes of nested YAML aliases became 80 MB of JSON
    # (18 s of CPU) in Manifest.to_json / mlos-core's upload state; 9 levels is out of memory.
    with pytest.raises(ManifestError, match="aliases"):
        Manifest.from_text(billion_laughs())


target_specs = st.one_of(
    hostile_text,
    st.tuples(
        st.sampled_from(["http://", "https://", "s3://", "nfs://", "file://", "", "ftp://"]),
        st.lists(st.sampled_from(["[", "]", "::1", ":", "80", "99999", "a", "/", "..", "@", "%"])),
    ).map(lambda t: t[0] + "".join(t[1])),
)


@CFG
@given(target_specs)
def test_resolve_target_only_raises_axon_errors(spec: str) -> None:
    from axon.config import Config
    from axon.errors import AxonError
    from axon.targets import resolve_target

    record("hostile_input", "target_specs", 1, add=True)
    try:
        resolve_target(spec, Config())
    except AxonError:
        return


def test_regression_unclosed_ipv6_url_is_target_not_found() -> None:
    # Found by the CLI corpus: `axon publish m -t 'http://[::1'` was "unexpected error" (exit 1,
    # ValueError from urlsplit); now a TargetNotFoundError (exit 3) naming the URL.
    from axon.config import Config
    from axon.errors import TargetNotFoundError
    from axon.targets import resolve_target

    with pytest.raises(TargetNotFoundError, match="not a valid URL"):
        resolve_target("http://[::1", Config())


@CFG
@given(st.one_of(hostile_text, st.text(min_size=300, max_size=5000)))
def test_install_source_names_only_raise_axon_errors(source: str) -> None:
    # Found with the CLI corpus: a 5000-character source name was "unexpected error" (exit 1,
    # OSError ENAMETOOLONG from Path.is_dir); "~nosuchuser/x" raised RuntimeError.
    from axon.errors import AxonError
    from axon.install import classify_source

    record("hostile_input", "install_sources", 1, add=True)
    try:
        kind = classify_source(source)
    except AxonError:
        return
    assert kind in ("dir", "archive", "hf")


def test_regression_configured_storage_path_with_bad_url_is_a_config_error(
    tmp_path: Path,
) -> None:
    # Found with the config corpus: storage_path "s3://[x" made `axon targets list` and
    # `axon publish -t a` an "unexpected error" (exit 1, ValueError from urlsplit). It is the
    # config's fault: a ConfigError (exit 6) naming the entry.
    from axon.config import load_config
    from axon.errors import EXIT_CONFIG, ConfigError
    from axon.targets import resolve_target

    conf = {"type": "network_storage", "storage_type": "s3", "storage_path": "s3://[x"}
    path = write_config(tmp_path, {"a": conf})
    with pytest.raises(ConfigError, match=r"mlos_targets\.a") as info:
        resolve_target("a", load_config(path))
    assert info.value.exit_code == EXIT_CONFIG


def _archive(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info in [tarfile.TarInfo("config.json"), *members]:
            data = b"{}" if info.isreg() else b""
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
    return path


def _deep_dir(base: Path, total: int) -> Path:
    """A directory whose absolute path is about ``total`` bytes long (each name < 255)."""
    path = base
    while len(os.fsencode(path)) < total - 250:
        path = path / ("d" * 240)
    path.mkdir(parents=True)
    return path


def _no_model(home: Path) -> bool:
    models = home / "cache" / "models"
    return not models.exists() or not [p for p in models.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "name",
    ["a" * 300, "d" * 300 + "/weights.bin", "ok/" + "é" * 130 + ".bin"],
    ids=["file-300-bytes", "dir-300-bytes", "utf8-260-bytes"],
)
def test_regression_archive_member_name_too_long_is_invalid_input(
    tmp_path: Path, name: str
) -> None:
    # Found by the attacker corpus: a member with a 300-byte name was "unexpected error"
    # (exit 1, OSError ENAMETOOLONG from open); it is invalid input, naming the member.
    from tests.helpers import run_axon

    home = tmp_path / "home"
    archive = _archive(tmp_path / "long.axon", [tarfile.TarInfo(name)])
    done = run_axon("install", str(archive), "--as", "a/b@v1", env={"AXON_HOME": str(home)})
    assert done.code == 4, done.err
    assert name[:40] in done.err and "255 bytes" in done.err and "Traceback" not in done.err
    assert _no_model(home)


def test_regression_a_path_too_long_for_the_cache_is_invalid_input(tmp_path: Path) -> None:
    # A member (or a directory's file) with a valid name whose path under a deep cache
    # directory passes the kernel's 4096 bytes: ENAMETOOLONG was exit 1; it is exit 4
    # naming the file, with what to do (a shorter name, or a cache at a shorter path).
    from tests.helpers import run_axon

    home = _deep_dir(tmp_path / "deep", 3600) / "home"
    rel = "/".join(["s" * 200] * 4) + "/w.bin"
    archive = _archive(tmp_path / "deep.axon", [tarfile.TarInfo(rel)])
    source = tmp_path / "src"
    (source / rel).parent.mkdir(parents=True)
    (source / rel).write_bytes(b"w")
    (source / "config.json").write_bytes(b"{}")
    for install_from in (archive, source):
        done = run_axon(
            "install", str(install_from), "--as", "a/b@v1", env={"AXON_HOME": str(home)}
        )
        assert done.code == 4, done.err
        assert "s" * 40 in done.err and "File name too long" in done.err, done.err
        assert "AXON_HOME" in done.err and "Traceback" not in done.err
        assert _no_model(home)


def test_regression_archive_links_are_refused_naming_member_and_target(tmp_path: Path) -> None:
    # The directory rules hold for archives: a symlink or hard link member is refused by name
    # with where it points (a .axon holds files); nothing is written, not even the link.
    from tests.helpers import run_axon

    home = tmp_path / "home"
    for kind, name in ((tarfile.SYMTYPE, "passwd"), (tarfile.LNKTYPE, "hostname")):
        link = tarfile.TarInfo(name)
        link.type = kind
        link.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "../../../etc/hostname"
        archive = _archive(tmp_path / f"{name}.axon", [link])
        done = run_axon("install", str(archive), "--as", "a/b@v1", env={"AXON_HOME": str(home)})
        assert done.code == 4, done.err
        assert repr(name) in done.err and repr(link.linkname) in done.err
        assert "--dereference" in done.err and _no_model(home)
