"""NFS URL -> local mount lookup, on a recorded mount table (no NFS server runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from axon.errors import ConfigError, TargetUnreachableError
from axon.mounts import find_nfs_mount, parse_mountinfo, parse_nfs_url, resolve_location

# Recorded from a Debian host with two NFS mounts (one nested export), plus the usual noise.
MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
25 22 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 0:35 / /mnt/mlos-repo rw,relatime shared:20 - nfs4 mlos-repo:/models rw,vers=4.2,addr=10.0.0.5
41 22 0:36 / /mnt/deep rw,relatime shared:21 - nfs4 mlos-repo:/models/tenant-a rw,vers=4.2
42 22 0:37 / /mnt/with\040space rw,relatime shared:22 - nfs 10.0.0.9:/export rw,vers=3
43 22 0:38 / /srv/v6 rw,relatime shared:23 - nfs4 [fd00::1]:/m rw,vers=4.1
44 22 0:39 / /mnt/not-nfs rw,relatime - cifs //mlos-repo/models rw
"""


@pytest.fixture
def table() -> list:
    return parse_mountinfo(MOUNTINFO)


def test_parse_mountinfo_fields(table: list) -> None:
    assert len(table) == 7
    nfs = table[2]
    assert (nfs.mount_point, nfs.fstype, nfs.source) == (
        Path("/mnt/mlos-repo"),
        "nfs4",
        "mlos-repo:/models",
    )
    assert table[4].mount_point == Path("/mnt/with space")  # \040 unescaped


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nfs://mlos-repo/models", "/mnt/mlos-repo"),
        ("nfs://mlos-repo/models/prod", "/mnt/mlos-repo/prod"),
        ("nfs://MLOS-REPO/models/", "/mnt/mlos-repo"),
        ("nfs://mlos-repo/models/tenant-a/x", "/mnt/deep/x"),  # longest export wins
        ("nfs://10.0.0.9/export/m", "/mnt/with space/m"),
        ("nfs://[fd00::1]/m", "/srv/v6"),
    ],
)
def test_find_mount(table: list, url: str, expected: str) -> None:
    assert find_nfs_mount(url, table) == Path(expected)


@pytest.mark.parametrize(
    "url", ["nfs://other/models", "nfs://mlos-repo/modelsX", "nfs://mlos-repo/", "nfs://x/y"]
)
def test_not_mounted(table: list, url: str) -> None:
    assert find_nfs_mount(url, table) is None


def test_not_mounted_error_says_how(table: list) -> None:
    with pytest.raises(TargetUnreachableError) as info:
        resolve_location("nfs://nas/exports/models", mounts=table, target="shared")
    text = str(info.value)
    assert "not mounted" in text
    assert "mount -t nfs nas:/exports/models" in text
    assert "mount_path" in text
    assert info.value.target == "shared"


def test_mount_path_wins(tmp_path: Path, table: list) -> None:
    assert resolve_location("nfs://nas/x", mount_path=str(tmp_path), mounts=table) == tmp_path
    with pytest.raises(TargetUnreachableError, match="mount_path"):
        resolve_location("nfs://nas/x", mount_path=str(tmp_path / "nope"), mounts=table)


def test_mounted_dir_must_exist(table: list) -> None:
    # The table says it is mounted, but on this machine the directory is not there.
    with pytest.raises(TargetUnreachableError, match="not a directory"):
        resolve_location("nfs://mlos-repo/models", mounts=table)


def test_plain_paths(tmp_path: Path) -> None:
    assert resolve_location(str(tmp_path)) == tmp_path
    assert resolve_location(tmp_path.as_uri()) == tmp_path
    with pytest.raises(TargetUnreachableError, match="does not exist"):
        resolve_location(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not absolute"):
        resolve_location("relative/dir")


def test_bad_nfs_urls() -> None:
    with pytest.raises(ConfigError):
        parse_nfs_url("nfs:///no-host")
    with pytest.raises(ConfigError):
        parse_nfs_url("nfs://h/a/../b")
    assert parse_nfs_url("nfs://Repo/a//b/") == ("repo", "/a/b")


def test_reads_this_machines_table() -> None:
    from axon.mounts import read_mountinfo

    root = [m for m in read_mountinfo() if m.mount_point == Path("/")]
    assert root, "the real mount table has a root mount"
