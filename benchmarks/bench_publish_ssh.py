"""SSH publish of a 1 GiB model vs ``rsync -a`` over the same sshd (127.0.0.1).

A real OpenSSH sshd is started on a free loopback port (as the tests do). Each tool copies
the same cached model directory into a fresh directory through that server:

* ``rsync -a`` with plain ``ssh`` (OpenSSH's default cipher): the baseline a user would run;
* ``rsync -a`` with the cipher axon picks (``aes128-gcm``): the same wire, tool vs tool;
* ``axon publish``: the whole command (configured ssh target, ``--no-notify``);
* ``axon publish (unchanged)``: again; nothing may be sent. Shown next to ``ssh host true``
  (one login, nothing else: the floor any tool that logs in pays), not as a ratio;
* the same with ``ssh_persist: 60`` on the target: each command rides on the connection the
  one before kept open (no login).

The remote account is ``axon-bench`` (an unprivileged user with a plain ``/bin/sh``, made by
``scripts/bench-user.sh`` under ``make bench``) when it exists and we are root, as a publish
account on a server; else the current user, whose shell start-up files then count too.
The tools run ``AXON_BENCH_ROUNDS`` rounds (default 3) in rotated order, each copy deleted
and everything synced before the next run; the table shows medians. Only the two rsync
rows are ratios (the same files over the same sshd); the unchanged re-publishes and the
bare login are absolute times (5 runs each, alternating), as no tool does that work.
``AXON_BENCH_PUBLISH_MB`` changes the size (default 1024; ``AXON_BENCH_QUICK=1``: 16).
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from benchmarks.common import (
    MiB,
    Row,
    axon_bin,
    command,
    install_model,
    rounds,
    run_rounds,
    size_from_env,
    write_config,
)

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
    size = size_from_env("AXON_BENCH_PUBLISH_MB", 1024)
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
        copy = rs_dir / "copy"

        def fresh() -> None:  # every run copies into an empty place
            shutil.rmtree(copy, ignore_errors=True)
            shutil.rmtree(dst / "bench", ignore_errors=True)

        runs = run_rounds(
            {
                "rsync": command(
                    ["rsync", "-a", "-e", ssh, f"{cached}/", f"{remote}:{copy}/"], reset=fresh
                ),
                "gcm": command(
                    ["rsync", "-a", "-e", gcm, f"{cached}/", f"{remote}:{copy}/"], reset=fresh
                ),
                "axon": command(publish, env=env, reset=fresh),
            },
            rounds(3),
        )
        command(publish, env=env).timed()  # in place: the next publishes send nothing
        short = run_rounds(  # short runs: more of them
            {
                "login": command([*ssh.split(), remote, "true"]),
                "again": command(publish, env=env),
            },
            5,
        )
        kept = [*publish[:4], "benchkeep", *publish[5:]]
        command(kept, env=env).timed()  # logs in and keeps the connection
        reuse = run_rounds({"reuse": command(kept, env=env)}, 5)["reuse"]
        who = f"login {server.user}" + ("" if user else " (its shell start-up files count)")
        mb = size // MiB
        return [
            runs["axon"].row(f"ssh: axon publish ({mb} MiB)", total, ("rsync -a", runs["rsync"])),
            runs["axon"].row(
                f"ssh: axon publish ({mb} MiB)", total, ("rsync -a, same cipher", runs["gcm"])
            ),
            short["again"].row(
                "ssh: axon publish unchanged (0 B sent)",
                note=f"absolute, whole command, a login per command; {who}",
            ),
            short["login"].row("ssh: ssh host true (one login)", note="absolute: the floor"),
            reuse.row("ssh: unchanged, ssh_persist (no login)", note="absolute, whole command"),
        ]
    finally:
        server.stop()
