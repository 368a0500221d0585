"""What the upstream Go axon writes, as text and files, for tests that cannot run it.

The shapes were copied from what the real binary (``../shared/upstream-axon/axon``) wrote in
this suite's own runs: ``axon install`` from a registry on loopback leaves a cache entry
(``manifest.yaml`` indented by 4, unquoted ``created``/``updated`` timestamps,
``0001-01-01T00:00:00Z`` when unknown, files with size 0 and an empty sha256 when its
registry or adapter did not know them; ``.axon_metadata.json``; the ``<ns>-<name>-<ver>.axon``
package); its ``axon publish`` copies that whole directory, file by file, to
``/var/lib/mlos/models/<ns>/<name>/<ver>/``. The tests in this package check these shapes
against the binary whenever it is there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from modelpkg.refs import ModelRef

UPSTREAM_MANIFEST = """apiVersion: v1
kind: Model
metadata:
    name: {name}
    namespace: {namespace}
    version: {version}
    description: ""
    license: ""
    created: 0001-01-01T00:00:00Z
    updated: 0001-01-01T00:00:00Z
spec:
    framework:
        name: PyTorch
        version: 2.0.0
    format:
        type: pytorch
        execution_format: pytorch
        files:
            - path: {first}
              size: 0
              sha256: ""
    io:
        inputs: []
        outputs: []
    requirements:
        compute:
            cpu:
                min_cores: 0
                recommended_cores: 0
            memory:
                min_gb: 0
                recommended_gb: 0
distribution:
    package:
        url: ""
        size: 0
        sha256: ""
    registry:
        url: ""
        namespace: ""
"""


def upstream_manifest(ref: ModelRef, first: str) -> str:
    """An upstream cache manifest of ``ref`` naming only ``first`` (size 0, no sha256)."""
    return UPSTREAM_MANIFEST.format(
        name=ref.name, namespace=ref.namespace, version=ref.version, first=first
    )


def place_like_upstream(
    final: Path, ref: ModelRef, files: dict[str, bytes], manifest: str | None = None
) -> None:
    """Write ``files`` at ``final`` as the Go axon leaves a model dir (in its cache, or after
    its publish copied that): the files, ``manifest`` (default: :func:`upstream_manifest`),
    ``.axon_metadata.json`` and the ``.axon`` package."""
    for rel, data in files.items():
        (final / rel).parent.mkdir(parents=True, exist_ok=True)
        (final / rel).write_bytes(data)
    if manifest is None:
        manifest = upstream_manifest(ref, sorted(files)[0])
    (final / "manifest.yaml").write_text(manifest)
    meta = {
        "installed_at": "2026-01-02T03:04:05Z",
        "name": ref.name,
        "namespace": ref.namespace,
        "version": ref.version,
    }
    (final / ".axon_metadata.json").write_text(json.dumps(meta, indent=2))
    (final / ref.archive_name).write_bytes(b"\x1f\x8b" + os.urandom(64))
