"""S3: a 1 GiB model to a local S3-compatible server (moto, loopback), three ways.

* ``axon``: :func:`axon.publish.storage.publish_to_storage` to ``s3://bucket/axon`` (parallel
  multipart with per-part SHA256 checksums and a whole-file sha256 check);
* ``boto3 upload_file``: boto3's managed transfer with its default ``TransferConfig``;
* ``aws s3 cp``: the AWS CLI with its defaults (skipped when ``aws`` is not installed).

All three move the same bytes into the same server in the same run, each in its own child
process (so the peak RSS is that uploader's own), each to a fresh key. The model's sha256 is
computed before timing, as the dev cache does at install time. A final row re-publishes the
unchanged model (nothing is sent). ``AXON_BENCH_S3_MB`` changes the size (default 1024).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import MiB, Row, make_file, timed_run

CREDS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = (workdir / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **CREDS},
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1, trust_env=False)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def _write_model(root: Path, size: int) -> Path:
    """A model dir: one big weights file + a config, and its manifest (hashed here)."""
    make_file(root / "model.safetensors", size)
    (root / "config.json").write_text('{"model_type": "bert"}')
    from modelpkg.manifest import FileEntry, Manifest

    files = []
    for p in sorted(root.iterdir()):
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(8 * MiB):
                h.update(chunk)
        files.append(FileEntry(p.name, p.stat().st_size, h.hexdigest()))
    manifest = Manifest.new(namespace="bench", name="s3-model", version="v1", files=files)
    (root / "manifest.yaml").write_text(manifest.to_yaml())
    return root


def _axon_child(endpoint: str, location: str, model_dir: str) -> None:
    """Run in the child: publish the prepared model (manifest trusted: already hashed)."""
    from axon.publish import PreparedModel, PublishOptions
    from axon.publish.storage import publish_to_storage
    from axon.targets import StorageTarget
    from modelpkg.manifest import Manifest

    manifest = Manifest.load(model_dir)
    ref_parts = (manifest.namespace, manifest.name, manifest.version)
    from modelpkg.refs import ModelRef

    model = PreparedModel(ModelRef(*ref_parts), manifest, Path(model_dir), manifest.total_size)  # type: ignore[arg-type]
    storage = StorageTarget("bench", "s3", location, endpoint_url=endpoint)
    result = publish_to_storage(model, storage, PublishOptions(retries=0))
    print(json.dumps({"ok": result.ok, "bytes_sent": result.bytes_sent, "error": result.error}))
    if not result.ok:
        sys.exit(1)


def run(workdir: Path) -> list[Row]:
    size = int(os.environ.get("AXON_BENCH_S3_MB", "1024")) * MiB
    model = _write_model(workdir / "model", size)
    big = model / "model.safetensors"
    total = sum(p.stat().st_size for p in model.iterdir() if p.name != "manifest.yaml")
    proc, endpoint = _start_moto(workdir)
    env = {**os.environ, **CREDS, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    rows: list[Row] = []
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **_creds()).create_bucket(Bucket="bench")
        py = sys.executable
        boto_code = (
            "import boto3,sys; c=boto3.client('s3', endpoint_url=sys.argv[1]);"
            "c.upload_file(sys.argv[2], 'bench', 'boto3/model.safetensors')"
        )
        b_sec, b_rss = timed_run([py, "-c", boto_code, endpoint, str(big)], env=env)
        aws = shutil.which("aws")
        a_sec = a_rss = None
        if aws:
            cmd = [aws, "s3", "cp", str(big), "s3://bench/awscli/model.safetensors"]
            a_sec, a_rss = timed_run(
                [*cmd, "--endpoint-url", endpoint, "--only-show-errors"], env=env
            )
        axon_cmd = [py, "-m", "benchmarks.bench_s3", "_axon", endpoint, "s3://bench/axon"]
        x_sec, x_rss = timed_run([*axon_cmd, str(model)], env=env, stdout=subprocess.DEVNULL)
        r_sec, r_rss = timed_run([*axon_cmd, str(model)], env=env, stdout=subprocess.DEVNULL)
    finally:
        proc.kill()  # moto holds every uploaded GiB in memory: no graceful shutdown needed
        proc.wait()
    rows.append(Row("boto3 upload_file (defaults)", b_sec, size, peak_rss_mb=b_rss))
    if a_sec is not None:
        rows.append(Row("aws s3 cp (defaults)", a_sec, size, peak_rss_mb=a_rss))
        rows.append(Row("axon publish s3 vs aws s3 cp", x_sec, total, "aws s3 cp", a_sec, x_rss))
    rows.append(Row("axon publish s3 vs boto3", x_sec, total, "boto3 upload_file", b_sec, x_rss))
    rows.append(
        Row("axon re-publish unchanged (sends 0 B)", r_sec, 0, "boto3 upload_file", b_sec, r_rss)
    )
    return rows


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDS["AWS_DEFAULT_REGION"],
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_axon":
        _axon_child(*sys.argv[2:5])
    else:
        print("usage: python -m benchmarks s3", file=sys.stderr)
        sys.exit(2)
