"""A node's run directory is a memory filesystem of its own, whatever the host's /run
is: runtime state that costs each start less there and never outlives a reboot."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoody.agent.linux import mount_run_dir, release_run_dir
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode
from hoody.mountinfo import mounts
from hoody.syscalls import mount, umount


def _mounts_at(path: Path) -> list[str]:
    return [m.fstype for m in mounts() if m.target == path]


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    release_run_dir(tmp_path / "run" / "node")  # what a failed test left mounted


def test_the_run_dir_is_mounted_once_and_released_whole(folder: Path) -> None:
    run = folder / "run" / "node"
    mount_run_dir(run)
    mount_run_dir(run)  # an agent's restart: no second mount over the first
    assert _mounts_at(run) == ["tmpfs"]
    assert stat.S_IMODE(run.stat().st_mode) == 0o711  # passable by tenants' roots
    (run / "runc" / "t1").mkdir(parents=True)
    release_run_dir(run)
    assert _mounts_at(run) == [] and not run.exists()


def test_a_run_dir_in_use_on_disk_is_left_where_it_is(folder: Path) -> None:
    # An older agent's, whose tenants run from it (their rootfs mounts lie under it):
    # hiding it would orphan them.
    run = folder / "run" / "node"
    rootfs = run / "tenants" / "t1" / "rootfs"
    rootfs.mkdir(parents=True)
    mount("tmpfs", rootfs, "tmpfs", 0, None)
    try:
        mount_run_dir(run)
        assert _mounts_at(run) == [] and _mounts_at(rootfs) == ["tmpfs"]
    finally:
        umount(rootfs)


def test_stale_state_on_disk_is_cleared_before_the_mount(folder: Path) -> None:
    # What a reboot leaves on a host whose /run is a disk: nothing runs from it.
    run = folder / "run" / "node"
    (run / "runc" / "t1").mkdir(parents=True)
    (run / "runc" / "t1" / "state.json").write_text("{}")
    mount_run_dir(run)
    assert _mounts_at(run) == ["tmpfs"]
    release_run_dir(run)
    assert not run.exists(), "nothing stale was left under the mount"


def test_a_node_keeps_its_runtime_state_in_memory(scratch: ScratchNode) -> None:
    run = scratch.node.config.node_run_dir
    assert _mounts_at(run) == ["tmpfs"]
    rec = scratch.client.copy("demo-app")
    try:
        wait_http_ok(rec["url"] + "healthz")
        assert (run / "runc" / rec["id"] / "state.json").exists()
        assert os.statvfs(run / "bundles" / rec["id"]).f_fsid == os.statvfs(run).f_fsid
    finally:
        scratch.client.delete(rec["id"])
