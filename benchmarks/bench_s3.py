"""S3: a 1 GiB model to a local S3-compatible server (moto, loopback), three ways.

* ``axon publish``: the whole command, to a configured ``network_storage`` target
  ``s3://bench/axon`` with the server's ``endpoint_url``: start-up, config, validation
  through the hash index, a HEAD per blob, the files as blobs (the large one as a parallel
  multipart upload whose parts carry CRC32 checksums, while one thread hashes the whole file
  with sha256 and the upload completes only if it matches), then ``manifest.yaml``;
* ``boto3 upload_file``: boto3's managed transfer with its default ``TransferConfig`` (CRC32
  part checksums too), the model's files one after the other, in a child Python;
* ``aws s3 cp --recursive``: the AWS CLI with its defaults (skipped when ``aws`` is not
  installed).

All three upload the same files of the same installed model (its ``manifest.yaml`` included)
and each run gets a new moto server: moto keeps every uploaded byte in memory, so a server
that already holds earlier runs' GiBs would slow whichever tool comes later. The tools run
``AXON_BENCH_ROUNDS`` rounds (default 3) in rotated order; the table shows medians, each
uploader's peak RSS its own. Then, an absolute time (no tool does that work, so no ratio):
the unchanged re-publish (a HEAD per blob and the manifest, 0 B of file content sent).
``AXON_BENCH_S3_MB`` changes the size (default 1024; ``AXON_BENCH_QUICK=1``: 16).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    Row,
    Sample,
    Tool,
    axon_bin,
    install_model,
    rounds,
    run_rounds,
    sample_of,
    size_from_env,
    write_config,
)

REF = "bench/s3-model@v1"
BUCKET = "bench"

_BOTO3 = """
import sys
from pathlib import Path
import boto3
client = boto3.client("s3", endpoint_url=sys.argv[1])
for path in sorted(Path(sys.argv[2]).iterdir()):
    if path.is_file() and not path.name.startswith("."):
        client.upload_file(str(path), sys.argv[3], f"boto3/{path.name}")
"""


def run(workdir: Path) -> list[Row]:
    from tests.fixtures.s3 import S3Server, start_moto

    workdir = workdir.resolve()
    size = size_from_env("AXON_BENCH_S3_MB", 1024)
    env, cached = install_model(workdir, size, REF)
    home = Path(env["AXON_HOME"])
    files = [p for p in cached.iterdir() if p.is_file() and not p.name.startswith(".")]
    total = sum(p.stat().st_size for p in files)
    servers: list[S3Server] = []

    def fresh_moto(upload: Callable[[S3Server, dict[str, str]], Sample]) -> Tool:
        """``upload`` against a new moto server holding one empty bucket."""

        def setup() -> None:
            server = start_moto(workdir / "moto-logs")
            servers.append(server)
            server.bucket(BUCKET)
            write_config(
                home,
                "mlos_targets:\n  benchs3:\n    type: network_storage\n"
                f"    storage_type: s3\n    storage_path: s3://{BUCKET}/axon\n"
                f"    endpoint_url: {server.endpoint_url}\n",
            )

        def timed() -> Sample:
            server = servers[-1]
            no_proxy = {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
            return upload(server, {**env, **server.env(), **no_proxy})

        return Tool(timed, setup, reset=lambda: servers.pop().stop())

    def boto3(server: S3Server, env: dict[str, str]) -> Sample:
        cmd = [sys.executable, "-c", _BOTO3, server.endpoint_url, str(cached), BUCKET]
        return sample_of(cmd, env=env)

    def aws(server: S3Server, env: dict[str, str]) -> Sample:
        cmd = [str(shutil.which("aws")), "s3", "cp", "--recursive", "--exclude", ".*"]
        cmd += [str(cached), f"s3://{BUCKET}/awscli/"]
        return sample_of(
            [*cmd, "--endpoint-url", server.endpoint_url, "--only-show-errors"], env=env
        )

    publish = [axon_bin(), "publish", REF, "--target", "benchs3", "-q"]

    def axon(server: S3Server, env: dict[str, str]) -> Sample:
        return sample_of(publish, env=env)

    tools = {"boto3": fresh_moto(boto3), "axon": fresh_moto(axon)}
    if shutil.which("aws"):
        tools["aws"] = fresh_moto(aws)
    try:
        runs = run_rounds(tools, rounds(3))
        again_tool = fresh_moto(axon)
        again_tool.setup()
        try:
            again_tool.timed()  # the model in place: the next publishes send no content
            again = run_rounds({"again": Tool(again_tool.timed)}, rounds(3))["again"]
        finally:
            again_tool.reset()
    finally:
        for server in servers:
            server.stop()
    mb = size // (1024 * 1024)
    rows = [runs["boto3"].row(f"s3: boto3 upload_file ({mb} MiB)", total, note="baseline")]
    if "aws" in runs:
        rows.append(runs["aws"].row("s3: aws s3 cp --recursive", total, note="baseline"))
        rows.append(runs["axon"].row("s3: axon publish", total, ("aws s3 cp", runs["aws"])))
    rows.append(runs["axon"].row("s3: axon publish", total, ("boto3 upload_file", runs["boto3"])))
    rows.append(again.row("s3: axon publish unchanged (0 B sent)", note="absolute, whole command"))
    return rows
