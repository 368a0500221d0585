"""Publish to a models directory on another host over SSH, with the system OpenSSH client.

Serves instances whose ``access_method`` is ``ssh``. The remote side runs the same
staged-directory protocol as the filesystem transport (planned and translated by
:mod:`axon.transports.staged`): the stdlib-only :mod:`axon.transports.stagedir` is shipped as
``python3 -c <source> serve`` (the host needs Python >= 3.7, nothing else; see
:func:`_helper_source`) and answers JSON-line requests on the channel's stdin/stdout. So
remotely too: only missing files move, unchanged files are hard-linked from the current
version, a cut transfer resumes at its offset, every received byte is hashed on the remote
while it is written, and the new version appears with one ``renameat2(RENAME_EXCHANGE)``
(rename-aside + rename-in where unavailable: a window of microseconds where the path is
absent, never partial).

Connections: one ssh connection per transport, carrying one persistent remote helper for
every operation (status, each file's bytes, prepare, commit): one login, one Python start.
That ssh is also the ControlMaster (socket in a private temp dir), so other ssh calls to the
host share its connection, while our own bytes take no extra hop through a mux client. File
bytes go from the file into ssh's stdin with ``sendfile``. ``BatchMode=yes``: never a
password prompt. Keys come from the usual places and ``~/.ssh/config``, or ``ssh_key``. When
the user sets no cipher we prefer AES-GCM (hardware accelerated almost everywhere), falling
back to OpenSSH's defaults.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from axon.errors import (
    AuthenticationError,
    AxonError,
    RemoteError,
    TargetUnreachableError,
    TransportError,
    retryable,
)
from axon.transports import blobcopy, stagedir
from axon.transports.base import FileKey, Outgoing
from axon.transports.staged import StagedSession, StagedTransport, StagePlan, error_from_code
from modelpkg import layout
from modelpkg.layout import DEFAULT_MODELS_DIR
from modelpkg.manifest import FileEntry
from modelpkg.progress import OnBytes, ignore_bytes
from modelpkg.refs import ModelRef

if TYPE_CHECKING:
    from typing import Self

    from axon.targets import InstanceTarget

#: files per ``receive_many`` request, and bytes: a cut stream re-sends at most the file it
#: was cut in; a batch only bounds how much one request line and answer hold
BATCH_FILES = 1000
BATCH_BYTES = 1024 * 1024 * 1024
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
SEND_CHUNK = 4 * 1024 * 1024


def _helper_source() -> str:
    """What the remote ``python3 -c`` runs: the layout names, blobcopy, then stagedir (which
    skips importing the first two when their names are already defined), as one program.

    This is why those three modules are standard library only, Python >= 3.7, and import
    nothing of this project at run time: the host has a ``python3`` and nothing of ours."""
    future = "from __future__ import annotations\n"
    parts = [
        Path(str(m.__file__)).read_text(encoding="utf-8") for m in (layout, blobcopy, stagedir)
    ]
    return parts[0] + "".join("\n" + p.replace(future, "", 1) for p in parts[1:])


_HELPER = _helper_source()

# getaddrinfo's words for a name that does not exist (EAI_NONAME, EAI_NODATA; glibc, musl, BSD)
_NO_SUCH_NAME = (
    "name or service not known",
    "no address associated with hostname",
    "nodename nor servname provided",
    "name does not resolve",
)

_UNREACHABLE = (
    "connection refused",
    "connection timed out",
    "operation timed out",
    "no route to host",
    "could not resolve hostname",
    "network is unreachable",
    "connection closed",
    "connection reset",
    "kex_exchange_identification",
    "broken pipe",
    "timed out",
)


def _shared_control_dir() -> str | None:
    """The directory of kept SSH connections: one per user, private (0700, ours, not a
    link); None when it cannot be made safe (the connection is then not kept)."""
    path = os.path.join(tempfile.gettempdir(), f"axon-ssh-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # someone else's, a symlink, or readable by others: never trust it
    return path


class SshTransport(StagedTransport):
    """``root`` on ``host``, reached with the system ``ssh`` client."""

    method = "ssh"

    def __init__(
        self,
        host: str,
        *,
        user: str | None = None,
        port: int | None = 22,
        key: str | os.PathLike[str] | None = None,
        options: Sequence[str] = (),
        root: str,
        dir_mode: int | None = None,
        file_mode: int | None = None,
        timeout: float = 30.0,
        name: str | None = None,
        python: str = "python3",
        persist: float | None = None,
    ) -> None:
        self.host = host
        self.user = user
        self.port = int(port) if port else None  # None: ~/.ssh/config decides (or 22)
        self.key = os.fspath(key) if key else None
        self.options = list(options)
        self.root = root.rstrip("/") or "/"
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self.timeout = timeout
        self.python = python
        self.name = name or self.where
        self._ctl_dir: str | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._errfile: IO[bytes] | None = None
        self._early = False  # the helper was started ahead of its first request
        # seconds the connection outlives this command (OpenSSH ControlPersist), so the next
        # command to the same host, user, port and key skips the login; None/0: it does not
        self.persist = int(persist) if persist and persist >= 1 else None

    @classmethod
    def from_target(cls, target: InstanceTarget) -> Self:
        host = target.ssh_host
        if not host:
            from urllib.parse import urlsplit

            host = urlsplit(target.endpoint).hostname or target.name
        return cls(
            host,
            user=target.ssh_user,
            port=target.ssh_port,
            key=target.ssh_key,
            options=list(target.ssh_options or ()),
            root=target.storage_path or DEFAULT_MODELS_DIR,
            dir_mode=target.dir_mode,
            file_mode=target.file_mode,
            timeout=target.timeout,
            name=target.name,
            persist=target.ssh_persist,
        )

    # ---- description ---------------------------------------------------------------------
    @property
    def where(self) -> str:
        """``user@host:port`` for messages."""
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port or 22}"

    def describe(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"ssh://{user}{self.host}:{self.port or 22}{self.root}"

    def instance_path(self, ref: ModelRef) -> str | None:
        return f"{self.root.rstrip('/')}/{ref.relpath}"

    # ---- ssh plumbing --------------------------------------------------------------------
    def _user_sets(self, key: str) -> bool:
        return any(key.lower() in opt.lower() for opt in self.options)

    def ssh_args(self) -> list[str]:
        """The ``ssh`` command line up to (and including) the host, without the command.

        ssh keeps the *first* value it sees for an option, so the user's ``ssh_options``
        come before our defaults (they win), and only ``BatchMode=yes`` before them (we must
        never hang on a password prompt). ``~/.ssh/config`` still fills in the rest.
        """
        args = ["ssh", "-o", "BatchMode=yes"]
        for opt in self.options:
            args += shlex.split(opt) if opt.startswith("-") else ["-o", opt]
        if self.port is not None:
            args += ["-p", str(self.port)]
        if self.key:
            args += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.user:
            args += ["-l", self.user]
        if self._ctl_dir:
            args += ["-o", f"ControlPath={self._ctl_path()}"]
        args += ["-o", f"ConnectTimeout={max(1, int(self.timeout))}"]
        args += ["-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]
        if not self._user_sets("ciphers") and not any(o.startswith("-c") for o in self.options):
            args += ["-o", f"Ciphers={CIPHERS}"]
        return [*args, "-o", "Compression=no", self.host]

    def connect_early(self) -> None:
        """Log in and start the remote helper now, without waiting for it."""
        if self._helper is None:
            with contextlib.suppress(AxonError):
                self._helper_proc()
                self._early = True

    def _ctl_path(self) -> str:
        """The control socket. Kept connections are named by everything that authenticates
        them (user, host, port, key, options): another key never rides on this login."""
        if not self.persist:
            return f"{self._ctl_dir}/cm-%C"
        who = json.dumps([self.user, self.host, self.port, self.key, self.options])
        return f"{self._ctl_dir}/{hashlib.sha256(who.encode()).hexdigest()[:20]}"

    def close(self) -> None:
        if self._helper is not None and self._early:
            self._helper.kill()  # never used (the publish stopped before): no goodbye
        self._early = False
        # idle between requests: EOF ends the helper cleanly on its own, and nothing it does
        # from here on matters to us, so do not wait for the round trip
        self._drop_helper(wait=False)
        self._forget_master(stale=False)

    def _forget_master(self, stale: bool = True) -> None:
        """Drop the control socket: after a cut connection it may lead to a dead master.

        A kept connection (``persist``) survives a normal close; after a failure
        (``stale``) it is told to exit, so the next attempt logs in afresh.
        """
        if not self._ctl_dir:
            return
        if self.persist:
            if stale:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(
                        [*self.ssh_args()[:-1], "-O", "exit", self.host],
                        stdin=subprocess.DEVNULL, capture_output=True, timeout=5,
                    )  # fmt: skip
                with contextlib.suppress(OSError):
                    os.unlink(self._ctl_path())
        else:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
        self._ctl_dir = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ---- the remote helper: one ssh channel, one Python, many requests --------------------
    def _helper_proc(self) -> subprocess.Popen[bytes]:
        if self._helper is not None and self._helper.poll() is None:
            return self._helper
        self._drop_helper()
        if self._ctl_dir is None:
            self._ctl_dir = _shared_control_dir() if self.persist else None
            if self._ctl_dir is None:
                self._ctl_dir = tempfile.mkdtemp(prefix="axon-ssh-")
        # The helper's own ssh is the ControlMaster: its channel (every byte we send) goes
        # straight to the TCP connection, no extra hop through a mux client; any other ssh
        # call to this host while it lives shares that connection. With ``persist`` a kept
        # connection from an earlier command is used instead (a mux client: no login).
        keep = f"{self.persist}s" if self.persist else "no"
        master = ["-o", "ControlMaster=auto", "-o", f"ControlPersist={keep}"]
        args = self.ssh_args()
        remote = f"{shlex.quote(self.python)} -c {shlex.quote(_HELPER)} serve"
        self._errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _drop_helper
        try:
            self._helper = subprocess.Popen(
                [args[0], *master, *args[1:], "--", remote],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errfile,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise TransportError(
                "the ssh client is not installed",
                target=self.name,
                hint="install OpenSSH (apt-get install openssh-client)",
            ) from exc
        return self._helper

    def _drop_helper(self, wait: bool = True) -> tuple[int | None, str]:
        """Stop the helper (EOF first: it exits cleanly); its exit status and stderr.

        ``wait`` False: do not wait for it to exit (a thread reaps it; the status is None).
        """
        proc, self._helper = self._helper, None
        rc: int | None = None
        if proc is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()  # type: ignore[union-attr]
            if not wait and proc.poll() is None:
                threading.Thread(target=proc.wait, name="axon-ssh-reaper", daemon=True).start()
            else:
                try:
                    rc = proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
            for stream in (proc.stdout,):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]
        stderr = ""
        if self._errfile is not None:
            with contextlib.suppress(OSError):
                self._errfile.seek(0)
                stderr = self._errfile.read().decode("utf-8", "replace")
                self._errfile.close()
            self._errfile = None
        return rc, stderr

    def request(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one request to the remote helper; its answer, or our error."""
        # a helper started early is used even if it died already: read_answer reports why
        early = self._helper if self._early else None
        proc = early or self._helper_proc()
        self._early = False
        line = json.dumps({"op": op, "params": params}).encode("utf-8") + b"\n"
        try:
            proc.stdin.write(line)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass  # it died: read_answer says why
        return self.read_answer()

    def read_answer(self) -> dict[str, Any]:
        proc = self._helper
        while proc is not None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            try:
                answer = json.loads(line)
            except ValueError:
                continue  # noise from a login script
            if not isinstance(answer, dict):
                continue
            if answer.get("ok"):
                return answer
            raise error_from_code(
                str(answer.get("code")),
                str(answer.get("message")),
                answer.get("errno"),
                answer.get("path") or None,
                target=self.name,
                root=self.root,
                host=self.where,
            )
        rc, stderr = self._drop_helper()
        raise self._died(rc, stderr)

    def _died(self, rc: int | None, stderr: str) -> AxonError:
        if rc == 255:
            self._forget_master()
            return self._ssh_failure(stderr)
        if rc is not None and rc < 0:  # our ssh was killed: the connection is gone
            self._forget_master()
            return self._unreachable(f"the ssh client was killed by signal {-rc}")
        if rc == 127 or "not found" in stderr:
            missing = RemoteError(
                f"{self.python} not found on {self.where}",
                target=self.name,
                hint="install python3 (>= 3.7) on the host, or publish through the API",
            )
            return retryable(missing, False)
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {rc}"]
        return RemoteError(f"remote helper failed on {self.where}: {tail[0]}", target=self.name)

    def _unreachable(self, why: str) -> TargetUnreachableError:
        return TargetUnreachableError(
            f"cannot reach {self.where} over ssh: {why}",
            target=self.name,
            hint=f"is sshd running there? check ssh_host/ssh_port; try: ssh -p {self.port or 22} "
            f"{self.user + '@' if self.user else ''}{self.host} true",
        )

    def _ssh_failure(self, stderr: str) -> AxonError:
        text = stderr.strip()
        low = text.lower()
        last = text.splitlines()[-1] if text else "ssh exited with status 255"
        if "permission denied" in low:
            return AuthenticationError(
                f"{self.where} refused the ssh key ({last})",
                target=self.name,
                hint="check ssh_user and ssh_key in ~/.axon/config.yaml, or that the public "
                "key is in the user's authorized_keys",
            )
        if "host key verification failed" in low or "remote host identification" in low:
            return AuthenticationError(
                f"host key of {self.where} is unknown or changed",
                target=self.name,
                hint=f"verify it, then: ssh-keyscan -p {self.port or 22} {self.host} >> "
                "~/.ssh/known_hosts",
            )
        if ("no such file" in low or "not accessible" in low) and self.key:
            return AuthenticationError(
                f"cannot read ssh key {self.key}", target=self.name, hint="fix ssh_key"
            )
        if "could not resolve hostname" in low and any(m in low for m in _NO_SUCH_NAME):
            # The name does not exist (not a resolver that is down, which ssh words as
            # "Temporary failure in name resolution"): another attempt cannot help.
            gone = TargetUnreachableError(
                f"cannot reach {self.where} over ssh: the host name {self.host!r} does not "
                f"resolve ({last})",
                target=self.name,
                hint="check the host name (ssh_host, or the endpoint's host) of this target: "
                "axon targets show",
            )
            return retryable(gone, False)
        if any(marker in low for marker in _UNREACHABLE):
            return self._unreachable(last)
        return TargetUnreachableError(f"ssh to {self.where} failed: {last}", target=self.name)

    # ---- the Transport contract -------------------------------------------------------------
    def _params(self, ref: ModelRef, digest: str = "") -> dict[str, Any]:
        return {"root": self.root, "rel": str(ref.relpath), "digest": digest}

    def _status(self, ref: ModelRef, digest: str = "") -> dict[str, Any]:
        return self.request("status", self._params(ref, digest))

    def _session(self, ref: ModelRef, plan: StagePlan) -> SshSession:
        return SshSession(self, ref, plan)


class SshSession(StagedSession[SshTransport]):
    """One publish of one model to one SSH host."""

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {**self.t._params(self.ref, self.plan.digest), **extra}

    def _op(self, op: str, **params: Any) -> dict[str, Any]:
        return self.t.request(op, self._params(**params))

    def _location(self) -> tuple[str, str | None]:
        return f"{self.t.describe()}/{self.ref.relpath}", self.t.instance_path(self.ref)

    def send(
        self,
        entry: FileEntry,
        source: Path,
        on_bytes: OnBytes = ignore_bytes,
        *,
        verified: FileKey | None = None,
    ) -> None:
        blob = self._blob(entry)
        offset = int(blob["offset"])
        params = self._params(
            blob=blob, dir_mode=self.dir_mode, file_mode=self.file_mode, durable=False
        )
        with open(source, "rb") as src:
            try:
                # answers "ready" once it can take the bytes; on a refusal the remote helper
                # exits, so it is dropped below like after any other failure
                self.t.request("receive", params)
                proc = self.t._helper
                assert proc is not None and proc.stdin is not None
                sent = _stream(src, proc.stdin, offset, entry.size - offset, on_bytes)
                answer = self.t.read_answer() if sent else self._short(entry, offset)
            except BaseException:
                self.t._drop_helper()  # the remote keeps what it got: the next open resumes
                raise
        if not answer.get("complete"):
            self.t._drop_helper()
            self.plan.offsets[entry.sha256] = int(answer.get("offset", 0))
            raise TargetUnreachableError(
                f"transfer of {entry.path} to {self.t.where} stopped at byte "
                f"{answer.get('offset')}",
                target=self.t.name,
                hint="publish again: it resumes from there",
            )
        self._done(entry)

    def send_many(
        self,
        items: Sequence[Outgoing],
        on_bytes: OnBytes = ignore_bytes,
        on_file: Callable[[FileEntry], None] = lambda entry: None,
    ) -> None:
        """Many files through one stream: one request for up to :data:`BATCH_FILES` files
        (or :data:`BATCH_BYTES`), their bytes back to back, one answer; no round trip per
        file. The host verifies and places each file as its last byte arrives, so a cut
        stream loses nothing that arrived: the next session resumes after it."""
        batch: list[Outgoing] = []
        size = 0
        for item in items:
            batch.append(item)
            size += item.entry.size - self.offset(item.entry)
            if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
                self._send_batch(batch, on_bytes, on_file)
                batch, size = [], 0
        if batch:
            self._send_batch(batch, on_bytes, on_file)

    def _send_batch(
        self,
        items: list[Outgoing],
        on_bytes: OnBytes,
        on_file: Callable[[FileEntry], None],
    ) -> None:
        blobs = [self._blob(item.entry) for item in items]
        params = self._params(blobs=blobs, dir_mode=self.dir_mode, file_mode=self.file_mode)
        try:
            # "ready" once it can take the bytes; on a refusal the remote helper exits, so
            # it is dropped below like after any other failure
            self.t.request("receive_many", params)
            proc = self.t._helper
            assert proc is not None and proc.stdin is not None
            for item, blob in zip(items, blobs, strict=True):
                offset = int(blob["offset"])
                with open(item.source, "rb") as src:
                    if not _stream(src, proc.stdin, offset, item.entry.size - offset, on_bytes):
                        self._short(item.entry, offset)
            answer = self.t.read_answer()
        except BaseException:
            self.t._drop_helper()  # the remote keeps what it got: the next open resumes
            raise
        by_sha = {item.entry.sha256: item.entry for item in items}
        for sha in _strings(answer.get("done")):
            if (entry := by_sha.get(sha)) is not None and sha not in self._sent:
                self._done(entry)
                on_file(entry)
        if not answer.get("complete"):
            self.t._drop_helper()
            cut = by_sha.get(str(answer.get("sha256")))
            at = _int(answer.get("offset"))
            if cut is not None:
                self.plan.offsets[cut.sha256] = at
            raise TargetUnreachableError(
                f"transfer of {cut.path if cut else 'a file'} to {self.t.where} stopped at "
                f"byte {at}",
                target=self.t.name,
                hint="publish again: it resumes from there",
            )
        failed = answer.get("failed")
        if isinstance(failed, list) and failed and isinstance(failed[0], dict):
            first = failed[0]
            raise error_from_code(
                str(first.get("code")),
                f"{len(failed)} file(s) refused; the first: {first.get('message')}",
                _int(first.get("errno")) or None,
                str(first.get("path") or "") or None,
                target=self.t.name,
                root=self.t.root,
                host=self.t.where,
            )

    def _short(self, entry: FileEntry, offset: int) -> dict[str, Any]:
        raise TransportError(
            f"the cached file for {entry.path} is shorter than its manifest size {entry.size}",
            target=self.t.name,
            hint="the cache changed since it was hashed: run `axon verify` and publish again",
        )


def _strings(value: object) -> list[str]:
    """``value`` if it is a list of strings (an answer from the host: input too), else []."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return []


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _stream(src: IO[bytes], dst: IO[bytes], offset: int, count: int, on_bytes: OnBytes) -> bool:
    """Copy ``count`` bytes of ``src`` from ``offset`` into the pipe ``dst`` (zero-copy).

    False when ``src`` ended early; a remote that stops reading shows in its answer.
    """
    dst.flush()
    out_fd, in_fd = dst.fileno(), src.fileno()
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        fcntl.fcntl(out_fd, fcntl.F_SETPIPE_SZ, 1024 * 1024)
    pos, end = offset, offset + count
    try:
        while pos < end:
            n = os.sendfile(out_fd, in_fd, pos, min(SEND_CHUNK, end - pos))
            if n == 0:
                return False
            pos += n
            on_bytes(n)
    except BrokenPipeError:
        pass
    return True
