"""Filesystem publish of a 1 GiB model vs ``cp -r`` followed by ``sync`` (a durable copy).

Each copies the same cached model directory (page cache warm for all) to a fresh directory
on the same disk:

* ``cp -r + sync``: the baseline;
* ``axon publish``: the whole command (``--target`` a configured filesystem target,
  ``--no-notify``), so start-up, config, validation and the atomic swap are all counted;
* ``axon publish --full-verify``: the same, re-hashing every byte while validating and
  while copying (without it, the copy trusts the sha256 validation just vouched for, as
  long as each file keeps the identity it had then);
* ``library``: :func:`axon.publish.prepare_model` + ``FilesystemTransport`` in a child
  process (no CLI);
* ``axon publish (unchanged)``: the same publish again: nothing may be written. An absolute
  time (no tool does that work).

A virtual disk's speed drifts while the host absorbs earlier writes, so each round runs the
tools in a rotated order, and every copy is deleted and synced away before the next run.
``AXON_BENCH_ROUNDS`` rounds (default 3); the table shows the median of each tool's runs and
the ratio of the medians. ``AXON_BENCH_PUBLISH_MB`` changes the size (default 1024;
``AXON_BENCH_QUICK=1``: 16).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from benchmarks.common import (
    Row,
    axon_bin,
    command,
    install_model,
    rounds,
    run_rounds,
    size_from_env,
    write_config,
)

REF = "bench/publish-fs@v1"

_LIBRARY = """
import sys
from axon.cache import Cache
from axon.publish import prepare_model
from modelpkg.refs import ModelRef
from axon.transports.filesystem import FilesystemTransport
from pathlib import Path
model = prepare_model(Cache.from_config(), ModelRef.parse(sys.argv[2]))
with FilesystemTransport(Path(sys.argv[1])) as t:
    session = t.open(model.ref, model.manifest)
    for entry in session.needed:
        session.send(entry, model.source(entry), verified=model.verified.get(entry.path))
    session.commit()
"""


def run(workdir: Path) -> list[Row]:
    workdir = workdir.resolve()
    size = size_from_env("AXON_BENCH_PUBLISH_MB", 1024)
    env, cached = install_model(workdir, size, REF)
    total = sum(p.stat().st_size for p in cached.iterdir() if p.is_file())
    dst = workdir / "axon-models"
    write_config(
        workdir / "home",
        "mlos_targets:\n  benchfs:\n    endpoint: http://127.0.0.1:9\n"
        f"    access_method: filesystem\n    storage_path: {dst}\n",
    )
    publish = [axon_bin(), "publish", REF, "--target", "benchfs", "--no-notify", "-q"]
    out = workdir / "out"

    def fresh() -> None:  # every run copies into an empty place
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()

    fresh()
    runs = run_rounds(
        {
            "cp": command(
                ["bash", "-c", 'cp -r "$0" "$1" && sync', str(cached), str(out)], reset=fresh
            ),
            "axon": command(publish, env=env, reset=fresh),
            "full": command([*publish, "--full-verify"], env=env, reset=fresh),
            "library": command(
                [sys.executable, "-c", _LIBRARY, str(dst), REF], env=env, reset=fresh
            ),
        },
        rounds(3),
    )
    command(publish, env=env).timed()  # the model in place: the next publishes change nothing
    again = run_rounds({"again": command(publish, env=env)}, rounds(3))["again"]
    mb = size // (1024 * 1024)
    base = ("cp -r + sync", runs["cp"])
    return [
        runs["axon"].row(f"fs: axon publish ({mb} MiB)", total, base),
        runs["full"].row("fs: axon publish --full-verify", total, base),
        runs["library"].row("fs: library (prepare + transport)", total, base),
        again.row(
            "fs: axon publish unchanged (0 B written)",
            note="absolute, whole command; target < 0.5 s",
        ),
    ]
