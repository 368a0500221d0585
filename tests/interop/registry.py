"""A model registry on loopback that the upstream Go axon installs from.

The binary's "local" registry adapter (namespaces other than hf, pytorch, torch, modelscope,
tfhub, tf; ``registry.url`` in its config) asks two things, which this serves:

* ``GET /api/v1/models/<ns>/<name>/<version>/manifest.yaml``: the model's manifest;
* the manifest's ``distribution.package.url``: the package, a tar.gz of the model's files,
  checked against ``distribution.package.sha256``.

``axon install --format native`` then leaves in its cache exactly what it leaves for any
registry: the manifest as it re-writes it, ``.axon_metadata.json``, the ``.axon`` package
and the unpacked files. :meth:`Registry.add` says how complete the served manifest is:
every file with its size and sha256 (``listed="all"``), or, as the binary's Hugging Face
adapter writes it, only the first file with size 0 and no sha256 (``listed="first"``).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from modelpkg.refs import ModelRef


class Registry:
    def __init__(self) -> None:
        self.documents: dict[str, tuple[str, bytes]] = {}  # path -> (content type, body)
        self.requests: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.requests.append(self.path)
                found = registry.documents.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                kind, body = found
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(
        self,
        ref: ModelRef,
        files: dict[str, bytes],
        *,
        listed: str = "all",
        description: str = "served on loopback",
    ) -> dict[str, Any]:
        """Serve ``ref`` with ``files``; returns the manifest served."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for rel, data in sorted(files.items()):
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        package = buf.getvalue()
        package_path = f"/packages/{ref.archive_name}.tar.gz"
        self.documents[package_path] = ("application/gzip", package)
        if listed == "all":
            entries = [
                {"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                for p, b in sorted(files.items())
            ]
        else:
            entries = [{"path": sorted(files)[0], "size": 0, "sha256": ""}]
        manifest = {
            "apiVersion": "v1",
            "kind": "Model",
            "metadata": {
                "name": ref.name,
                "namespace": ref.namespace,
                "version": ref.version,
                "description": description,
                "license": "Apache-2.0",
                "tags": ["interop"],
            },
            "spec": {
                "framework": {"name": "PyTorch", "version": "2.1.0"},
                "format": {"type": "pytorch", "execution_format": "pytorch", "files": entries},
            },
            "distribution": {
                "package": {
                    "url": self.url + package_path,
                    "size": len(package),
                    "sha256": hashlib.sha256(package).hexdigest(),
                },
            },
        }
        path = f"/api/v1/models/{ref.namespace}/{ref.name}/{ref.version}/manifest.yaml"
        self.documents[path] = ("application/yaml", yaml.safe_dump(manifest).encode())
        return manifest

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
