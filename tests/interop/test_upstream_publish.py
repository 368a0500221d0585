"""The upstream Go axon publishing to, and registering with, our mlos-core; then our axon
publishing the same model where upstream already placed it.

Upstream ``publish`` copies the cache dir to ``/var/lib/mlos/models/<ns>/<name>/<ver>/``
and POSTs ``/models/scan`` to ``$MLOS_CORE_ENDPOINT``. Both it and our server run in private
mount namespaces where one temp dir is bound at ``/var/lib/mlos/models`` (``bound_mlos``),
so they see the same path, as on a real host, and the machine's own /var/lib is untouched.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelpkg.refs import ModelRef
from tests.fixtures.common import wait_for
from tests.fixtures.models import model_files
from tests.helpers import run_axon
from tests.interop.conftest import BoundServer, SharedConfig, UpstreamInstall
from tests.interop.upstream import MODELS_DIR, Upstream

REF = ModelRef.parse("acme/tiny-bert@v1")


def registered(server: BoundServer) -> dict[str, dict[str, Any]]:
    models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
    return {m["id"]: m for m in models}


def files_under(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(params=["all", "first"])
def published_by_upstream(
    request: pytest.FixtureRequest,
    upstream: Upstream,
    upstream_install: UpstreamInstall,
    bound_mlos: BoundServer,
    tmp_path: Path,
) -> tuple[dict[str, bytes], Path]:
    """REF installed and published by the binary into ``bound_mlos``'s models dir:
    (the model's files, the dir it landed in, seen from here). Its registry listed every
    file with size and sha256 (``all``), or only the first, without (``first``)."""
    files = model_files(tmp_path)
    cache_dir = upstream_install(REF, files, listed=request.param)
    run = upstream.run_bound(
        bound_mlos.models, "publish", str(REF), env={"MLOS_CORE_ENDPOINT": bound_mlos.url}
    )
    assert run.code == 0, run.out + run.err
    assert f"Location: {MODELS_DIR}/{REF.relpath}" in run.out
    # its POST /models/scan has a 2 s budget: on a loaded machine it may give up ("MLOS Core
    # not running") while the server still scans; the model is registered either way
    wait_for(lambda: REF.id in registered(bound_mlos), timeout=20, what="the scan")
    final = bound_mlos.models / REF.relpath
    assert files_under(final) == files_under(cache_dir)  # a plain copy of its cache dir
    return files, final


def test_upstream_publish_is_registered_by_our_mlos_core(
    published_by_upstream: tuple[dict[str, bytes], Path], bound_mlos: BoundServer
) -> None:
    """The POST /models/scan upstream sends after its copy registers the model (the
    fixture waited for that)."""
    entry = registered(bound_mlos)[REF.id]
    assert entry["path"] == f"{MODELS_DIR}/{REF.relpath}"
    answer = httpx.get(f"{bound_mlos.url}/models/{REF.id}", timeout=10)
    assert answer.status_code == 200


def test_upstream_register_of_what_it_published(
    published_by_upstream: tuple[dict[str, bytes], Path],
    upstream: Upstream,
    bound_mlos: BoundServer,
) -> None:
    """Upstream ``register`` finds the published copy first and sends its path: accepted
    (the model's own directory in the models dir), and again (already registered: 200)."""
    for _ in range(2):
        run = upstream.run_bound(
            bound_mlos.models, "register", str(REF), env={"MLOS_CORE_ENDPOINT": bound_mlos.url}
        )
        assert run.code == 0, run.out + run.err
        assert f"Using published model: {MODELS_DIR}/{REF.relpath}" in run.out
    assert registered(bound_mlos)[REF.id]["path"] == f"{MODELS_DIR}/{REF.relpath}"


def test_upstream_publish_without_our_server_running_warns_and_places_the_model(
    upstream: Upstream, upstream_install: UpstreamInstall, tmp_path: Path
) -> None:
    """Only the binary's side: no server at MLOS_CORE_ENDPOINT is a warning, the copy is
    done (what our server then picks up at start-up: docs/compatibility.md)."""
    from tests.fixtures.common import free_port
    from tests.interop.upstream import require_mount_namespace

    require_mount_namespace()
    files = model_files(tmp_path)
    upstream_install(REF, files)
    models = tmp_path / "models"
    models.mkdir()
    endpoint = f"http://127.0.0.1:{free_port()}"
    run = upstream.run_bound(models, "publish", str(REF), env={"MLOS_CORE_ENDPOINT": endpoint})
    assert run.code == 0 and "MLOS Core not running" in run.out
    assert {k: v for k, v in files_under(models / REF.relpath).items() if k in files} == files


# ---- our publish where upstream placed the model: nothing is sent again ------------------
def check_ours_replaced_upstreams(final: Path, files: dict[str, bytes]) -> None:
    """The version now there is ours: our manifest (every file's sha256) and the files,
    without upstream's bookkeeping."""
    assert files_under(final) == {**files, "manifest.yaml": (final / "manifest.yaml").read_bytes()}
    listed = yaml.safe_load((final / "manifest.yaml").read_text())["spec"]["format"]["files"]
    assert {f["path"]: f["sha256"] for f in listed} == {
        p: hashlib.sha256(b).hexdigest() for p, b in files.items()
    }


def test_our_publish_to_the_directory_after_upstreams_sends_nothing(
    published_by_upstream: tuple[dict[str, bytes], Path], bound_mlos: BoundServer
) -> None:
    files, final = published_by_upstream
    run = run_axon("publish", str(REF), "-t", str(bound_mlos.models), "--json")
    assert run.code == 0, run.out + run.err
    (result,) = run.json()["results"]
    assert (result["files_sent"], result["bytes_sent"]) == (0, 0), result
    check_ours_replaced_upstreams(final, files)


def test_our_publish_over_ssh_after_upstreams_sends_nothing(
    published_by_upstream: tuple[dict[str, bytes], Path],
    bound_mlos: BoundServer,
    sshd: Any,
    shared_config: SharedConfig,
    registry: Any,
) -> None:
    files, final = published_by_upstream
    target = sshd.config_target(bound_mlos.url, bound_mlos.models)
    shared_config({"core": target}, registry={"url": registry.url})
    run = run_axon("publish", str(REF), "-t", "core", "--no-notify", "--json")
    assert run.code == 0, run.out + run.err
    (result,) = run.json()["results"]
    assert (result["files_sent"], result["bytes_sent"]) == (0, 0), result
    check_ours_replaced_upstreams(final, files)


def test_our_publish_through_the_api_after_upstreams_sends_nothing(
    published_by_upstream: tuple[dict[str, bytes], Path], bound_mlos: BoundServer
) -> None:
    """Through mlos-core's API: the server finds the bytes upstream placed in the model's
    directory, hashes them, takes them into its store and builds our version from them.
    (Even where upstream's manifest says what ours says, the directory is not taken for
    that version: upstream's bookkeeping beside the files shows another tool wrote it.)"""
    files, final = published_by_upstream
    run = run_axon("publish", str(REF), "-t", bound_mlos.url, "--json")
    assert run.code == 0, run.out + run.err
    (result,) = run.json()["results"]
    assert (result["files_sent"], result["bytes_sent"]) == (0, 0), result
    check_ours_replaced_upstreams(final, files)
    assert registered(bound_mlos)[REF.id]["path"] == f"{MODELS_DIR}/{REF.relpath}"


# ---- upstream publish over a version our server built --------------------------------------
def test_upstream_publish_over_our_version_is_found_and_our_publish_repairs_it(
    upstream: Upstream,
    upstream_install: UpstreamInstall,
    bound_mlos: BoundServer,
    install_model: Any,
    make_model_dir: Any,
    axon_home: Path,
) -> None:
    """Upstream copies over the files of a version mlos-core built (hard links into its
    blob store), in place: the bytes of another model sharing them changed too. The scan
    upstream asks for finds it: that model is damaged, `axon status` says so (exit 5), and
    our publish of it sends the damaged file again."""
    other = ModelRef.parse("acme/other@v1")
    src = make_model_dir()
    config = (src / "config.json").read_bytes()
    for ref in (REF, other):
        install_model(src, str(ref))
        run = run_axon("publish", str(ref), "-t", bound_mlos.url, "-q")
        assert run.code == 0, run.err
    shutil.rmtree(axon_home / "cache" / "models" / REF.namespace / REF.name)
    changed = files_under(src)
    changed["config.json"] = config.replace(b"bert", b"gpt2")
    upstream_install(REF, changed)
    run = upstream.run_bound(
        bound_mlos.models, "publish", str(REF), env={"MLOS_CORE_ENDPOINT": bound_mlos.url}
    )
    assert run.code == 0, run.out + run.err
    assert (bound_mlos.models / other.relpath / "config.json").read_bytes() != config

    def damaged() -> bool:
        return registered(bound_mlos)[other.id]["status"] == "damaged"

    wait_for(damaged, timeout=20, what="the damage found by the scan")
    status = run_axon("status", str(other), "-t", bound_mlos.url)
    assert status.code == 5 and "config.json" in status.out, status.out + status.err
    repair = run_axon("publish", str(other), "-t", bound_mlos.url, "--json")
    assert repair.code == 0, repair.out + repair.err
    (result,) = repair.json()["results"]
    assert (result["files_sent"], result["bytes_sent"]) == (1, len(config))
    assert (bound_mlos.models / other.relpath / "config.json").read_bytes() == config
    assert run_axon("status", str(other), "-t", bound_mlos.url).code == 0
