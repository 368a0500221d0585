"""Running the real upstream Go ``axon`` next to ours, on the same files.

Where the binary is (first found wins; the reason for a skip names every place tried):

1. ``$AXON_UPSTREAM_BIN``, when set (then it must be there: a wrong path is not skipped
   past silently);
2. ``<repo>/../shared/upstream-axon/axon`` (a work tree beside the shared directory);
3. ``/work/shared/upstream-axon/axon`` (a clone elsewhere, e.g. in /tmp, on this machine).

Locally a test that needs it skips, saying why; under ``CI=true`` a missing binary fails
(:func:`tests.fixtures.common.require`): CI sets ``AXON_UPSTREAM_BIN`` or checks out beside
the shared directory.

The binary keeps everything under ``$HOME/.axon`` (config, cache); the suite gives it a
``HOME`` whose ``.axon`` is the test's ``AXON_HOME``, so both tools share one cache and one
config file. Its ``publish`` writes ``/var/lib/mlos/models``: :meth:`Upstream.run_bound` runs
it in a private mount namespace (``unshare --mount --map-root-user``) where a temporary
directory is bound at that path; the machine's own ``/var/lib`` is never written.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.common import IN_CI, require
from tests.helpers import CliRun

ENV_VAR = "AXON_UPSTREAM_BIN"
REPO = Path(__file__).resolve().parents[2]
CANDIDATES = (
    REPO.parent / "shared" / "upstream-axon" / "axon",
    Path("/work/shared/upstream-axon/axon"),
)
#: where the binary writes published models, and where its publish/register look
MODELS_DIR = "/var/lib/mlos/models"


def find_upstream() -> tuple[Path | None, str]:
    """(the binary, None when absent; why not, naming where it was looked for)."""
    named = os.environ.get(ENV_VAR)
    if named:
        path = Path(named)
        if path.is_file() and os.access(path, os.X_OK):
            return path, ""
        return None, f"${ENV_VAR}={named} is not an executable file"
    for path in CANDIDATES:
        if path.is_file() and os.access(path, os.X_OK):
            return path, ""
    tried = ", ".join(str(p) for p in CANDIDATES)
    return None, (
        f"the upstream Go axon binary is not here (looked at ${ENV_VAR}, {tried}); "
        f"set {ENV_VAR}=/path/to/axon to run the interoperability suite"
    )


def require_upstream() -> Path:
    """The binary; skips (fails under CI=true) with the reason when it is absent."""
    path, why = find_upstream()
    require(path is not None, why)
    assert path is not None
    return path


_NAMESPACE_PROBE: tuple[bool, str] | None = None


def mount_namespaces() -> tuple[bool, str]:
    """Whether this machine lets us make a private mount namespace (and why not)."""
    global _NAMESPACE_PROBE
    if _NAMESPACE_PROBE is None:
        unshare = shutil.which("unshare")
        if unshare is None:
            _NAMESPACE_PROBE = (False, "unshare is not installed (util-linux)")
        else:
            probe = subprocess.run(
                [unshare, "--mount", "--map-root-user", "--propagation", "private", "true"],
                capture_output=True,
                text=True,
                check=False,
            )
            why = probe.stderr.strip() or f"exit {probe.returncode}"
            _NAMESPACE_PROBE = (probe.returncode == 0, f"unshare --mount refused here: {why}")
    return _NAMESPACE_PROBE


def require_mount_namespace() -> None:
    ok, why = mount_namespaces()
    if not ok and not IN_CI:
        why += " (the upstream publish writes /var/lib/mlos/models; it runs in a private mount "
        why += "namespace with a temporary directory bound there)"
    require(ok, why)


def bound_command(models: Path, argv: list[str]) -> list[str]:
    """``argv`` run in a new private mount namespace where ``models`` is bound at
    :data:`MODELS_DIR`. Where ``/var/lib/mlos/models`` does not exist, a small tmpfs is
    mounted on the deepest missing parent's existing parent, inside the namespace only."""
    missing = Path(MODELS_DIR)
    while not missing.parent.exists():
        missing = missing.parent
    script = "set -e\n"
    if not Path(MODELS_DIR).is_dir():
        over = shlex.quote(str(missing.parent))
        script += f"mount -t tmpfs -o size=1m,mode=755 axon-interop {over}\n"
        script += f"mkdir -p {MODELS_DIR}\n"
    script += f"mount --bind {shlex.quote(str(models))} {MODELS_DIR}\n"
    script += 'exec "$@"\n'
    unshare = shutil.which("unshare") or "unshare"
    return [
        unshare,
        "--mount",
        "--map-root-user",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        *argv,
    ]


@dataclass
class Upstream:
    """The upstream binary with the test's HOME (its ``~/.axon`` is our ``AXON_HOME``)."""

    binary: Path
    home: Path
    tmp: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MLOS_CORE_ENDPOINT",)}
        env.update({"HOME": str(self.home), "TMPDIR": str(self.tmp), "NO_COLOR": "1"})
        env.update(extra or {})
        return env

    def command(self, *args: str) -> list[str]:
        return [str(self.binary), *args]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliRun:
        """``axon ARGS`` of upstream: exit code, stdout, stderr."""
        return self._run(self.command(*args), env, timeout)

    def run_bound(
        self, models: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> CliRun:
        """Like :meth:`run`, with ``models`` bound at /var/lib/mlos/models for it alone."""
        return self._run(bound_command(models, self.command(*args)), env, timeout)

    def _run(self, command: list[str], env: dict[str, str] | None, timeout: float) -> CliRun:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(env),
            check=False,
        )
        return CliRun(proc.returncode, proc.stdout, proc.stderr)
