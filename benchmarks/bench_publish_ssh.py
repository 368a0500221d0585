"""SSH publish of a 1 GiB model vs ``rsync -a`` over the same sshd (127.0.0.1).

A real OpenSSH sshd is started on a free loopback port (as the tests do). Each tool copies
the same cached model directory into a fresh directory through that server:

* ``rsync -a`` with plain ``ssh`` (OpenSSH's default cipher): the baseline a user would run;
* ``rsync -a`` with the cipher axon picks (``aes128-gcm``): the same wire, tool vs tool;
* ``axon publish``: the whole command (configured ssh target, ``--no-notify``);
* ``axon publish (unchanged)``: again; nothing may be sent.

Each tool runs ``AXON_BENCH_ROUNDS`` times (default 2), alternating; the fastest run counts
(the figures of a shared machine are noisy). ``AXON_BENCH_PUBLISH_MB`` changes the size
(default 1024).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmarks.bench_publish_fs import axon_bin, best, install_model, rounds, write_config
from benchmarks.common import MiB, Row, timed_run

REF = "bench/publish-ssh@v1"


def run(workdir: Path) -> list[Row]:
    from tests.fixtures.sshd import start_sshd

    from axon.transports.ssh import CIPHERS

    workdir = workdir.resolve()
    size = int(os.environ.get("AXON_BENCH_PUBLISH_MB", "1024")) * MiB
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.iterdir() if p.is_file())
    server = start_sshd(workdir / "sshd")
    try:
        dst = server.root
        write_config(
            workdir / "home",
            "mlos_targets:\n  benchssh:\n    endpoint: http://127.0.0.1:9\n"
            "    access_method: ssh\n    ssh_host: 127.0.0.1\n"
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
                ("rsync", ["rsync", "-a", "-e", ssh, f"{cached}/", f"{remote}:{workdir}/rs{i}/"]),
                ("gcm", ["rsync", "-a", "-e", gcm, f"{cached}/", f"{remote}:{workdir}/gcm{i}/"]),
                ("axon", publish),
            ):
                os.sync()
                runs[key].append(timed_run(cmd, env=env))
        note = f"best of {rounds()}"
        axon_s, rss = best(runs["axon"])
        rsync_s, rsync_gcm_s = best(runs["rsync"])[0], best(runs["gcm"])[0]
        again_s, again_rss = timed_run(publish, env=env)
        rows = [
            Row("ssh: axon publish (1 GiB)", axon_s, total, "rsync -a", rsync_s, rss, note),
            Row("ssh: axon publish (1 GiB)", axon_s, total, "rsync -a, same cipher", rsync_gcm_s),
            Row("ssh: axon publish unchanged", again_s, 0, peak_rss_mb=again_rss),
        ]
        return rows
    finally:
        server.stop()
