"""``axon publish`` to a local directory (filesystem) and to a real OpenSSH server, with
notify seen by a real mlos-core; permission denied, no space, a failed notify (exit 8),
and an interrupted publish (kill -9) that leaves the previous version intact."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from axon.errors import EXIT_NOT_NOTIFIED, EXIT_OK, EXIT_TRANSPORT
from modelpkg.refs import ModelRef
from tests.fixtures.common import free_port
from tests.fixtures.common import tmpfs as mount_tmpfs
from tests.helpers import error_lines, run_axon, write_config

MiB = 1024 * 1024


def _home() -> Path:
    return Path(os.environ["AXON_HOME"])


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.yaml"
    }


def _model_info(url: str, ref: ModelRef) -> httpx.Response:
    quoted = ref.id.replace("/", "%2F").replace("@", "%40")
    return httpx.get(f"{url}/models/{quoted}", timeout=5)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(size, ro=False) -> Path``: a small real filesystem (needs CAP_SYS_ADMIN)."""
    names = itertools.count()
    with contextlib.ExitStack() as mounts:
        yield lambda size, ro=False: mounts.enter_context(
            mount_tmpfs(tmp_path / f"mnt{next(names)}", f"size={size}", *(["ro"] if ro else []))
        )


def test_filesystem_publish_notifies_the_instance(
    mlos_server, installed_model, make_model_dir, install_model
) -> None:
    srv = mlos_server(no_fsync=True)
    write_config(
        _home(),
        {
            "local": {
                "endpoint": srv.url,
                "access_method": "filesystem",
                "storage_path": str(srv.models_dir),
            }
        },
    )
    run = run_axon("publish", str(installed_model), "--target", "local", "--json")
    assert run.code == EXIT_OK, run.err
    (r,) = run.json()["results"]
    assert r["method"] == "filesystem" and r["notified"] and r["registered"]
    final = srv.models_dir / installed_model.relpath
    assert r["path"] == str(final)
    info = _model_info(srv.url, installed_model)
    assert info.status_code == 200 and info.json()["path"] == str(final)

    again = run_axon("publish", str(installed_model), "-t", "local", "--json").json()
    assert again["results"][0]["bytes_sent"] == 0

    st = run_axon("status", str(installed_model), "-t", "local", "--json")
    assert st.code == EXIT_OK and st.json()["checksums_match"] is True

    changed = make_model_dir("changed")
    (changed / "config.json").write_text('{"model_type": "bert", "layers": 1}')
    install_model(changed, str(installed_model))  # the cache moves ahead of the instance
    behind = run_axon("status", str(installed_model), "-t", "local", "--json")
    assert behind.code == 5 and behind.json()["mismatched"] == ["config.json"]


def test_failed_notify_is_its_own_exit_code(tmp_path: Path, installed_model) -> None:
    models = tmp_path / "models"
    models.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    write_config(
        _home(),
        {"lonely": {"endpoint": dead, "access_method": "filesystem", "storage_path": str(models)}},
    )
    run = run_axon("publish", str(installed_model), "--target", "lonely")
    assert run.code == EXIT_NOT_NOTIFIED
    (line,) = error_lines(run.err)
    assert line.startswith("axon: error: lonely:") and "not notified" in line
    assert "axon register" in line
    assert (models / installed_model.relpath / "config.json").is_file()  # files published
    quiet = run_axon("publish", str(installed_model), "-t", "lonely", "--no-notify")
    assert quiet.code == EXIT_OK, quiet.err


def test_permission_denied_and_no_space(tmpfs, make_model_dir, install_model) -> None:
    readonly = tmpfs("1M", ro=True)
    tiny = tmpfs("1M")
    ref = install_model(make_model_dir("big", weights_size=3 * MiB), "hf/big@v1")
    dead = f"http://127.0.0.1:{free_port()}"
    write_config(
        _home(),
        {
            "ro": {"endpoint": dead, "access_method": "filesystem", "storage_path": str(readonly)},
            "full": {"endpoint": dead, "access_method": "filesystem", "storage_path": str(tiny)},
        },
    )
    denied = run_axon("publish", str(ref), "--target", "ro")
    assert denied.code == EXIT_TRANSPORT
    (line,) = error_lines(denied.err)
    assert line.startswith("axon: error: ro:") and str(readonly) in line
    full = run_axon("publish", str(ref), "--target", "full")
    assert full.code == EXIT_TRANSPORT
    (line,) = error_lines(full.err)
    assert line.startswith("axon: error: full:") and "space" in line.lower()
    assert not (tiny / ref.relpath).exists()  # nothing partial is visible


def test_ssh_publish_end_to_end_through_the_cli(sshd, mlos_server, installed_model) -> None:
    srv = mlos_server(no_fsync=True)
    write_config(_home(), {"remote": sshd.config_target(srv.url, srv.models_dir)})
    run = run_axon("publish", str(installed_model), "--target", "remote", "--json")
    assert run.code == EXIT_OK, run.err
    (r,) = run.json()["results"]
    assert r["method"] == "ssh" and r["notified"] and r["files_sent"] >= 3
    final = srv.models_dir / installed_model.relpath
    cached = _home() / "cache" / "models" / installed_model.relpath
    assert _digests(final) == {
        k: v for k, v in _digests(cached).items() if not k.startswith(".axon")
    }
    assert _model_info(srv.url, installed_model).status_code == 200
    again = run_axon("publish", str(installed_model), "-t", "remote", "--json").json()
    assert again["results"][0]["bytes_sent"] == 0
    st = run_axon("status", str(installed_model), "-t", "remote")
    assert st.code == EXIT_OK and "registered: yes" in st.out


def test_kill_9_keeps_the_previous_version(
    mlos_server, tcp_proxy, make_model_dir, install_model
) -> None:
    srv = mlos_server(no_fsync=True)
    proxy = tcp_proxy(srv.port)
    old_src = make_model_dir("old", weights_size=1 * MiB)
    ref = install_model(old_src, "hf/swap@v1")
    assert run_axon("publish", str(ref), "-t", srv.url, "-q").code == EXIT_OK
    final = srv.models_dir / ref.relpath
    old = _digests(final)

    new_src = make_model_dir("new", weights_size=8 * MiB)
    install_model(new_src, "hf/swap@v1")  # same version, new content
    proxy.throttle(2 * MiB)
    proc = subprocess.Popen(
        [sys.executable, "-m", "axon", "publish", str(ref), "-t", proxy.url, "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while proxy.bytes_up < 2 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _digests(final) == old  # the instance still serves the old version, whole
    sent_before = proxy.bytes_up

    proxy.throttle(None)
    rerun = run_axon("publish", str(ref), "-t", proxy.url, "--json")
    assert rerun.code == EXIT_OK, rerun.err
    assert proxy.bytes_up - sent_before < 8 * MiB  # resumed: the cut file was not re-sent whole
    assert _digests(final) == _digests(new_src)


def test_ssh_refused_key_is_one_line_naming_the_target(sshd, installed_model) -> None:
    write_config(
        _home(),
        {
            "remote": {
                "endpoint": f"http://127.0.0.1:{free_port()}",
                "access_method": "ssh",
                "ssh_host": sshd.host,
                "ssh_port": sshd.port,
                "ssh_user": sshd.user,
                "ssh_key": str(sshd.wrong_key_path),
                "ssh_options": sshd.options,
                "storage_path": str(sshd.root),
            }
        },
    )
    run = run_axon("publish", str(installed_model), "--target", "remote", "--retries", "1")
    assert run.code == EXIT_TRANSPORT
    (line,) = error_lines(run.err)
    assert line.startswith("axon: error: remote:")
    assert "gave up" not in line  # refused credentials are not retried


def test_api_server_disk_full_mid_upload_is_no_space(
    tmpfs, mlos_server, make_model_dir, install_model
) -> None:
    disk = tmpfs("8M")
    srv = mlos_server(models_dir=disk / "models", no_fsync=True)
    ref = install_model(make_model_dir("huge", weights_size=24 * MiB), "hf/huge@v1")
    run = run_axon("publish", str(ref), "--target", srv.url, "--json", "--retries", "1")
    assert run.code == EXIT_TRANSPORT, run.err
    (r,) = run.json()["results"]
    assert r["error"]["type"] == "NoSpaceError"  # the server's 507, not a broken pipe
    assert r["error"]["status"] == 507 and r["error"]["target"] == srv.url
    assert not (disk / "models" / ref.relpath).exists()


def test_validation_vouches_for_each_file_identity_unless_full_verify(installed_model) -> None:
    """What the local copy may skip hashing: exactly the files validation just checked, at
    their identity now; none with --full-verify or --no-validate."""
    from axon.cache import Cache
    from axon.hashing import file_key
    from axon.publish import prepare_model

    cache = Cache.from_config()
    model = prepare_model(cache, installed_model)
    assert set(model.verified) == {f.path for f in model.manifest.files}
    for entry in model.manifest.files:
        assert model.verified[entry.path] == file_key(model.source(entry).stat())
    assert prepare_model(cache, installed_model, full=True).verified == {}
    assert prepare_model(cache, installed_model, validate=False).verified == {}
