"""Many small files: a model of 3,000 files (2,000 shards of 20 KiB + 1,000 small files of
varied sizes, 40 MiB in all: the shape of an ONNX model saved with one external-data file per
tensor, next to a big tokenizer), deterministic content, installed into an axon cache. Each
axon command is the whole command, against a standard tool copying the same tree in the
same run:

* ``axon install`` of the directory into an empty cache vs ``cp -r`` + ``sync``
  (target <= 2x);
* ``axon publish`` to a filesystem target vs ``rsync -a`` + ``sync`` of the cached model to
  the same disk (<= 3x);
* ``axon publish`` to an API target, a new ``mlos-core`` per run with fsync on (as in
  production), vs the same ``rsync -a`` + ``sync`` (<= 3x); the server's peak RSS (< 150 MB);
* ``axon publish`` over SSH (a real sshd on 127.0.0.1, logging in as bench_publish_ssh does)
  vs ``rsync -a`` over the same sshd (OpenSSH's default cipher) + ``sync``: axon's copy is
  durable, so the baseline's is made so too (<= 3x);
* the unchanged re-publish on each transport: absolute times, nothing may be sent (< 0.5 s).

All the copies run in one set of ``AXON_BENCH_ROUNDS`` rounds (default 3) in rotated order,
every copy deleted and everything synced before the next timed run; the re-publishes, short,
run 5 rounds. The table shows medians, then a summary against the targets.
``AXON_BENCH_MANY_FILES`` sets the number of files (default 3000; ``AXON_BENCH_QUICK=1``:
300), two thirds of them shards.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from benchmarks.bench_publish_ssh import login_user
from benchmarks.common import (
    QUICK,
    Mlos,
    Row,
    Runs,
    Sample,
    Target,
    Tool,
    axon_bin,
    command,
    install_dir,
    on_fresh_mlos,
    rounds,
    run_rounds,
    sample_of,
    start_mlos,
    write_config,
)

if TYPE_CHECKING:
    from tests.fixtures.sshd import Sshd

REF = "bench/many-files@v1"
SHARD = 20 * 1024
NOWHERE = "http://127.0.0.1:9"  # the file targets' endpoint: never notified (--no-notify)


def make_tree(root: Path, files: int) -> int:
    """``files`` files of deterministic, distinct content under ``root``: two thirds 20 KiB
    tensor shards next to ``model.onnx``, the rest ``config.json`` and tokenizer-like text
    files of 64 B-2 KiB in ``tokenizer/``. Returns their total size."""
    rng = random.Random(3000)
    (root / "tokenizer").mkdir(parents=True)
    total = (root / "config.json").write_text('{"model_type": "bert"}')
    total += (root / "model.onnx").write_bytes(rng.randbytes(64 * 1024))
    shards = files * 2 // 3
    for i in range(shards):
        total += (root / f"onnx__MatMul_{i:05d}").write_bytes(rng.randbytes(SHARD))
    for i in range(files - shards - 2):
        text = rng.randbytes(rng.randint(32, 1024)).hex()
        total += (root / "tokenizer" / f"vocab-{i:05d}.json").write_text(f'"{text}"\n')
    return total


def emptied(directory: Path) -> Callable[[], None]:
    """A reset that removes everything in ``directory`` (which stays, with its owner)."""

    def reset() -> None:
        for entry in directory.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    return reset


def run(workdir: Path) -> list[Row]:
    from tests.fixtures.sshd import start_sshd

    workdir = workdir.resolve()
    user = login_user(workdir)
    if user is not None:
        workdir.chmod(0o711)  # the account reaches its dirs (and sshd its keys) through it
    files = int(os.environ.get("AXON_BENCH_MANY_FILES") or (300 if QUICK else 3000))
    src = workdir / "src"
    total = make_tree(src, files)
    env, cached = install_dir(workdir, src, REF)
    sshd = start_sshd(workdir / "sshd", user=user)
    try:
        fs_dst = workdir / "fs-models"
        fs_dst.mkdir()
        targets = {
            "manyfs": {
                "endpoint": NOWHERE,
                "access_method": "filesystem",
                "storage_path": str(fs_dst),
            },
            "manyssh": sshd.config_target(NOWHERE, sshd.root),
        }
        write_config(workdir / "home", yaml.safe_dump({"mlos_targets": targets}))
        tools, server_rss = _copies(workdir, src, cached, env, sshd, fs_dst)
        runs = run_rounds(tools, rounds(3))
        again = _unchanged(workdir, env)
    finally:
        sshd.stop()
    size = f"{files} files, {total / 2**20:.0f} MiB"
    rsync = ("rsync -a + sync", runs["rsync"])
    ratio, instant = Target(3), Target(0.5, "seconds", strict=True)
    return [
        runs["install"].row(
            f"install: axon install ({size})", total, ("cp -r + sync", runs["cp"]), target=Target(2)
        ),
        runs["fs"].row(f"fs: axon publish ({size})", total, rsync, target=ratio),
        runs["api"].row(
            f"api: axon publish ({size})", total, rsync, "fresh mlos-core each run", ratio
        ),
        Row(
            "api: mlos-core peak RSS (same runs)",
            runs["api"].median,
            peak_rss_mb=max(server_rss),
            note="RSS: the server's peak, the highest of its runs; seconds: the publish's",
            target=Target(150, "rss", strict=True),
        ),
        runs["ssh"].row(
            f"ssh: axon publish ({size})",
            total,
            ("rsync -a ssh + sync", runs["rsync-ssh"]),
            target=ratio,
        ),
        again["fs"].row("fs: unchanged re-publish", note="absolute", target=instant),
        again["api"].row("api: unchanged re-publish", note="absolute", target=instant),
        again["ssh"].row(
            "ssh: unchanged re-publish", note="absolute, a login per command", target=instant
        ),
    ]


def publish(target: str) -> list[str]:
    return [axon_bin(), "publish", REF, "--target", target, "--no-notify", "-q"]


def _copies(
    workdir: Path, src: Path, cached: Path, env: dict[str, str], sshd: Sshd, fs_dst: Path
) -> tuple[dict[str, Tool], list[float]]:
    """Every tool that copies the tree, each leaving an empty destination behind, and the
    list the API tool adds its server's peak RSS to after each run."""
    copies = workdir / "copies"  # the baselines' destinations, the ssh account's own
    copies.mkdir()
    shutil.chown(copies, sshd.user)
    home = workdir / "install-home"
    ssh = " ".join(
        ["ssh", "-p", str(sshd.port), "-i", str(sshd.key_path), "-o", "BatchMode=yes"]
        + [f"-o {option}" for option in sshd.options]
    )
    remote = f"{sshd.user}@{sshd.host}:{copies / 'ssh'}/"
    server_rss: list[float] = []

    def api(server: Mlos) -> Sample:
        sample = sample_of(publish(server.url), env=env)
        server_rss.append(server.peak_rss_mb())
        return sample

    tools = {
        "cp": command(
            ["sh", "-c", 'cp -r "$0" "$1" && sync', str(src), str(copies / "cp")],
            reset=emptied(copies),
        ),
        "install": command(
            [axon_bin(), "install", str(src), "--as", REF, "-q"],
            env={**env, "AXON_HOME": str(home)},
            reset=lambda: shutil.rmtree(home),
        ),
        "rsync": command(
            ["sh", "-c", 'rsync -a "$0/" "$1/" && sync', str(cached), str(copies / "rsync")],
            reset=emptied(copies),
        ),
        "fs": command(publish("manyfs"), env=env, reset=emptied(fs_dst)),
        "api": on_fresh_mlos(workdir, api),
        "rsync-ssh": command(
            ["sh", "-c", 'rsync -a -e "$0" "$1/" "$2" && sync', ssh, str(cached), remote],
            reset=emptied(copies),
        ),
        "ssh": command(publish("manyssh"), env=env, reset=emptied(sshd.root)),
    }
    return tools, server_rss


def _unchanged(workdir: Path, env: dict[str, str]) -> dict[str, Runs]:
    """The unchanged re-publish on each transport, the model already in place."""
    server = start_mlos(workdir / "again-models")
    try:
        tools = {
            name: command(publish(target), env=env)
            for name, target in (("fs", "manyfs"), ("api", server.url), ("ssh", "manyssh"))
        }
        for tool in tools.values():
            tool.timed()  # in place: the next publishes send nothing
        return run_rounds(tools, 5)
    finally:
        server.stop()
        shutil.rmtree(server.models, ignore_errors=True)
