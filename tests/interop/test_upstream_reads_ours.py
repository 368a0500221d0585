"""The upstream Go axon on a cache our axon wrote: it lists, verifies and registers our
models (with our mlos-core), as it does its own."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from modelpkg.refs import ModelRef
from tests.fixtures.models import InstallModel, MakeModelDir
from tests.interop.conftest import SharedConfig
from tests.interop.upstream import Upstream

REF = ModelRef.parse("acme/tiny-bert@v1")
NESTED = ModelRef.parse("acme/vision/resnet@v2")


def test_upstream_lists_the_models_our_axon_installed(
    upstream: Upstream,
    shared_config: SharedConfig,
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
    axon_home: Path,
) -> None:
    install_model(make_model_dir(), str(REF))
    install_model(make_model_dir(), str(NESTED))
    listed = upstream.run("list")
    assert listed.code == 0, listed.err
    assert f"  {REF}\n" in listed.out and f"  {NESTED}\n" in listed.out
    names = upstream.run("list", "-f", "names")
    assert names.out.split() == ["acme/tiny-bert", "acme/vision/resnet"]
    as_json = json.loads(upstream.run("list", "-f", "json").out)
    assert {(m["Namespace"], m["Name"], m["Version"], m["Path"]) for m in as_json} == {
        (r.namespace, r.name, r.version, str(axon_home / "cache" / "models" / r.relpath))
        for r in (REF, NESTED)
    }


def test_upstream_verifies_our_models_with_and_without_a_version(
    upstream: Upstream,
    shared_config: SharedConfig,
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
) -> None:
    install_model(make_model_dir(), str(REF))
    for spec in (str(REF), "acme/tiny-bert"):
        run = upstream.run("verify", spec)
        assert run.code == 0, run.err
        assert f"verified for {REF}" in run.out
    absent = upstream.run("verify", "acme/absent@v1")
    assert absent.code == 1 and "not found" in absent.err


def test_upstream_registers_our_cached_model_with_our_mlos_core(
    upstream: Upstream,
    shared_config: SharedConfig,
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
    mlos_server: object,
    axon_home: Path,
) -> None:
    """Upstream ``register`` sends the cache path on this host: our server registers it
    once the operator names the cache as a root (``--register-root``); without it the
    answer is a 404 whose message upstream shows, and that says what to do."""
    install_model(make_model_dir(), str(REF))
    cache_models = axon_home / "cache" / "models"
    refusing = mlos_server.start()  # type: ignore[attr-defined]
    refused = upstream.run("register", str(REF), env={"MLOS_CORE_ENDPOINT": refusing.url})
    assert refused.code == 1
    assert "status 404" in refused.err and "--register-root" in refused.err

    srv = mlos_server.start(register_root=str(cache_models))  # type: ignore[attr-defined]
    run = upstream.run("register", str(REF), env={"MLOS_CORE_ENDPOINT": srv.url})
    assert run.code == 0, run.err
    assert f"Model ID: {REF}" in run.out
    models = httpx.get(f"{srv.url}/models", timeout=10).json()["models"]
    (entry,) = [m for m in models if m["id"] == REF.id]
    assert entry["path"] == str(cache_models / REF.relpath)
    again = upstream.run("register", str(REF), env={"MLOS_CORE_ENDPOINT": srv.url})
    assert again.code == 0, again.err  # already registered: 200 as upstream expects


def test_upstream_uninstalls_a_model_our_axon_installed(
    upstream: Upstream,
    shared_config: SharedConfig,
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
) -> None:
    from tests.helpers import run_axon

    install_model(make_model_dir(), str(REF))
    install_model(make_model_dir(), str(NESTED))
    run = upstream.run("uninstall", "acme/tiny-bert")
    assert run.code == 0 and f"Pruned pathway: {REF}" in run.out
    listed = run_axon("list", "--json").json()["models"]
    assert [m["ref"] for m in listed] == [str(NESTED)]
