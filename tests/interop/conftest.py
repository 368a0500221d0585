"""Fixtures of the interoperability suite (the real upstream Go axon; see upstream.py).

* ``axon_home`` (autouse, replaces the suite-wide one): ``<tmp>/home/.axon``, so the binary,
  run with ``HOME=<tmp>/home``, shares our cache and config file.
* ``upstream``: an :class:`~tests.interop.upstream.Upstream` (skips, saying why, when the
  binary is absent; fails under ``CI=true``).
* ``shared_config(**sections)``: write the one config file both tools read (``cache_dir``
  always: the binary has no default once the file exists).
* ``upstream_install(ref, files, listed=...)``: serve ``files`` from a loopback registry
  and have the binary install them (``--format native``); returns the cache dir it wrote.
* ``bound_mlos``: our ``mlos-core`` started in a private mount namespace with
  ``--models-dir /var/lib/mlos/models``, a temp dir bound there; ``bound_mlos.models`` is
  that temp dir, and :meth:`Upstream.run_bound` binds the same one for the binary, so
  both see one ``/var/lib/mlos/models``, as on a real host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelpkg.refs import ModelRef
from tests.fixtures.common import free_port
from tests.fixtures.mlos import Server
from tests.helpers import write_config
from tests.interop.registry import Registry
from tests.interop.upstream import (
    MODELS_DIR,
    Upstream,
    bound_command,
    require_mount_namespace,
    require_upstream,
)


@pytest.fixture(autouse=True)
def axon_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home" / ".axon"
    home.mkdir(parents=True)
    monkeypatch.setenv("AXON_HOME", str(home))
    monkeypatch.delenv("MLOS_CORE_ENDPOINT", raising=False)
    monkeypatch.delenv("AXON_DEBUG", raising=False)
    return home


@pytest.fixture
def upstream(axon_home: Path, tmp_path: Path) -> Upstream:
    binary = require_upstream()
    tmp = tmp_path / "upstream-tmp"
    tmp.mkdir()
    return Upstream(binary, axon_home.parent, tmp)


@pytest.fixture
def registry() -> Iterator[Registry]:
    served = Registry()
    try:
        yield served
    finally:
        served.close()


SharedConfig = Callable[..., Path]


@pytest.fixture
def shared_config(axon_home: Path) -> SharedConfig:
    def write(targets: dict[str, Any] | None = None, **sections: Any) -> Path:
        return write_config(axon_home, targets, cache_dir=str(axon_home / "cache"), **sections)

    write()
    return write


UpstreamInstall = Callable[..., Path]


@pytest.fixture
def upstream_install(
    upstream: Upstream, registry: Registry, shared_config: SharedConfig, axon_home: Path
) -> UpstreamInstall:
    shared_config(registry={"url": registry.url, "enable_huggingface": False})

    def install(ref: ModelRef, files: dict[str, bytes], *, listed: str = "all") -> Path:
        registry.add(ref, files, listed=listed)
        run = upstream.run("install", str(ref), "--format", "native")
        assert run.code == 0, f"upstream install failed:\n{run.out}\n{run.err}"
        path = axon_home / "cache" / "models" / ref.namespace / ref.name / ref.version
        assert (path / "manifest.yaml").is_file(), run.out
        return path

    return install


class BoundServer(Server):
    """``mlos-core serve --models-dir /var/lib/mlos/models`` in its own mount namespace,
    ``models`` (a temp dir) bound at that path."""

    def __init__(self, workdir: Path, models: Path, port: int) -> None:
        super().__init__(workdir, Path(MODELS_DIR), [], port)
        self.models = models

    def command(self) -> list[str]:
        return bound_command(self.models, super().command())


@pytest.fixture
def bound_mlos(tmp_path: Path) -> Iterator[BoundServer]:
    require_mount_namespace()
    workdir = tmp_path / "bound-mlos"
    models = tmp_path / "var-lib-mlos-models"
    workdir.mkdir()
    models.mkdir()
    server = BoundServer(workdir, models, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
