"""BtrfsStorage on its own scratch loop-file pool: the contract, then what only btrfs does.

The pool (image, mountpoint, loop device) is made once for the module and removed at
the end, and the test checks that nothing of it is left on the host.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoody.agent.storage import StorageMode, TemplateVersionRef
from hoody.agent.storage.btrfs import BtrfsStorage
from hoody.agent.storage.pool import destroy_pool, ensure_pool, find_mount, is_btrfs, mounts
from hoody.errors import HostError
from hoody.proc import run
from tests.contract.storage import SHIFT, Owner, StorageContract, populate


@pytest.fixture(scope="module")
def pool() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="hoody-storage-", dir="/var/tmp"))
    path, image = tmp / "pool", tmp / "pool.img"
    ensure_pool(path, image, "2G")
    try:
        yield path
    finally:
        destroy_pool(path, image)
        assert not any(m.target == path for m in mounts())
        assert str(image) not in run(["losetup", "-a"]).stdout
        assert not image.exists()
        tmp.rmdir()


@pytest.fixture
def storage(pool: Path, tmp_path: Path) -> Iterator[BtrfsStorage]:
    driver = BtrfsStorage(pool, tmp_path / "run")
    driver.ensure_ready()
    yield driver
    for tid in driver.list_tenants():
        driver.delete_tenant(tid)
    for ref in driver.list_template_versions():
        driver.delete_template_version(ref)
    assert driver.list_tenants() == []
    assert driver.list_template_versions() == []
    assert not any(tmp_path in m.target.parents for m in mounts())


class TestBtrfsStorage(StorageContract):
    @pytest.fixture
    def owner(self) -> Owner:
        def lstat_owner(path: Path) -> tuple[int, int]:
            st = os.lstat(path)
            return st.st_uid, st.st_gid

        return lstat_owner


def fill(root: Path, name: str, limit: int) -> int:
    """Write incompressible data until the filesystem refuses; return bytes written."""
    written = 0
    chunk = os.urandom(1 << 20)
    with open(root / name, "wb") as f:
        try:
            while written < limit:
                written += f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            assert exc.errno in (errno.EDQUOT, errno.ENOSPC), exc
            return written
    return written


@pytest.mark.parametrize("mode", ["overlay", "snapshot"])
def test_a_tenant_past_its_disk_limit_fails_and_its_neighbour_does_not(
    storage: BtrfsStorage, mode: StorageMode
) -> None:
    ref = TemplateVersionRef("base", 1)
    storage.create_template_version(ref, populate, SHIFT)
    storage.create_tenant("hog", ref, mode, 16, SHIFT)
    storage.create_tenant("calm", ref, mode, 16, SHIFT)
    hog, calm = storage.mount_tenant("hog"), storage.mount_tenant("calm")
    written = fill(hog, "blob", 64 << 20)
    assert written <= 16 << 20, "the limit did not stop the writer"
    assert fill(calm, "blob", 8 << 20) == 8 << 20
    # Freeing space lets the hog write again.
    (hog / "blob").unlink()
    run(["btrfs", "filesystem", "sync", str(storage.pool)])
    assert fill(hog, "again", 4 << 20) == 4 << 20


@pytest.mark.parametrize("mode", ["overlay", "snapshot"])
def test_usage_grows_by_what_the_tenant_wrote(storage: BtrfsStorage, mode: StorageMode) -> None:
    ref = TemplateVersionRef("base", 1)
    storage.create_template_version(ref, populate, SHIFT)
    storage.create_tenant("t1", ref, mode, 64, SHIFT)
    rootfs = storage.mount_tenant("t1")
    run(["btrfs", "filesystem", "sync", str(storage.pool)])
    before = storage.tenant_usage("t1")
    assert before < 1 << 20
    assert fill(rootfs, "blob", 8 << 20) == 8 << 20
    run(["btrfs", "filesystem", "sync", str(storage.pool)])
    grown = storage.tenant_usage("t1") - before
    assert 8 << 20 <= grown < 9 << 20


def test_a_copy_counts_what_it_started_with_in_overlay_mode(storage: BtrfsStorage) -> None:
    ref = TemplateVersionRef("base", 1)
    storage.create_template_version(ref, populate, SHIFT)
    storage.create_tenant("src", ref, "overlay", 64, SHIFT)
    fill(storage.mount_tenant("src"), "blob", 4 << 20)
    storage.copy_tenant("src", "dst", 64)
    run(["btrfs", "filesystem", "sync", str(storage.pool)])
    assert storage.tenant_usage("dst") >= 4 << 20


def test_a_pool_not_on_btrfs_names_the_fix(tmp_path: Path) -> None:
    assert not is_btrfs(tmp_path)
    with pytest.raises(HostError, match="hoody node init --size 20G"):
        ensure_pool(tmp_path / "pool", None, "1G")
    with pytest.raises(HostError, match="not on btrfs"):
        BtrfsStorage(tmp_path, tmp_path / "run").ensure_ready()
    with pytest.raises(HostError, match="does not exist"):
        BtrfsStorage(tmp_path / "absent", tmp_path / "run").ensure_ready()


def test_ensure_pool_is_idempotent_and_remounts(pool: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hoody-pool-", dir="/var/tmp"))
    path, image = tmp / "pool", tmp / "pool.img"
    try:
        ensure_pool(path, image, "1G")
        ensure_pool(path, image, "1G")  # mounted: nothing to do
        assert [m.target for m in mounts()].count(path) == 1
        (path / "marker").write_text("kept\n")
        run(["umount", str(path)])
        ensure_pool(path, image, "1G")  # image there, not mounted: mount it again
        mount = find_mount(path)
        assert mount is not None and mount.target == path and mount.fstype == "btrfs"
        assert (path / "marker").read_text() == "kept\n"
    finally:
        destroy_pool(path, image)
        destroy_pool(path, image)  # harmless twice
        assert not image.exists()
        assert str(image) not in run(["losetup", "-a"]).stdout
        tmp.rmdir()
