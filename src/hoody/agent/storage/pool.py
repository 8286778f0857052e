"""The btrfs pool a node keeps templates and tenants in.

Either a path that already lives on btrfs (a real disk), or a sparse loop-file image
mounted at the path (a host whose root is ext4). Quotas are switched on when the pool
is set up: per-tenant disk limits and usage are btrfs qgroups.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from hoody.errors import CommandFailed, HostError, InvalidInput
from hoody.mountinfo import Mount, mounts
from hoody.proc import run

__all__ = [
    "Mount",
    "destroy_pool",
    "ensure_pool",
    "find_mount",
    "is_btrfs",
    "mounts",
    "parse_size",
    "quotas_enabled",
]

log = logging.getLogger(__name__)

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def find_mount(path: Path) -> Mount | None:
    """The mount `path` lives on (the last, innermost one covering it)."""
    real = path.resolve()
    best: Mount | None = None
    for mount in mounts():
        covers = real == mount.target or mount.target in real.parents
        # A later line at the same or a deeper target covers an earlier one.
        if covers and (best is None or len(mount.target.parts) >= len(best.target.parts)):
            best = mount
    return best


def is_btrfs(path: Path) -> bool:
    """True if `path` (or, when it does not exist yet, its nearest parent) is on btrfs."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    mount = find_mount(probe)
    return mount is not None and mount.fstype == "btrfs"


def parse_size(size: str) -> int:
    """Bytes in a size like "20G", "512M" or "1073741824" (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", size, re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise InvalidInput(f"pool size {size!r} is invalid; give a size like 20G or 512M")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def quotas_enabled(path: Path) -> bool:
    """True if btrfs quotas (qgroups) are on for the filesystem holding `path`."""
    result = run(["btrfs", "qgroup", "show", "--raw", str(path)], check=False)
    return result.returncode == 0


def ensure_pool(path: Path, image: Path | None, size: str) -> None:
    """Make `path` a usable btrfs pool with quotas on; safe to call again.

    If `path` is already on btrfs it is used as it is. Otherwise, with `image`, the
    sparse image file is created (truncate + mkfs.btrfs) when missing and mounted at
    `path` with `loop,noatime`. Raises HostError naming the fix when `path` is not on
    btrfs and there is no image, and InvalidInput for a malformed `size`.
    """
    if path.exists() and is_btrfs(path):
        path.mkdir(parents=True, exist_ok=True)
    elif image is None:
        if not is_btrfs(path):
            raise HostError(
                f"btrfs pool {path} is not on btrfs; run `hoody node init --size 20G` "
                "to create a loop-file pool"
            )
        path.mkdir(parents=True)
    else:
        path.mkdir(parents=True, exist_ok=True)
        if not image.exists():
            _make_image(image, parse_size(size))
        run(["mount", "-o", "loop,noatime", str(image), str(path)])
    if image is not None and image.exists():
        image.chmod(0o600)  # the whole pool, every tenant's files: root's alone
        _direct_io(image)
    if not quotas_enabled(path):
        # Cheap on a fresh pool; on a pool that already holds data the kernel starts
        # a background rescan, which is a one-time cost at `node init`.
        run(["btrfs", "quota", "enable", str(path)])


def _direct_io(image: Path) -> None:
    """Have the loop device behind a loop-file pool read and write its image with
    direct I/O. Buffered, every block btrfs writes is cached twice, once by btrfs and
    once as a page of the image file: 700-770 KiB of host page cache per tenant made
    (measured with fincore on the image), most of the 1.5 MiB per tenant that
    `hoody bench density` found outside the tenants' cgroups. Copies took as long
    either way. Best effort: a backing filesystem without O_DIRECT keeps buffering."""
    listed = run(["losetup", "-j", str(image)], check=False).stdout
    for line in listed.splitlines():
        device = line.split(":", 1)[0]
        if device.startswith("/dev/loop"):
            done = run(["losetup", "--direct-io=on", device], check=False)
            if done.returncode != 0:
                log.warning(
                    "loop device %s of %s keeps buffered I/O (%s): the pool's blocks are "
                    "cached twice",
                    device,
                    image,
                    done.stderr.strip(),
                )


def _make_image(image: Path, nbytes: int) -> None:
    """A sparse file formatted as btrfs; removed again if formatting fails."""
    image.parent.mkdir(parents=True, exist_ok=True)
    partial = image.with_name(image.name + ".partial")
    try:
        with open(partial, "wb") as f:
            f.truncate(nbytes)
        run(["mkfs.btrfs", "-q", "-L", "hoody", str(partial)])
        # Rename only once formatted, so a half-made image is never mounted later.
        partial.rename(image)
    finally:
        partial.unlink(missing_ok=True)


def destroy_pool(path: Path, image: Path | None) -> None:
    """Unmount the pool, detach its loop device and remove its image (tests, benchmarks).

    Harmless when already gone. A path that is not a loop-file pool (`image` None) is
    left alone. Raises HostError if the pool is still busy (a tenant still mounted).
    """
    if image is None:
        return
    mount = find_mount(path) if path.exists() else None
    if mount is not None and mount.target == path.resolve() and mount.fstype == "btrfs":
        try:
            run(["umount", str(path)])
        except CommandFailed as exc:
            raise HostError(
                f"btrfs pool {path} is busy and cannot be unmounted ({exc.message}); "
                "delete or unmount its tenants first"
            ) from exc
    if image.exists():
        # `mount -o loop` sets autoclear, so this normally finds nothing; a loop device
        # attached by hand (or left by a crash) would otherwise pin the image.
        listed = run(["losetup", "-j", str(image)], check=False).stdout
        for line in listed.splitlines():
            device = line.split(":", 1)[0]
            if device.startswith("/dev/loop"):
                run(["losetup", "-d", device], check=False)
        image.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
