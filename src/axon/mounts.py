"""Where a network filesystem is mounted here: ``nfs://server/export/path`` -> local directory.

axon writes to NFS (and any shared filesystem) through its local mount, with the same
stage -> fsync -> rename protocol as a local directory, so an instance scanning the share
sees the old version or the new one, complete. This module only finds the mount:

* a ``mount_path`` configured for the target wins (it must exist and be a directory);
* otherwise the mount table (``/proc/self/mountinfo``) is searched for an ``nfs``/``nfs4``
  mount whose source is ``server:/export`` with ``/export`` a prefix of the URL's path
  (the longest such export wins); the rest of the path is appended to its mount point.

The server name is matched as written in the mount table (no DNS lookup): use the same name
in the URL, or set ``mount_path``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from axon.errors import ConfigError, TargetUnreachableError

MOUNTINFO = Path("/proc/self/mountinfo")
NFS_TYPES = ("nfs", "nfs4")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo`` (the fields we use)."""

    mount_point: Path
    fstype: str
    source: str  # "server:/export" for NFS
    root: str  # the directory of the filesystem mounted at mount_point
    options: str


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash as ``\\040`` etc."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text; malformed lines are skipped (the kernel never writes them)."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 3:
            continue
        entries.append(
            MountEntry(
                mount_point=Path(_unescape(fields[4])),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                root=_unescape(fields[3]),
                options=fields[5],
            )
        )
    return entries


def read_mountinfo(path: Path = MOUNTINFO) -> list[MountEntry]:
    try:
        return parse_mountinfo(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def parse_nfs_url(url: str) -> tuple[str, str]:
    """``nfs://server/export/path`` -> ``("server", "/export/path")``."""
    parsed = urlparse(url)
    if parsed.scheme != "nfs" or not parsed.hostname:
        raise ConfigError(
            f"not an NFS URL: {url!r}", hint="use nfs://server/export/path, e.g. nfs://repo/models"
        )
    path = str(PurePosixPath("/" + unquote(parsed.path).strip("/")))
    if ".." in PurePosixPath(path).parts:
        raise ConfigError(f"NFS URL {url!r} contains '..'", hint="use the export path as is")
    return parsed.hostname.lower(), path


def _nfs_source(source: str) -> tuple[str, str] | None:
    """``server:/export`` or ``[v6addr]:/export`` -> (host, export)."""
    host, sep, export = source.rpartition(":")
    if not sep or not export.startswith("/"):
        return None
    return host.strip("[]").lower(), str(PurePosixPath(export))


def find_nfs_mount(url: str, mounts: list[MountEntry]) -> Path | None:
    """The local directory for ``url`` from ``mounts``, or None when it is not mounted."""
    host, path = parse_nfs_url(url)
    best: tuple[int, Path] | None = None
    for m in mounts:
        if not m.fstype.startswith(NFS_TYPES):
            continue
        src = _nfs_source(m.source)
        if src is None or src[0] != host:
            continue
        export = src[1]
        if path != export and not path.startswith(export.rstrip("/") + "/"):
            continue
        rest = path[len(export) :].strip("/")
        local = m.mount_point / rest if rest else m.mount_point
        if best is None or len(export) > best[0]:
            best = (len(export), local)
    return best[1] if best else None


def resolve_location(
    location: str,
    *,
    mount_path: str | None = None,
    mounts: list[MountEntry] | None = None,
    target: str | None = None,
) -> Path:
    """The local directory to write for a shared-filesystem or NFS ``location``.

    ``location`` is an absolute path, a ``file://`` URL or an ``nfs://`` URL. Raises
    :class:`TargetUnreachableError` when the storage is not mounted / does not exist, saying
    how to mount it or set ``mount_path``.
    """
    name = target or location
    if mount_path:
        local = Path(mount_path).expanduser()
        _require_dir(local, name, f"the configured mount_path {local} does not exist", location)
        return local
    if location.startswith("nfs://"):
        found = find_nfs_mount(location, read_mountinfo() if mounts is None else mounts)
        if found is None:
            host, path = parse_nfs_url(location)
            raise TargetUnreachableError(
                f"{location} is not mounted on this machine",
                target=name,
                url=location,
                hint=f"mount it (sudo mount -t nfs {host}:{path} /mnt/mlos-models) or set "
                "mount_path: for this target in ~/.axon/config.yaml",
            )
        _require_dir(found, name, f"{found} (the mount of {location}) is not a directory", location)
        return found
    if location.startswith("file://"):
        location = unquote(urlparse(location).path)
    local = Path(location).expanduser()
    if not local.is_absolute():
        raise ConfigError(
            f"shared storage path {location!r} is not absolute",
            hint="use an absolute path such as /mnt/shared/mlos/models",
        )
    _require_dir(local, name, f"shared storage directory {local} does not exist", location)
    return local


def _require_dir(path: Path, target: str, message: str, location: str) -> None:
    if not path.is_dir():
        raise TargetUnreachableError(
            message,
            target=target,
            path=str(path),
            hint=f"create or mount it first (it should hold the models of {location})",
        )
