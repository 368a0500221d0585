"""Shared test setup. Every test runs with AXON_HOME pointing at its own temp dir, so no
test ever reads or writes the developer's real ~/.axon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared suites' asserts report their operands like a test module's own.
pytest.register_assert_rewrite("tests.conformance", "tests.fixtures.cluster", "tests.helpers")

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.mlos",
    "tests.fixtures.sshd",
    "tests.fixtures.s3",
    "tests.fixtures.discovery",
    "tests.fixtures.proxy",
    "tests.fixtures.relay",
]


def _hosts_file_only(host: str) -> None:
    """axon.targets.lookup_host for tests, which ask no DNS server: a name resolves when
    /etc/hosts lists it (localhost), else EAI_NONAME. tests/test_target_names.py runs the real
    resolver against its own DNS server in a private network namespace."""
    import socket

    names = set()
    with open("/etc/hosts", encoding="utf-8") as hosts:
        for line in hosts:
            names.update(line.split("#", 1)[0].split()[1:])
    if host not in names:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (tests ask no DNS)")


@pytest.fixture(autouse=True, scope="session")
def _no_dns_lookups() -> Iterator[None]:
    import axon.targets

    real, axon.targets.lookup_host = axon.targets.lookup_host, _hosts_file_only
    yield
    axon.targets.lookup_host = real


@pytest.fixture(autouse=True)
def axon_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "axon-home"
    monkeypatch.setenv("AXON_HOME", str(home))
    monkeypatch.delenv("MLOS_CORE_ENDPOINT", raising=False)
    monkeypatch.delenv("AXON_DEBUG", raising=False)
    return home
