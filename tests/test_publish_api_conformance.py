"""ApiTransport passes the shared transport conformance suite against a real mlos-core.

The published model is read straight from the server's models directory (same machine), as
the directory-style transports are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from axon.transports.api import ApiTransport
from axon.transports.base import Transport
from tests.test_transport_conformance import (
    REF,
    DirectoryConformance,
    base_files,
    publish,
    write_model,
)


class TestApiConformance(DirectoryConformance):
    big_size = 12 * 1024 * 1024  # several of ApiTransport's 4 MiB chunks

    @pytest.fixture
    def transport(self, mlos_server: Any) -> Iterator[Transport]:
        srv = mlos_server(no_fsync=True)
        self._root = srv.models_dir
        with ApiTransport(srv.url, timeout=10.0, name="api-conformance") as transport:
            yield transport

    def published_root(self, transport: Transport) -> Path:
        return Path(self._root)

    def test_fetch_manifest(self, transport: Transport, tmp_path: Path) -> None:
        if transport.fetch_manifest(REF) is None and not _server_serves_manifests(transport):
            pytest.skip("mlos-core has no manifest download (GET /v1/models/{id}/manifest) yet")
        super().test_fetch_manifest(transport, tmp_path)

    def test_abort_leaves_the_previous_version(self, transport: Transport, tmp_path: Path) -> None:
        if _server_serves_manifests(transport):
            super().test_abort_leaves_the_previous_version(transport, tmp_path)
            return
        # the same steps, minus fetch_manifest (no manifest download on this server yet)
        src, src2 = tmp_path / "src", tmp_path / "src2"
        old = write_model(src, base_files("old"))
        publish(transport, src, old)
        new = write_model(src2, base_files("new"))
        session = transport.open(REF, new)
        for entry in session.needed:
            session.send(entry, src2 / entry.path)
        session.abort()
        self.assert_published(transport, src, old)
        publish(transport, src2, new)
        self.assert_published(transport, src2, new)


def _server_serves_manifests(transport: Transport) -> bool:
    assert isinstance(transport, ApiTransport)
    resp = transport.client.request(
        "GET", "/v1/models/x%2Fy%40z/manifest", what="probe", ok=(200, 404, 405)
    )
    # a server with the endpoint answers 404 with a JSON error naming the model
    return resp.status_code == 404 and "x/y@z" in resp.text
