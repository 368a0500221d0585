"""SSH publish of a 1 GiB model vs ``rsync -a`` over the same sshd (127.0.0.1).

A real OpenSSH sshd is started on a free loopback port (as the tests do). Each tool copies
the same cached model directory into a fresh directory through that server:

* ``rsync -a`` with plain ``ssh`` (OpenSSH's default cipher): the baseline a user would run;
* ``rsync -a`` with the cipher axon picks (``aes128-gcm``): the same wire, tool vs tool;
* ``axon publish``: the whole command (configured ssh target, ``--no-notify``);
* ``axon publish (unchanged)``: again; nothing may be sent. Compared with ``ssh host true``
  (one login, nothing else): the floor any tool that logs in pays;
* the same with ``ssh_persist: 60`` on the target: each command rides on the connection the
  one before kept open (no login).

The remote account is ``axon-bench`` (an unprivileged user with a plain ``/bin/sh``, made by
``scripts/bench-user.sh`` under ``make bench``) when it exists and we are root, as a publish
account on a server; else the current user, whose shell start-up files then count too.
Each tool runs ``AXON_BENCH_ROUNDS`` times (default 2), alternating; the fastest run counts
(the figures of a shared machine are noisy). ``AXON_BENCH_PUBLISH_MB`` changes the size
(default 1024).
"""

from __future__ import annotations

import os
import pwd
import shutil
import statistics
from pathlib import Path

from benchmarks.bench_publish_fs import axon_bin, best, install_model, rounds, write_config
from benchmarks.common import MiB, Row, timed_run

REF = "bench/publish-ssh@v1"


BENCH_USER = "axon-bench"


def login_user(workdir: Path) -> str | None:
    """The unprivileged account to log in as, when it exists and we can hand it files: we
    are root and every directory above ``workdir`` lets others through (a clone in /root,
    mode 700, does not: the benchmark then logs in as root and says so)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(BENCH_USER)
    except KeyError:
        return None
    if any(not p.stat().st_mode & 0o001 for p in workdir.parents):
        return None
    return BENCH_USER


def run(workdir: Path) -> list[Row]:
    from tests.fixtures.sshd import start_sshd

    from axon.transports.ssh import CIPHERS

    workdir = workdir.resolve()
    user = login_user(workdir)
    if user is not None:
        workdir.chmod(0o711)  # the account reaches its dirs (and sshd its keys) through it
    size = int(os.environ.get("AXON_BENCH_PUBLISH_MB", "1024")) * MiB
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.iterdir() if p.is_file())
    server = start_sshd(workdir / "sshd", user=user)
    try:
        dst = server.root
        rs_dir = workdir / "rsync-dst"  # rsync's destinations, the account's own
        rs_dir.mkdir()
        if user is not None:
            shutil.chown(rs_dir, user)
        write_config(
            workdir / "home",
            "mlos_targets:\n  benchssh:\n    endpoint: http://127.0.0.1:9\n"
            "    access_method: ssh\n    ssh_host: 127.0.0.1\n"
            f"    ssh_port: {server.port}\n    ssh_user: {server.user}\n"
            f"    ssh_key: {server.key_path}\n    storage_path: {dst}\n"
            "    ssh_options:\n"
            + "".join(f"      - {opt}\n" for opt in server.options)
            + "  benchkeep:\n    endpoint: http://127.0.0.1:9\n"
            "    access_method: ssh\n    ssh_host: 127.0.0.1\n    ssh_persist: 60\n"
            f"    ssh_port: {server.port}\n    ssh_user: {server.user}\n"
            f"    ssh_key: {server.key_path}\n    storage_path: {dst}\n"
            "    ssh_options:\n" + "".join(f"      - {opt}\n" for opt in server.options),
        )
        ssh = " ".join(
            ["ssh", "-p", str(server.port), "-i", str(server.key_path), "-o", "BatchMode=yes"]
            + [w for opt in server.options for w in ("-o", opt)]
        )
        remote = f"{server.user}@{server.host}"
        publish = [axon_bin(), "publish", REF, "--target", "benchssh", "--no-notify", "-q"]
        gcm = f"{ssh} -o Ciphers={CIPHERS}"
        runs: dict[str, list[tuple[float, float]]] = {"rsync": [], "gcm": [], "axon": []}
        for i in range(rounds()):
            shutil.rmtree(dst / "bench", ignore_errors=True)  # a fresh publish every round
            for key, cmd in (
                ("rsync", ["rsync", "-a", "-e", ssh, f"{cached}/", f"{remote}:{rs_dir}/rs{i}/"]),
                ("gcm", ["rsync", "-a", "-e", gcm, f"{cached}/", f"{remote}:{rs_dir}/gcm{i}/"]),
                ("axon", publish),
            ):
                os.sync()
                runs[key].append(timed_run(cmd, env=env))
        note = f"best of {rounds()}"
        axon_s, rss = best(runs["axon"])
        rsync_s, rsync_gcm_s = best(runs["rsync"])[0], best(runs["gcm"])[0]
        login, again = [], []
        for _ in range(5):  # short runs: more of them, alternating
            login.append(timed_run([*ssh.split(), remote, "true"]))
            again.append(timed_run(publish, env=env))
        kept = [*publish[:4], "benchkeep", *publish[5:]]
        timed_run(kept, env=env)  # logs in and keeps the connection
        reuse = [timed_run(kept, env=env) for _ in range(5)]
        login_s = best(login)[0]
        again_s, again_rss = best(again)
        reuse_s, reuse_rss = best(reuse)
        who = f"login {server.user}" + ("" if user else " (its shell start-up files count)")
        rows = [
            Row("ssh: axon publish (1 GiB)", axon_s, total, "rsync -a", rsync_s, rss, note),
            Row("ssh: axon publish (1 GiB)", axon_s, total, "rsync -a, same cipher", rsync_gcm_s),
            Row(
                "ssh: axon publish unchanged",
                again_s,
                0,
                "ssh host true",
                login_s,
                again_rss,
                f"best of 5; median {statistics.median(r[0] for r in again):.2f} s; {who}",
            ),
            Row(
                "ssh: unchanged, ssh_persist (no login)",
                reuse_s,
                0,
                "ssh host true",
                login_s,
                reuse_rss,
                f"best of 5; median {statistics.median(r[0] for r in reuse):.2f} s",
            ),
        ]
        return rows
    finally:
        server.stop()
