"""Rollout control on real ``mlos-core`` instances (and a filesystem/SSH mix): batches that
stop at a failing instance, ``--atomic`` where one instance refuses to stage (nobody
switches) or fails to commit (the switched ones go back), and the status matrix."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from axon.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_PARTIAL
from axon.publish.matrix import cluster_status
from modelpkg.refs import ModelRef
from tests.fixtures.cluster import (
    Recorder,
    cached_files,
    cluster_of,
    on_disk,
    registered,
    run_cluster,
)
from tests.helpers import write_config

pytestmark = pytest.mark.slow

ACME_ONLY = {"tenants": {"acme": {"tokens": ["s3cret"], "namespaces": ["acme"]}}}


def reinstall(install_model: Any, make_model_dir: Any, ref: ModelRef, seed: int) -> None:
    """Put other content into the cache under the same reference (a new build of it)."""
    install_model(make_model_dir(seed=seed, weights_size=8192), str(ref))


# ---- batches --------------------------------------------------------------------------------
def test_batches_stop_at_a_failing_instance_and_say_who_has_what(
    mlos_server: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    a = mlos_server(no_fsync=True)
    b = mlos_server(no_fsync=True, tokens=ACME_ONLY)  # healthy, but refuses our writes
    c = mlos_server(no_fsync=True)
    write_config(axon_home, clusters={"prod": cluster_of(a, b, c)})
    res = run_cluster(installed_model, "prod", batch_size=1)
    assert [res.states[s.url] for s in (a, b, c)] == ["published", "failed", "not-started"]
    assert res.exit_code == EXIT_PARTIAL
    assert res.batches == [[a.url], [b.url]]
    assert res.stopped and "batch 2/3" in res.stopped
    assert registered(a, installed_model) and not registered(c, installed_model)
    assert res.matrix is not None  # which instances have which version
    rows = {r.instance: r for r in res.matrix.rows}
    assert rows[a.url].present and rows[a.url].checksum_ok and rows[a.url].registered
    assert rows[c.url].present is False and rows[c.url].registered is False
    text = res.summary()
    assert "not-started" in text and "instances DIFFER" in text


def test_batches_all_verified_publish_everywhere(
    mlos_server: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    servers = [mlos_server(no_fsync=True) for _ in range(4)]
    write_config(axon_home, clusters={"prod": cluster_of(*servers)})
    res = run_cluster(installed_model, "prod", batch_size=2)
    assert res.exit_code == EXIT_OK and res.succeeded == 4
    assert res.batches == [[s.url for s in servers[:2]], [s.url for s in servers[2:]]]
    assert res.matrix is None
    assert all(registered(s, installed_model) for s in servers)


# ---- --atomic -------------------------------------------------------------------------------
def test_atomic_with_one_instance_refusing_to_stage_switches_none(
    mlos_server: Any,
    installed_model: ModelRef,
    install_model: Any,
    make_model_dir: Any,
    axon_home: Path,
) -> None:
    a, b, c = (mlos_server(no_fsync=True) for _ in range(3))
    write_config(axon_home, clusters={"prod": cluster_of(a, b, c)})
    assert run_cluster(installed_model, "prod").exit_code == EXIT_OK
    old = cached_files(axon_home, installed_model)
    # c comes back with an upload limit smaller than the model: it will refuse to stage
    c.stop()
    small = mlos_server(models_dir=c.models_dir, no_fsync=True, max_upload_size=1000)
    write_config(axon_home, clusters={"prod": cluster_of(a, b, small)})
    reinstall(install_model, make_model_dir, installed_model, seed=7)
    assert cached_files(axon_home, installed_model) != old
    res = run_cluster(installed_model, "prod", atomic=True)
    assert [res.states[s.url] for s in (a, b, small)] == ["aborted", "aborted", "failed"]
    assert res.exit_code == EXIT_ALL_FAILED
    assert "could not stage" in (res.stopped or "")
    for server in (a, b, small):  # every instance still serves the old build
        assert on_disk(server, installed_model) == old
        assert registered(server, installed_model)
    for server in (a, b):
        staging = server.models_dir / ".mlos" / "staging"
        assert not staging.exists() or not any(staging.iterdir()), "staged data left behind"


def test_atomic_commit_failure_rolls_back_api_and_filesystem_instances(
    mlos_server: Any,
    installed_model: ModelRef,
    install_model: Any,
    make_model_dir: Any,
    axon_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the API instance takes writes only with a token, given through token_env: the rollback
    # must authenticate like the upload did
    tenant = {"tenants": {"ops": {"tokens": ["t0ken"], "namespaces": ["*"]}}}
    monkeypatch.setenv("CORE_API_TOKEN", "t0ken")
    fs_srv, doomed = (mlos_server(no_fsync=True) for _ in range(2))
    api_srv = mlos_server(no_fsync=True, tokens=tenant)
    targets = {
        "core-fs": {
            "endpoint": fs_srv.url,
            "access_method": "filesystem",
            "storage_path": str(fs_srv.models_dir),
        },
        "core-api": {
            "endpoint": api_srv.url,
            "access_method": "api",
            "token_env": "CORE_API_TOKEN",
        },
    }
    clusters = {"prod": {"instances": ["core-fs", "core-api", doomed.url]}}
    write_config(axon_home, targets, clusters=clusters)
    assert run_cluster(installed_model, "prod").exit_code == EXIT_OK
    old = cached_files(axon_home, installed_model)
    reinstall(install_model, make_model_dir, installed_model, seed=9)
    new = cached_files(axon_home, installed_model)

    rec = Recorder()
    staged: list[str] = []

    def kill_after_all_staged(key: str, ok: bool, note: str) -> None:
        if note == "staged":
            staged.append(key)
            if key == doomed.url:  # staged fine; gone before it can commit
                doomed.kill()

    rec.on_end = kill_after_all_staged
    res = run_cluster(installed_model, "prod", rec, atomic=True)
    assert sorted(staged) == sorted(["core-fs", "core-api", doomed.url])
    states = [res.states[n] for n in ("core-fs", "core-api", doomed.url)]
    assert states == ["rolled-back", "rolled-back", "failed"], res.summary()
    assert res.exit_code == EXIT_ALL_FAILED
    for server in (fs_srv, api_srv):
        assert on_disk(server, installed_model) == old != new
        assert registered(server, installed_model)
    leftovers = list((fs_srv.models_dir / installed_model.relpath).parent.glob(".*rollback-*"))
    assert leftovers == []


def test_atomic_success_switches_every_instance(
    mlos_server: Any,
    installed_model: ModelRef,
    install_model: Any,
    make_model_dir: Any,
    axon_home: Path,
) -> None:
    from tests.stress.checkers import check_model_dir

    servers = [mlos_server(no_fsync=True) for _ in range(3)]
    write_config(axon_home, clusters={"prod": cluster_of(*servers)})
    assert run_cluster(installed_model, "prod").exit_code == EXIT_OK  # everyone has build 1
    old = cached_files(axon_home, installed_model)
    reinstall(install_model, make_model_dir, installed_model, seed=7)
    new = cached_files(axon_home, installed_model)
    assert new != old
    res = run_cluster(installed_model, "prod", atomic=True)
    assert res.exit_code == EXIT_OK and res.succeeded == 3
    for server in servers:
        assert on_disk(server, installed_model) == new, server.url
        assert check_model_dir(server.models_dir / installed_model.relpath) == []
        assert registered(server, installed_model)


# ---- status matrix --------------------------------------------------------------------------
def test_status_matrix_shows_drift_between_instances(
    mlos_server: Any,
    installed_model: ModelRef,
    install_model: Any,
    make_model_dir: Any,
    axon_home: Path,
) -> None:
    from axon.cache import Cache
    from axon.config import load_config
    from axon.publish import prepare_model
    from axon.targets import resolve_target

    a, b, c = (mlos_server(no_fsync=True) for _ in range(3))
    write_config(axon_home, clusters={"one": cluster_of(a), "prod": cluster_of(a, b, c)})
    run_cluster(installed_model, "prod")  # everyone has build 1
    reinstall(install_model, make_model_dir, installed_model, seed=5)
    run_cluster(installed_model, "one")  # only a has build 2
    c.kill()

    config = load_config()
    cluster = resolve_target("prod", config)
    model = prepare_model(Cache.from_config(config), installed_model, validate=False)
    matrix = cluster_status(model, cluster)  # type: ignore[arg-type]
    rows = {r.instance: r for r in matrix.rows}
    assert (rows[a.url].present, rows[a.url].checksum_ok, rows[a.url].registered) == (
        True,
        True,
        True,
    )
    assert (rows[b.url].present, rows[b.url].checksum_ok, rows[b.url].registered) == (
        True,
        False,
        True,
    )
    assert rows[c.url].healthy is False and rows[c.url].note
    assert not matrix.consistent
    text = "\n".join(matrix.lines())
    assert "instances DIFFER" in text and "NO" in text
    assert matrix.to_dict()["instances"][1]["checksum_ok"] is False


# ---- SSH in the mix -------------------------------------------------------------------------
def test_cluster_mixing_ssh_and_api_instances(
    sshd: Any, mlos_server: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    remote_models = sshd.root / f"cluster-{uuid.uuid4().hex[:8]}"
    ssh_srv = mlos_server(models_dir=remote_models, no_fsync=True)
    api_srv = mlos_server(no_fsync=True)
    targets = {"core-ssh": sshd.config_target(ssh_srv.url, remote_models)}
    write_config(axon_home, targets, clusters={"mix": {"instances": ["core-ssh", api_srv.url]}})
    res = run_cluster(installed_model, "mix", timeout=20.0)
    assert res.exit_code == EXIT_OK, res.summary()
    want = cached_files(axon_home, installed_model)
    assert on_disk(ssh_srv, installed_model) == want == on_disk(api_srv, installed_model)
    assert registered(ssh_srv, installed_model) and registered(api_srv, installed_model)


def test_atomic_rollback_puts_the_previous_version_back_over_ssh(
    sshd: Any,
    mlos_server: Any,
    installed_model: ModelRef,
    install_model: Any,
    make_model_dir: Any,
    axon_home: Path,
) -> None:
    remote_models = sshd.root / f"atomic-{uuid.uuid4().hex[:8]}"
    ssh_srv = mlos_server(models_dir=remote_models, no_fsync=True)
    doomed = mlos_server(no_fsync=True)
    targets = {"core-ssh": sshd.config_target(ssh_srv.url, remote_models)}
    write_config(axon_home, targets, clusters={"mix": {"instances": ["core-ssh", doomed.url]}})
    assert run_cluster(installed_model, "mix", timeout=20.0).exit_code == EXIT_OK
    old = cached_files(axon_home, installed_model)
    reinstall(install_model, make_model_dir, installed_model, seed=11)

    rec = Recorder()
    rec.on_end = lambda key, ok, note: (
        doomed.kill() if (key, note) == (doomed.url, "staged") else None
    )
    res = run_cluster(installed_model, "mix", rec, atomic=True, timeout=20.0)
    assert [res.states[n] for n in ("core-ssh", doomed.url)] == ["rolled-back", "failed"], (
        res.summary()
    )
    assert on_disk(ssh_srv, installed_model) == old
    assert registered(ssh_srv, installed_model)
    assert list((remote_models / installed_model.relpath).parent.glob(".*")) == []
