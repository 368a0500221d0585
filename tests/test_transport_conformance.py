"""The filesystem, SSH and API transports pass the shared conformance suite
(:mod:`tests.conformance.transport`), each against a real backend on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from axon.transports.base import Transport
from axon.transports.filesystem import FilesystemTransport
from tests.conformance.transport import DirectoryConformance


# ---- filesystem ---------------------------------------------------------------------------------
class TestFilesystemConformance(DirectoryConformance):
    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[Transport]:
        root = tmp_path / "models"
        root.mkdir()
        with FilesystemTransport(root) as transport:
            yield transport


# ---- ssh ----------------------------------------------------------------------------------------
class TestSshConformance(DirectoryConformance):
    @pytest.fixture
    def transport(self, tmp_path: Path, sshd: Any) -> Iterator[Transport]:
        root = tmp_path / "models"
        root.mkdir()
        with sshd.transport(root) as transport:
            yield transport


# ---- api (the suite reads the published dir of the real server) ---------------------------------
class TestApiConformance(DirectoryConformance):
    @pytest.fixture
    def transport(self, tmp_path: Path, mlos_server: Any) -> Iterator[Transport]:
        from axon.transports.api import ApiTransport

        models = tmp_path / "models"
        models.mkdir()
        self.server = mlos_server.start(models_dir=models)
        with ApiTransport(self.server.url) as transport:
            yield transport

    def published_root(self, transport: Transport) -> Path:
        return Path(self.server.models_dir)
