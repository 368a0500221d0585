"""Shared test setup. Every test runs with AXON_HOME pointing at its own temp dir, so no
test ever reads or writes the developer's real ~/.axon."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def axon_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "axon-home"
    monkeypatch.setenv("AXON_HOME", str(home))
    monkeypatch.delenv("MLOS_CORE_ENDPOINT", raising=False)
    monkeypatch.delenv("AXON_DEBUG", raising=False)
    return home
