"""Undo for ``--atomic``: the previous version of a model on one instance, kept until every
instance of the cluster committed, and put back if one of them did not.

    api         POST /v1/models/{id}/rollback (mlos-core keeps one previous generation),
                or DELETE /models/{id} when the instance did not have the model before
    filesystem  the version dir hard-linked aside before the commit, renamed back after
    ssh         the same with ``cp -al`` / ``mv`` on the remote host

The names aside are hidden siblings drawn in :mod:`modelpkg.layout`, where every name on a
models root is: ``.<version>.rollback-<id>`` for the copy kept, ``.<version>.old-<id>`` for
the new version on its way out.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from axon.errors import AxonError, RemoteError
from axon.mlos_client import HEALTH_TIMEOUT, MlosClient
from axon.publish.notify import is_registered, notify_instance
from modelpkg.atomic import remove_tree, replace_dir
from modelpkg.layout import OLD_TAG, ROLLBACK_TAG, sibling

if TYPE_CHECKING:
    from axon.targets import InstanceTarget
    from modelpkg.refs import ModelRef


class Backup:
    """The previous version of a model on one instance, kept until every commit succeeded.

    ``unchanged`` (the instance already held exactly this model) means nothing to undo.
    """

    def __init__(self, target: InstanceTarget, ref: ModelRef) -> None:
        self.target, self.ref = target, ref
        self.method = target.access_method
        self.saved: str | None = None  # where the previous version was linked aside
        self.existed = False
        self.unchanged = False

    def _final(self) -> PurePosixPath:
        if not self.target.storage_path:
            raise RemoteError(
                "cannot keep the previous version aside: no storage_path",
                target=self.target.name,
                hint="set storage_path for this instance, or use access_method: api",
            )
        return PurePosixPath(self.target.storage_path) / self.ref.relpath

    def save(self, *, unchanged: bool = False) -> None:
        """Hard-link the current version dir aside (API instances keep it server-side)."""
        self.unchanged = unchanged
        if unchanged:
            return
        if self.method == "api":
            try:
                self.existed = _api_has(self.target, self.ref)
            except AxonError:  # cannot ask: its commit will fail too; undo = server rollback
                self.existed = True
            return
        final = self._final()
        aside = final.parent / sibling(final.name, ROLLBACK_TAG, _unique())
        if self.method == "ssh":
            self.existed = _ssh(self.target, f"test -d {_q(final)}", check=False) == 0
            if self.existed:
                _ssh(self.target, f"cp -al {_q(final)} {_q(aside)}")
        else:
            self.existed = os.path.isdir(final)
            if self.existed:
                _link_tree(Path(final), Path(aside))
        self.saved = str(aside) if self.existed else None

    def restore(self) -> None:
        """Put the previous version back (or remove the new one if there was none)."""
        if self.unchanged:
            return
        if self.method == "api":
            _api_undo(self.target, self.ref, rollback=self.existed)
            return
        final = self._final()
        if self.method == "ssh":
            tmp = final.parent / sibling(final.name, OLD_TAG, _unique())
            cmd = f"if [ -d {_q(final)} ]; then mv {_q(final)} {_q(tmp)}; fi"
            if self.saved:
                cmd += f" && mv {_q(self.saved)} {_q(final)}"
            _ssh(self.target, cmd + f" && rm -rf {_q(tmp)}")
        elif self.saved:
            replace_dir(Path(self.saved), Path(final))
        else:
            remove_tree(Path(final))
        self.saved = None
        if self.existed:  # the instance may have cached the new manifest: tell it again
            notify_instance(self.target, self.ref, str(final))

    def drop(self) -> None:
        """Every commit succeeded (or was undone): the copy aside is no longer needed."""
        if self.saved is None:
            return
        if self.method == "ssh":
            _ssh(self.target, f"rm -rf {_q(self.saved)}", check=False)
        else:
            remove_tree(Path(self.saved))
        self.saved = None


def _unique() -> str:
    """The ``<id>`` of a sibling name: unique enough that two switches never collide."""
    return uuid.uuid4().hex[:12]


def _q(path: PurePosixPath | str) -> str:
    return shlex.quote(str(path))


def _link_tree(src: Path, dst: Path) -> None:
    """``cp -al``: the same files under a second name, no bytes copied."""
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            os.link(Path(dirpath) / name, dst / rel / name)


def _ssh(target: InstanceTarget, command: str, *, check: bool = True) -> int:
    """Run one shell command on the instance's SSH host (key auth only, no prompts)."""
    host = target.ssh_host or "localhost"
    argv = ["ssh", "-o", "BatchMode=yes", "-p", str(target.ssh_port or 22)]
    if target.ssh_key:
        argv += ["-i", str(target.ssh_key)]
    for opt in target.ssh_options or []:
        argv += ["-o", opt]
    argv += [f"{target.ssh_user}@{host}" if target.ssh_user else host, command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=target.timeout or 30.0)
    if check and proc.returncode != 0:
        raise RemoteError(
            f"remote command failed ({proc.returncode}): {command}: {proc.stderr.strip()}",
            target=target.name,
            hint="check the SSH access and free space on the instance",
        )
    return proc.returncode


def _api_has(target: InstanceTarget, ref: ModelRef) -> bool:
    return is_registered(target, ref, timeout=HEALTH_TIMEOUT)


def _api_undo(target: InstanceTarget, ref: ModelRef, *, rollback: bool) -> None:
    """``POST /v1/models/{id}/rollback`` (the server kept the replaced generation), or
    ``DELETE /models/{id}`` when the instance did not have the model before."""
    with MlosClient.for_target(target, HEALTH_TIMEOUT * 2) as client:
        if rollback:
            client.rollback(ref)
        else:
            client.delete_model(ref)
