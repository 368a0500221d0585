"""nginx as a baseline server: ``PUT`` to a file (``dav_methods PUT``), on a loopback port.

What a fast server does with an upload and nothing else: nginx reads the body into a temp
file (``client_body_temp_path``, on the same disk as the destination) and renames it into
place when complete; it neither hashes nor fsyncs. Everything is private: the config, the
prefix, the logs and the pid file live in a temp dir, the server listens on 127.0.0.1 on a
free port, runs as the current user in the foreground (``daemon off``, one process) and is
stopped by :meth:`Nginx.stop` (or leaving the ``with`` block).

The Debian package is ``nginx`` (``nginx-light`` on older releases); scripts/system-deps.sh
installs it. :func:`nginx_bin` is None when it is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from benchmarks.common import free_port

_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
{user}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_max_body_size 0;
    client_body_buffer_size {buffer};
    client_body_temp_path {temp};
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


def nginx_bin() -> str | None:
    """The nginx binary, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in _PATHS if os.access(p, os.X_OK)), None)


@dataclass
class Nginx:
    """A private nginx accepting ``PUT`` of files under ``root`` (see the module docstring)."""

    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    prefix: Path  # config, logs, pid
    temp: Path  # client_body_temp_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_nginx(root: Path, *, buffer: str = "1m", timeout: float = 15.0) -> Nginx:
    """Start nginx storing ``PUT /name`` as ``root/name``; its temp files go to a dir beside
    ``root`` (same filesystem, so the final rename is a rename). ``buffer``: its
    ``client_body_buffer_size`` (the size of its reads and writes). Raises RuntimeError with
    nginx's log when it does not come up."""
    binary = nginx_bin()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    temp = root.with_name(f"{root.name}.nginx-tmp")
    temp.mkdir(exist_ok=True)
    prefix = Path(tempfile.mkdtemp(prefix="axon-bench-nginx-"))
    port = free_port()
    user = ""
    if os.geteuid() == 0:  # else nginx would switch to "nobody", which cannot write root
        import grp
        import pwd

        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n"
    conf = prefix / "nginx.conf"
    conf.write_text(
        _CONF.format(user=user, prefix=prefix, temp=temp, root=root, port=port, buffer=buffer)
    )
    log = prefix / "stderr.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Nginx(proc, port, root, prefix, temp)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.05)
    logs = "".join(p.read_text(errors="replace") for p in (log, prefix / "error.log") if p.exists())
    server.stop()
    raise RuntimeError(f"nginx did not start: {logs.strip() or 'no output'}")
