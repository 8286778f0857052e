"""BtrfsStorage on its own scratch loop-file pool: the contract, then what only btrfs does.

The pool (image, mountpoint, loop device) is made once for the module and removed at
the end, and the test checks that nothing of it is left on the host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoody.agent.ids import TenantIds
from hoody.agent.runtime.userns import user_namespace
from hoody.agent.spec import Limits
from hoody.agent.storage import StorageMode, TemplateVersionRef
from hoody.agent.storage.btrfs import BtrfsStorage
from hoody.agent.storage.pool import destroy_pool, ensure_pool, find_mount, is_btrfs
from hoody.errors import HostError
from hoody.mountinfo import mounts
from hoody.proc import run
from tests.contract.storage import (
    SHIFT,
    Owner,
    StorageContract,
    Userns,
    as_tenant,
    base_of,
    populate,
)


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
def storage(pool: Path) -> Iterator[BtrfsStorage]:
    # Not tmp_path (0700 parents): tenants' roots walk down to their mounts, as runc does.
    run_dir = Path(tempfile.mkdtemp(prefix="hoody-run-", dir="/var/tmp"))
    run_dir.chmod(0o711)
    driver = BtrfsStorage(pool, run_dir / "run")
    driver.ensure_ready()
    yield driver
    for tid in driver.list_tenants():
        driver.delete_tenant(tid)
    for ref in driver.list_template_versions():
        driver.delete_template_version(ref)
    assert driver.list_tenants() == []
    assert driver.list_template_versions() == []
    assert not any(run_dir in m.target.parents for m in mounts())
    shutil.rmtree(run_dir)


@pytest.fixture
def userns() -> Iterator[Userns]:
    """Real user namespaces (owner: the id below the range), open until the test ends."""
    with contextlib.ExitStack() as stack:

        def make(base: int) -> int:
            ids = TenantIds(owner=base - 1, base=base)
            return stack.enter_context(user_namespace(ids, Limits())).fd

        yield make


def mount(storage: BtrfsStorage, userns: Userns, tid: str) -> Path:
    return storage.mount_tenant(tid, userns(base_of(tid)))


class TestBtrfsStorage(StorageContract):
    def as_tenant(self, tid: str) -> contextlib.AbstractContextManager[None]:
        return as_tenant(tid)

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
    storage: BtrfsStorage, mode: StorageMode, userns: Userns
) -> None:
    ref = TemplateVersionRef("base", 1)
    storage.create_template_version(ref, populate, SHIFT)
    storage.create_tenant("hog", ref, mode, 16, base_of("hog"))
    storage.create_tenant("calm", ref, mode, 16, base_of("calm"))
    hog, calm = mount(storage, userns, "hog"), mount(storage, userns, "calm")
    with as_tenant("hog"):
        written = fill(hog, "blob", 64 << 20)
    assert written <= 16 << 20, "the limit did not stop the writer"
    with as_tenant("calm"):
        assert fill(calm, "blob", 8 << 20) == 8 << 20
    # Freeing space lets the hog write again.
    with as_tenant("hog"):
        (hog / "blob").unlink()
        run(["btrfs", "filesystem", "sync", str(storage.pool)])
        assert fill(hog, "again", 4 << 20) == 4 << 20


@pytest.mark.parametrize("mode", ["overlay", "snapshot"])
def test_usage_grows_by_what_the_tenant_wrote(
    storage: BtrfsStorage, mode: StorageMode, userns: Userns
) -> None:
    ref = TemplateVersionRef("base", 1)
    storage.create_template_version(ref, populate, SHIFT)
    storage.create_tenant("t1", ref, mode, 64, base_of("t1"))
    rootfs = mount(storage, userns, "t1")
    run(["btrfs", "filesystem", "sync", str(storage.pool)])
    before = storage.tenant_usage("t1")
    assert before < 1 << 20
    with as_tenant("t1"):
        assert fill(rootfs, "blob", 8 << 20) == 8 << 20
    run(["btrfs", "filesystem", "sync", str(storage.pool)])
    grown = storage.tenant_usage("t1") - before
    assert 8 << 20 <= grown < 9 << 20


def test_a_copy_counts_what_it_started_with_in_overlay_mode(
    storage: BtrfsStorage, userns: Userns
) -> None:
    ref = TemplateVersionRef("base", 1)
    storage.create_template_version(ref, populate, SHIFT)
    storage.create_tenant("src", ref, "overlay", 64, base_of("src"))
    src = mount(storage, userns, "src")
    with as_tenant("src"):
        fill(src, "blob", 4 << 20)
    storage.copy_tenant("src", "dst", 64, base_of("dst"))
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
        # The loop device reads and writes the image directly: no second page cache.
        device = run(["losetup", "-j", str(image)]).stdout.split(":", 1)[0]
        assert run(["losetup", "--list", "-n", "-O", "DIO", device]).stdout.split() == ["1"]
    finally:
        destroy_pool(path, image)
        destroy_pool(path, image)  # harmless twice
        assert not image.exists()
        assert str(image) not in run(["losetup", "-a"]).stdout
        tmp.rmdir()
