"""SSH transport against a real OpenSSH sshd on 127.0.0.1: every failure a user can meet
(refused connection, wrong key, unknown host key, permission denied, no space, no python3),
a connection cut mid-file (the ControlMaster is killed) that resumes, quoting and modes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from axon.errors import (
    EXIT_INTEGRITY,
    AuthenticationError,
    NoSpaceError,
    RemoteError,
    TargetPermissionError,
    TargetUnreachableError,
)
from axon.targets import InstanceTarget
from axon.transports.base import Outgoing
from axon.transports.ssh import SshTransport
from modelpkg.manifest import FileEntry
from modelpkg.refs import ModelRef
from tests.conformance.transport import REF, base_files, dir_snapshot, publish, write_model
from tests.fixtures.common import free_port, tmpfs, wait_for
from tests.helpers import run_axon, write_config

MiB = 1024 * 1024


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Any]:
    src = tmp_path / "src"
    return src, write_model(src, base_files())


def test_refused_connection(sshd: Any, model: tuple[Path, Any]) -> None:
    port = free_port()
    with sshd.transport(port=port) as transport, pytest.raises(TargetUnreachableError) as info:
        transport.open(REF, model[1])
    assert f"{sshd.user}@127.0.0.1:{port}" in str(info.value)
    assert "refused" in str(info.value).lower() and info.value.hint


def test_wrong_key_is_an_authentication_error(sshd: Any, model: tuple[Path, Any]) -> None:
    transport = sshd.transport(key=sshd.wrong_key_path)
    with transport, pytest.raises(AuthenticationError) as info:
        transport.open(REF, model[1])
    assert f"{sshd.user}@127.0.0.1:{sshd.port}" in str(info.value)
    assert "ssh_key" in (info.value.hint or "")


def test_unknown_host_key_is_refused(sshd: Any, model: tuple[Path, Any], tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = [f"UserKnownHostsFile={empty}", "StrictHostKeyChecking=yes"]
    with sshd.transport(options=options) as transport, pytest.raises(AuthenticationError) as info:
        transport.open(REF, model[1])
    assert "host key" in str(info.value) and "ssh-keyscan" in (info.value.hint or "")


def test_missing_root_names_the_host(sshd: Any, model: tuple[Path, Any], tmp_path: Path) -> None:
    root = tmp_path / "absent"
    with sshd.transport(root) as transport, pytest.raises(TargetUnreachableError) as info:
        transport.open(REF, model[1])
    assert str(root) in str(info.value) and f"127.0.0.1:{sshd.port}" in str(info.value)


def test_missing_python_on_the_host(sshd: Any, model: tuple[Path, Any]) -> None:
    transport = sshd.transport(python="no-such-python3")
    with transport, pytest.raises(RemoteError) as info:
        transport.open(REF, model[1])
    assert "no-such-python3 not found" in str(info.value)


def test_permission_denied(sshd: Any, model: tuple[Path, Any], tmp_path: Path) -> None:
    # The sshd user is root here, so mode bits cannot refuse a write: a read-only mount does.
    with tmpfs(tmp_path / "ro", "ro,size=1m") as root, sshd.transport(root) as transport:
        with pytest.raises(TargetPermissionError) as info:
            publish(transport, *model)
        assert str(root) in str(info.value) and f"127.0.0.1:{sshd.port}" in str(info.value)


def test_no_space_keeps_the_previous_version(sshd: Any, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=1m") as root, sshd.transport(root) as transport:
        publish(transport, tmp_path / "v1", write_model(tmp_path / "v1", base_files()))
        big = write_model(tmp_path / "v2", {"weights.bin": os.urandom(2 * MiB)})
        session = transport.open(REF, big)
        with pytest.raises(NoSpaceError) as info:
            for entry in session.needed:
                session.send(entry, tmp_path / "v2" / entry.path)
        assert "no space" in str(info.value) and f"127.0.0.1:{sshd.port}" in str(info.value)
        session.abort()
        snap = dir_snapshot(root / REF.relpath)
        assert snap is not None
        assert snap["weights.bin"] == (tmp_path / "v1/weights.bin").read_bytes()


def _server_side_sessions(sshd: Any) -> list[int]:
    """The per-connection processes of our sshd (its children)."""
    out = subprocess.run(
        ["pgrep", "-P", str(sshd.proc.pid)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in out.stdout.split()]


def test_connection_cut_mid_file_resumes(sshd: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    manifest = write_model(src, {"big.bin": os.urandom(24 * MiB)})
    with sshd.transport(tmp_path / "models") as transport:
        (tmp_path / "models").mkdir()
        session = transport.open(REF, manifest)
        sessions = _server_side_sessions(sshd)
        assert sessions
        calls = [0]

        def received_on_the_host() -> int:
            return sum(p.stat().st_size for p in (tmp_path / "models").rglob("*") if p.is_file())

        def cut_the_wire(_n: int) -> None:
            calls[0] += 1
            if calls[0] == 2:  # the server side of the connection dies mid-file
                # once some bytes have landed on the host (else there is nothing to resume)
                deadline = time.monotonic() + 10
                while received_on_the_host() == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                for pid in sessions:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)

        with pytest.raises(TargetUnreachableError):
            session.send(session.needed[0], src / "big.bin", cut_the_wire)
        session = transport.open(REF, manifest)  # reconnects
        offset = session.offset(session.needed[0])
        assert 0 < offset < 24 * MiB
        _info, sent, _ = publish(transport, src, manifest)
        assert sent == 24 * MiB - offset
        snap = dir_snapshot(tmp_path / "models" / REF.relpath)
        assert snap is not None and snap["big.bin"] == (src / "big.bin").read_bytes()


def test_a_cut_stream_of_small_files_resumes_without_sending_what_arrived(
    sshd: Any, tmp_path: Path
) -> None:
    """Many small files go through one stream (one request, no round trip per file). The
    connection dies mid-stream: every file the host received whole is placed and is not
    needed again, the one cut short resumes at its offset, and the next session sends
    exactly the rest."""
    src = tmp_path / "src"
    files = {f"shards/s{i:03d}.bin": os.urandom(48 * 1024 + i) for i in range(240)}
    manifest = write_model(src, files)
    total = sum(f.size for f in manifest.files)
    models = tmp_path / "models"
    models.mkdir()

    def placed_on_the_host() -> int:
        return sum(1 for p in models.rglob("shards/*") if p.is_file())

    with sshd.transport(models) as transport:
        session = transport.open(REF, manifest)
        sessions = _server_side_sessions(sshd)
        assert sessions and len(session.needed) == len(manifest.files)
        sent, done, cut = [0], list[FileEntry](), list[int]()

        def cut_the_wire(n: int) -> None:
            sent[0] += n
            if sent[0] >= total // 2 and not cut:
                deadline = time.monotonic() + 10
                while placed_on_the_host() == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                cut.append(placed_on_the_host())
                for pid in sessions:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)

        items = [Outgoing(e, src / e.path) for e in session.needed]
        with pytest.raises(TargetUnreachableError):
            session.send_many(items, cut_the_wire, done.append)
        assert cut and cut[0] > 0
        again = transport.open(REF, manifest)  # reconnects
        left = sum(e.size - again.offset(e) for e in again.needed)
        assert len(again.needed) <= len(manifest.files) - cut[0]
        assert 0 < left < total
        resent = [0]
        items = [Outgoing(e, src / e.path) for e in again.needed]
        again.send_many(items, lambda n: resent.__setitem__(0, resent[0] + n))
        again.commit()
        assert resent[0] == left  # nothing that arrived was sent again
        snap = dir_snapshot(models / REF.relpath)
        assert snap is not None and {k: snap[k] for k in files} == files


def test_awkward_root_is_quoted_and_modes_apply(
    sshd: Any, model: tuple[Path, Any], tmp_path: Path
) -> None:
    root = tmp_path / "models $(touch pwned) 'q' \"d\""
    root.mkdir()
    with sshd.transport(root, dir_mode=0o750, file_mode=0o640) as transport:
        info, _sent, _ = publish(transport, *model)
    final = root / REF.relpath
    assert info.path == str(final)
    assert not (Path.home() / "pwned").exists() and not Path("pwned").exists()
    assert stat.S_IMODE(final.stat().st_mode) == 0o750
    assert stat.S_IMODE((final / "config.json").stat().st_mode) == 0o640
    assert dir_snapshot(final) is not None


def test_from_target_and_command_line() -> None:
    target = InstanceTarget(
        name="core-1",
        endpoint="http://core-1.example:8080",
        access_method="ssh",
        storage_path="/srv/models",
        ssh_user="mlos",
        ssh_port=2222,
        ssh_key="/keys/id",
        ssh_options=["Ciphers=aes256-ctr"],
    )
    transport = SshTransport.from_target(target)
    assert transport.host == "core-1.example" and transport.root == "/srv/models"
    assert transport.describe() == "ssh://mlos@core-1.example:2222/srv/models"
    args = transport.ssh_args()
    assert args[:3] == ["ssh", "-o", "BatchMode=yes"] and args[-1] == "core-1.example"
    assert args[3:5] == ["-o", "Ciphers=aes256-ctr"]  # first value wins: the user's, first
    assert "2222" in args and "-i" in args and "mlos" in args
    assert not any(a.startswith("Ciphers=aes128") for a in args)
    timeout = SshTransport("h", root="/m", options=["ConnectTimeout=99"]).ssh_args()
    assert timeout.index("ConnectTimeout=99") < timeout.index("ConnectTimeout=30")
    default = SshTransport("h", port=None, root="/m").ssh_args()
    assert "-p" not in default  # ~/.ssh/config decides the port
    assert any(a.startswith("Ciphers=aes128-gcm") for a in default)


def test_axon_publish_over_ssh_registers_with_a_real_mlos_core(
    sshd: Any, installed_model: Any, axon_home: Path, mlos_server: Any, tmp_path: Path
) -> None:
    """The whole path: config target -> publish() -> SshTransport -> POST /models/register."""
    import httpx

    from axon.config import load_config
    from axon.publish import PublishOptions
    from axon.publish import publish as publish_model

    models = tmp_path / "instance-models"
    models.mkdir()
    server = mlos_server.start(models_dir=models)
    write_config(axon_home, {"core-ssh": sshd.config_target(server.url, models)})
    config = load_config()
    first = publish_model(installed_model, "core-ssh", PublishOptions(), config=config)
    assert first.ok, first.to_dict()
    (result,) = first.results
    assert result.method == "ssh" and result.notified and result.files_sent > 0
    assert result.path == f"{models}/{installed_model.relpath}"
    assert (models / installed_model.relpath / "manifest.yaml").is_file()
    answer = httpx.get(f"{server.url}/models", timeout=10).json()
    assert installed_model.id in [m["id"] for m in answer["models"]]
    again = publish_model(installed_model, "core-ssh", PublishOptions(), config=config)
    assert again.ok and again.results[0].bytes_sent == 0 and again.results[0].files_sent == 0


def test_publish_through_a_cut_tcp_connection_retries_and_resumes(
    sshd: Any, install_model: Any, axon_home: Path, tcp_proxy: Any, tmp_path: Path
) -> None:
    """A real network cut mid-file (a loopback proxy resets the TCP connection): publish()
    retries, and the new attempt resumes the partial file instead of starting over."""
    from axon.config import load_config
    from axon.publish import PublishOptions
    from axon.publish import publish as publish_model

    src = tmp_path / "big-model"
    write_model(src, {"weights.bin": os.urandom(24 * MiB), "config.json": b'{"a": 1}'})
    ref = install_model(src, "hf/big-model@v1")
    proxy = tcp_proxy(sshd.port)
    proxy.cut_after(8 * MiB, mode="reset")
    known = tmp_path / "known_hosts"
    key_type, key = sshd.known_hosts.read_text().split()[1:3]
    known.write_text(f"[127.0.0.1]:{proxy.port} {key_type} {key}\n")
    models = tmp_path / "instance-models"
    models.mkdir()
    through_proxy = sshd.config_target(
        "http://127.0.0.1:9",
        models,
        ssh_port=proxy.port,
        ssh_options=[f"UserKnownHostsFile={known}", "StrictHostKeyChecking=yes"],
    )
    write_config(axon_home, {"core-ssh": through_proxy})
    options = PublishOptions(notify=False, backoff=0.1)
    outcome = publish_model(ref, "core-ssh", options, config=load_config())
    assert outcome.ok, outcome.to_dict()
    (result,) = outcome.results
    assert proxy.cuts == 1 and result.attempts == 2
    assert 24 * MiB <= result.bytes_sent < 24 * MiB + 8 * MiB  # resumed, not restarted
    published = models / ref.relpath / "weights.bin"
    assert published.read_bytes() == (src / "weights.bin").read_bytes()


def _live_processes() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, argv)`` of every live process (zombies excluded)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            yield int(pid), argv


def _ssh_children(port: int) -> list[str]:
    """Command lines of live ssh clients of ours to ``port``."""
    return [
        " ".join(c.decode(errors="replace") for c in argv[:8])
        for _pid, argv in _live_processes()
        if argv[0] == b"ssh" and str(port).encode() in argv
    ]


def test_an_early_connection_serves_the_first_request(sshd: Any, model: tuple[Path, Any]) -> None:
    src, manifest = model
    with sshd.transport() as transport:
        transport.connect_early()
        first = transport._helper
        assert first is not None and transport._early
        publish(transport, src, manifest)
        assert transport._early is False
    assert dir_snapshot(sshd.root / REF.relpath) is not None
    first.wait(timeout=10)  # closed without waiting; it ends on its own


def test_an_early_connection_that_failed_reports_its_own_error_once(
    sshd: Any, model: tuple[Path, Any]
) -> None:
    """A login that failed before its first request is reported (refused key), not retried."""
    transport = sshd.transport(key=sshd.wrong_key_path)
    transport.connect_early()
    assert transport._helper is not None
    transport._helper.wait(timeout=10)  # it has died already
    with transport, pytest.raises(AuthenticationError):
        transport.open(REF, model[1])


def test_an_unused_early_connection_is_dropped_at_close(sshd: Any) -> None:
    """The publish stopped before its first request (e.g. the model failed validation)."""
    transport = sshd.transport()
    transport.connect_early()
    proc = transport._helper
    assert proc is not None
    transport.close()
    # close() reaps in a thread (it never waits on the remote): poll() answers None while
    # that thread holds the process, so wait for it
    wait_for(lambda: proc.poll() is not None, timeout=5, what="the unused ssh to be reaped")
    assert proc.returncode == -signal.SIGKILL  # killed, not left to log in and exit later


def test_a_publish_failing_validation_leaves_no_ssh_behind(
    sshd: Any, tmp_path: Path, installed_model: Any
) -> None:
    home = Path(os.environ["AXON_HOME"])
    write_config(home, {"remote": sshd.config_target("http://127.0.0.1:9", sshd.root)})
    cached = home / "cache" / "models" / installed_model.relpath
    victim = cached / "config.json"
    victim.write_text(victim.read_text() + " ")  # corrupt: validation fails
    # earlier tests' helpers (closed without waiting) end on their own; then none may stay
    wait_for(lambda: not _ssh_children(sshd.port), timeout=15, what="earlier ssh helpers to end")
    run = run_axon("publish", str(installed_model), "-t", "remote", "--no-notify")
    assert run.code == EXIT_INTEGRITY, run.err
    assert dir_snapshot(sshd.root / installed_model.relpath) is None
    assert not _ssh_children(sshd.port)


def _via_proxy(sshd: Any, tcp_proxy: Any, tmp_path: Path) -> tuple[Any, list[str]]:
    """A loopback proxy in front of sshd (it counts TCP connections) and the ssh options
    that trust sshd's host key on the proxy's port."""
    proxy = tcp_proxy(sshd.port)
    known = tmp_path / "known_hosts_proxy"
    key_type, key = sshd.known_hosts.read_text().split()[1:3]
    known.write_text(f"[127.0.0.1]:{proxy.port} {key_type} {key}\n")
    return proxy, [f"UserKnownHostsFile={known}", "StrictHostKeyChecking=yes"]


def test_a_kept_connection_serves_the_next_command_without_a_login(
    sshd: Any, tcp_proxy: Any, tmp_path: Path
) -> None:
    """ssh_persist: the connection outlives the command; the next command (a new transport,
    as a new `axon publish` would build) rides on it: no new TCP connection, no login."""
    proxy, options = _via_proxy(sshd, tcp_proxy, tmp_path)
    src = tmp_path / "src"
    manifest = write_model(src, base_files())
    first = sshd.transport(port=proxy.port, options=options, persist=30)
    try:
        with first:
            publish(first, src, manifest)
        with sshd.transport(port=proxy.port, options=options, persist=30) as again:
            session = again.open(REF, manifest)
            assert session.unchanged
            session.commit()
        assert proxy.connections == 1
        # a different key is a different connection: it must log in (and is refused)
        other = sshd.transport(
            port=proxy.port, options=options, persist=30, key=sshd.wrong_key_path
        )
        with other, pytest.raises(AuthenticationError):
            other.open(REF, manifest)
        assert proxy.connections == 2
    finally:
        _end_kept(first)


def _end_kept(transport: SshTransport) -> None:
    """Tell the kept connection of ``transport`` to exit (as a failure would), and wait
    until its process is gone (OpenSSH retitles it ``ssh: <ControlPath> [mux]``)."""
    from axon.transports.ssh import _shared_control_dir

    transport._ctl_dir = _shared_control_dir()
    socket = transport._ctl_path()
    assert _processes_naming(socket), "the connection was not kept"
    transport._forget_master()
    wait_for(lambda: not _processes_naming(socket), timeout=5, what="the kept ssh to exit")


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    return [pid for pid, argv in _live_processes() if text.encode() in b" ".join(argv)]


def test_a_kept_connection_that_died_is_replaced(sshd: Any, tcp_proxy: Any, tmp_path: Path) -> None:
    proxy, options = _via_proxy(sshd, tcp_proxy, tmp_path)
    src = tmp_path / "src"
    manifest = write_model(src, base_files())
    with sshd.transport(port=proxy.port, options=options, persist=30) as first:
        publish(first, src, manifest)
    proxy.drop_all()  # the network drops the kept connection
    with sshd.transport(port=proxy.port, options=options, persist=30) as again:
        try:
            assert again.open(REF, manifest).unchanged  # logs in afresh
        finally:
            _end_kept(again)
    assert proxy.connections == 2


def test_ssh_persist_from_the_config(axon_home: Path) -> None:
    from axon.config import load_config
    from axon.errors import ConfigError
    from axon.targets import resolve_target

    c1 = {"endpoint": "http://127.0.0.1:9", "access_method": "ssh", "ssh_host": "127.0.0.1"}
    write_config(axon_home, {"c1": {**c1, "ssh_persist": 60}})
    target = resolve_target("c1", load_config())
    assert SshTransport.from_target(target).persist == 60
    write_config(axon_home, {"c1": {**c1, "ssh_persist": -1}})
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "ssh_persist" in str(info.value)


def test_the_shipped_helper_needs_only_a_standard_python(tmp_path: Path) -> None:
    """What the SSH transport runs on the host (modelpkg.layout + blobcopy + stagedir as one
    ``python3 -c`` program) parses as Python 3.7, imports only the standard library, and
    answers with no site-packages at all (``-I -S``: nothing of ours is importable)."""
    import ast

    from axon.transports.ssh import _helper_source

    source = _helper_source()
    tree = ast.parse(source, feature_version=(3, 7))
    imported = {
        (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    ours = {"axon", "modelpkg", "mlos_core"}
    # the guarded imports of our own modules are skipped at run time (names already defined)
    assert imported - ours <= set(sys.stdlib_module_names) | {"__future__"}
    root = tmp_path / "models"
    (root / "ns" / "m" / "v1").mkdir(parents=True)
    (root / "ns" / "m" / "v1" / "manifest.yaml").write_text("kind: Model\n")
    request = {"op": "status", "params": {"root": str(root), "rel": "ns/m/v1"}}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", source, "serve"],
        input=json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.splitlines()[0])
    assert answer["ok"] is True and answer["manifest"] == "kind: Model\n", answer


# ---- model ids whose directories nest ----------------------------------------------------
NESTED = ModelRef.parse("hf/conformance-model/v1@x")  # lives at REF's directory /x


@pytest.mark.parametrize(
    ("first", "second"), [(REF, NESTED), (NESTED, REF)], ids=["inside", "holding"]
)
def test_publishing_a_model_whose_directory_nests_with_another_is_refused(
    sshd: Any, tmp_path: Path, make_model_dir: Any, first: ModelRef, second: ModelRef
) -> None:
    """The host refuses it (the shipped stagedir runs layout.overlapping_model there):
    exit 7 naming the other model and what to do, no byte sent, no retry, the first whole."""
    models = tmp_path / "host-models"
    models.mkdir()
    src = make_model_dir()
    homes = {}
    for ref in (first, second):  # two developers, two caches, one host
        home = tmp_path / f"home-{ref.version}"
        write_config(home, {"host": sshd.config_target("http://127.0.0.1:9", models)})
        homes[ref] = {"AXON_HOME": str(home)}
        assert run_axon("install", str(src), "--as", str(ref), env=homes[ref]).code == 0
    done = run_axon("publish", str(first), "-t", "host", "--no-notify", "-q", env=homes[first])
    assert done.code == 0, done.err
    before = dir_snapshot(models / first.relpath)
    done = run_axon(
        "publish", str(second), "-t", "host", "--no-notify", "--json", env=homes[second]
    )
    assert done.code == 7, done.err
    (result,) = done.json()["results"]
    error = result["error"]
    assert f"refusing to publish {second}" in error["message"] and str(first) in error["message"]
    assert f"on {sshd.user}@{sshd.host}:{sshd.port}" in error["message"]
    assert f"remove {first}" in error["hint"] and result["attempts"] == 1
    assert result["files_sent"] == 0 and result["bytes_sent"] == 0
    assert before is not None and dir_snapshot(models / first.relpath) == before
    assert not [p for p in models.rglob("*") if ".staging-" in p.name]


def test_a_nesting_model_published_meanwhile_is_not_replaced_at_commit(
    sshd: Any, tmp_path: Path
) -> None:
    """Checked on the host again right before the rename."""
    root = tmp_path / "host-models"
    root.mkdir()
    manifest = write_model(tmp_path / "src", base_files())
    transport = sshd.transport(root)
    try:
        session = transport.open(REF, manifest)
        for entry in session.needed:
            session.send(entry, tmp_path / "src" / entry.path)
        session.prepare()
        nested = write_model(tmp_path / "other", base_files("b"), NESTED)
        publish(sshd.transport(root), tmp_path / "other", nested, NESTED)
        before = dir_snapshot(root / NESTED.relpath)
        with pytest.raises(RemoteError, match=str(NESTED)) as info:
            session.commit()
        assert info.value.retryable is False and info.value.exit_code == 7
        session.abort()
    finally:
        transport.close()
    assert before is not None and dir_snapshot(root / NESTED.relpath) == before
    assert not (root / REF.relpath / "manifest.yaml").exists()
