"""Which block devices hold a directory: where a tenant's disk I/O limit must apply.

blk-throttle (cgroup v1 `blkio.throttle.*`, v2 `io.max`) limits I/O per device and
only on a whole disk (the kernel refuses a partition), and a btrfs pool may span
several devices: each of them gets the tenant's limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from hoody.mountinfo import parse

__all__ = ["backing_devices"]


def backing_devices(
    path: Path, mountinfo: Path = Path("/proc/self/mountinfo"), sys: Path = Path("/sys")
) -> tuple[tuple[int, int], ...]:
    """(major, minor) of every whole disk under the filesystem that holds `path`,
    sorted; () when that filesystem sits on no block device (tmpfs, a network fs)."""
    source, fstype = _mount_source(Path(os.path.realpath(path)), mountinfo)
    try:
        rdev = os.stat(source).st_rdev if source.startswith("/dev/") else 0
    except OSError:
        rdev = 0
    if not rdev:
        return ()
    device = Path(os.path.realpath(sys / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"))
    devices = {device}
    if fstype == "btrfs":
        for members in (sys / "fs" / "btrfs").glob("*/devices"):
            names = {p.name for p in members.iterdir()}
            if device.name in names:
                devices |= {Path(os.path.realpath(members / n)) for n in names}
    found = set()
    for dev in devices:
        whole = dev.parent if (dev / "partition").exists() else dev
        try:
            major, minor = (whole / "dev").read_text().strip().split(":")
        except (OSError, ValueError):
            continue
        found.add((int(major), int(minor)))
    return tuple(sorted(found))


def _mount_source(path: Path, mountinfo: Path) -> tuple[str, str]:
    """(source, fstype) of the innermost mount containing `path` ("", "" if none)."""
    best, found = -1, ("", "")
    for mount in parse(mountinfo.read_text()):
        point = mount.target
        if (path == point or point in path.parents) and len(point.parts) > best:
            best, found = len(point.parts), (mount.source, mount.fstype)
    return found
