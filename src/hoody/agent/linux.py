"""Wire the real Linux drivers into a Node: btrfs, netns + nftables, runc/crun."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path

from hoody.agent.config import NodeConfig
from hoody.agent.engine import Node
from hoody.agent.host import tune_host
from hoody.agent.network.firewall import NftFirewall
from hoody.agent.network.linux import LinuxNetwork
from hoody.agent.pressure import MemoryPressure
from hoody.agent.runtime.lxcfs import Lxcfs
from hoody.agent.runtime.oci import OciRuntime
from hoody.agent.state import NodeStore
from hoody.agent.storage.btrfs import BtrfsStorage
from hoody.agent.storage.pool import destroy_pool, ensure_pool
from hoody.mountinfo import mounts
from hoody.private import private_dir, walk_through_dir
from hoody.syscalls import MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, mount, umount

__all__ = [
    "build_node",
    "destroy_node",
    "init_node",
    "make_private",
    "mount_run_dir",
    "release_run_dir",
    "remove_cgroup_parent",
]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def init_node(config: NodeConfig) -> None:
    """Create (or re-check) the node's pool, directories and agent token; save its config."""
    ensure_pool(config.pool, config.pool_image, config.pool_size)
    make_private(config)
    if not config.token_path.exists():
        fd = os.open(config.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    config.save()


def make_private(config: NodeConfig) -> None:
    """State, logs and pool for root alone (0700; files 0600); the run directories
    passable but not listable (0711), for tenants' roots on the way to their rootfs
    (see hoody.private). Also tightens a node made by an older hoody."""
    for path in (config.state_dir, config.log_dir, config.pool):
        private_dir(path)
    for path in (config.run_dir, config.node_run_dir):
        walk_through_dir(path)
    for file in (
        config.pool_image,
        config.token_path,
        config.db_path,
        config.state_dir / "node.json",
    ):
        if file is not None and file.exists():
            file.chmod(0o600)


def mount_run_dir(path: Path) -> None:
    """The node's run directory (runtime state, bundles, tenants' mount points) on a
    memory filesystem of its own, as /run is on most hosts, whatever the host's /run is.

    Every start creates and removes files there: on a journaled disk that costs each
    copy about 5 ms of CPU, and it is state that must not outlive a reboot anyway.
    Harmless when mounted already. On disk, what is there is stale (a reboot, an older
    agent's stopped node) and is cleared first, unless something is mounted under it:
    then an older agent's tenants run from it, and it stays as it is.
    """
    walk_through_dir(path)
    target = path.resolve()
    points = [m.target for m in mounts()]
    if target in points:
        return
    if any(p.is_relative_to(target) for p in points):
        log.warning("run directory %s is on disk and in use by running tenants; it stays", path)
        return
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0711")


def release_run_dir(path: Path) -> None:
    """Unmount and remove the node's run directory with whatever is still in it."""
    while _mounted_at(path):
        umount(path, MNT_DETACH)
    shutil.rmtree(path, ignore_errors=True)


def _mounted_at(path: Path) -> bool:
    target = path.resolve()
    return any(m.target == target for m in mounts())


def build_node(config: NodeConfig) -> Node:
    """A Node on this host's real drivers, the host tuned for many tenants
    (`tune_host`). The pool must exist (`init_node`)."""
    ensure_pool(config.pool, config.pool_image, config.pool_size)
    make_private(config)
    mount_run_dir(config.node_run_dir)
    tune_host()
    return _node(config)


def _node(config: NodeConfig) -> Node:
    """A Node on the real drivers, without preparing the host for it."""
    run = config.node_run_dir
    return Node(
        config=config,
        store=NodeStore(config.db_path),
        storage=BtrfsStorage(config.pool, run / "tenants"),
        network=LinuxNetwork(config.network),
        firewall=NftFirewall(config.network),
        runtime=OciRuntime(
            root=run / "runc",
            bundle_dir=run / "bundles",
            cgroup_parent=config.cgroup_parent,
            pool=config.pool,
            lxcfs=Lxcfs(run / "lxcfs"),
        ),
        pressure=MemoryPressure(config.pressure_pct, config.pressure_seconds),
    )


def destroy_node(config: NodeConfig) -> int:
    """Remove the node from this host: every tenant and template, its network, firewall
    and lxcfs, its pool (a loop-file pool's image and loop device; a pool on a device of
    its own is emptied, not wiped), its cgroups and the files it keeps. The node's agent
    must be stopped first. Returns how many tenants were removed.

    What is not the node's stays: other files in its state directory (`hoody up` keeps
    its control plane there) and the host-wide settings `tune_host` made."""
    ensure_pool(config.pool, config.pool_image, config.pool_size)  # its tenants' files
    node = _node(config)
    try:
        tenants = len(node.store.tenants())
        node.teardown_all()
    finally:
        node.store.close()
    destroy_pool(config.pool, config.pool_image)
    remove_cgroup_parent(config.cgroup_parent)
    release_run_dir(config.node_run_dir)
    shutil.rmtree(config.log_dir, ignore_errors=True)
    for name in ("node.json", config.token_path.name, config.db_path.name):
        for suffix in ("", "-wal", "-shm"):
            (config.state_dir / f"{name}{suffix}").unlink(missing_ok=True)
    for directory in (config.run_dir, config.state_dir):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when nothing else is in it
    return tenants


def remove_cgroup_parent(parent: str, root: Path = CGROUP_ROOT) -> None:
    """Remove the tenants' parent cgroup `parent` from every controller, with whatever
    empty tenant cgroups are left under it (a busy one stays: the kernel refuses)."""
    for controller in root.iterdir():
        path = controller / parent
        if path.is_dir():
            for child in sorted(path.glob("*/"), reverse=True):
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()
