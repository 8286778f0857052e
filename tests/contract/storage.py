"""The behaviour every StorageDriver must show, real (btrfs) or fake.

A test module subclasses StorageContract and provides three fixtures:

    storage  a fresh StorageDriver whose tenants and versions are removed after the test
    owner    a callable `owner(path) -> (uid, gid)`: lstat for a real driver, the
             fake's bookkeeping for the fake (it cannot chown without root)
    userns   a callable `userns(base) -> fd`: a user namespace mapping ids 0..65535 to
             host ids base.., open until the test ends (any int for the fake)

Template versions keep the ids tenants see (TEMPLATE_ID_SHIFT); each tenant id gets
its own host range (`base_of`), which its mounted files show.

Each test runs once per storage mode the driver offers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hoody.agent.ids import TEMPLATE_ID_SHIFT
from hoody.agent.storage import StorageDriver, StorageMode, TemplateVersionRef
from hoody.errors import Conflict, HostError, NotFound

Owner = Callable[[Path], tuple[int, int]]
Userns = Callable[[int], int]

SHIFT = TEMPLATE_ID_SHIFT
BASE = TemplateVersionRef("base", 1)


def base_of(tid: str) -> int:
    """The host id base of tenant `tid` in these tests: distinct per id."""
    return 1_600_000_000 + (zlib.crc32(tid.encode()) % 4096) * 65536


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def as_tenant(tid: str) -> Iterator[None]:
    """File changes made in the block are made as tenant `tid`'s root makes them
    (this thread's fsuid/fsgid = its host base), for a real driver: host root has no
    id inside a tenant's mapping, so an idmapped mount refuses what it creates
    (EOVERFLOW)."""
    base = base_of(tid)
    _libc.setfsgid(base)
    _libc.setfsuid(base)
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)


def populate(root: Path) -> None:
    """A small rootfs: a file, a setuid binary, a directory, a symlink to a directory."""
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("template\n")
    (root / "usr" / "bin").mkdir(parents=True)
    app = root / "usr" / "bin" / "app"
    app.write_text("#!/bin/sh\n")
    app.chmod(0o4755)
    (root / "bin").symlink_to("usr/bin")
    (root / "data").mkdir()
    (root / "data" / "keep").write_text("keep\n")
    (root / "data" / "gone").write_text("gone\n")
    (root / "srv").mkdir()
    (root / "srv" / "old").write_text("old\n")


class StorageContract:
    @pytest.fixture(params=["overlay", "snapshot"])
    def mode(self, request: pytest.FixtureRequest, storage: StorageDriver) -> StorageMode:
        mode: StorageMode = request.param
        if mode not in storage.caps.modes:
            pytest.skip(f"driver does not offer {mode} mode")
        return mode

    @pytest.fixture(autouse=True)
    def _namespaces(self, userns: Userns) -> None:
        self.userns = userns

    @pytest.fixture
    def base(self, storage: StorageDriver) -> TemplateVersionRef:
        storage.create_template_version(BASE, populate, SHIFT)
        return BASE

    def as_tenant(self, tid: str) -> contextlib.AbstractContextManager[None]:
        """Where file changes are made as tenant `tid`'s root (see `as_tenant`); a
        fake driver, whose files are plain, needs nothing."""
        return contextlib.nullcontext()

    def mount(self, storage: StorageDriver, tid: str) -> Path:
        return storage.mount_tenant(tid, self.userns(base_of(tid)))

    def tenant(
        self, storage: StorageDriver, tid: str, mode: StorageMode, ref: TemplateVersionRef = BASE
    ) -> Path:
        storage.create_tenant(tid, ref, mode, 64, base_of(tid))
        return self.mount(storage, tid)

    # template versions

    def test_versions_are_created_listed_and_deleted(self, storage: StorageDriver) -> None:
        path = storage.create_template_version(BASE, populate, SHIFT)
        assert (path / "etc" / "hostname").read_text() == "template\n"
        assert storage.list_template_versions() == [BASE]
        storage.delete_template_version(BASE)
        assert storage.list_template_versions() == []
        storage.delete_template_version(BASE)  # harmless twice

    def test_an_existing_version_is_a_conflict(
        self, storage: StorageDriver, base: TemplateVersionRef
    ) -> None:
        with pytest.raises(Conflict, match="already exists"):
            storage.create_template_version(base, populate, SHIFT)
        assert storage.list_template_versions() == [base]

    def test_a_failed_populate_leaves_nothing(self, storage: StorageDriver) -> None:
        def broken(root: Path) -> None:
            (root / "half").write_text("written before the failure\n")
            raise RuntimeError("debootstrap died")

        with pytest.raises(RuntimeError, match="debootstrap died"):
            storage.create_template_version(BASE, broken, SHIFT)
        assert storage.list_template_versions() == []
        path = storage.create_template_version(BASE, populate, SHIFT)
        assert not (path / "half").exists()

    def test_ownership_is_shifted_and_setuid_kept(
        self, storage: StorageDriver, owner: Owner
    ) -> None:
        path = storage.create_template_version(BASE, populate, 100000)
        uid, gid = os.geteuid() + 100000, os.getegid() + 100000
        for entry in (".", "etc/hostname", "usr/bin/app", "bin", "data"):
            assert owner(path / entry) == (uid, gid), entry
        assert os.lstat(path / "usr/bin/app").st_mode & stat.S_ISUID

    def test_tenant_from_a_missing_version_is_not_found(
        self, storage: StorageDriver, mode: StorageMode
    ) -> None:
        with pytest.raises(NotFound, match="template ls"):
            storage.create_tenant("t1", TemplateVersionRef("nope", 1), mode, 64, base_of("t1"))
        assert storage.list_tenants() == []

    def test_a_version_in_use_is_not_deleted(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode
    ) -> None:
        storage.create_tenant("t1", base, mode, 64, base_of("t1"))
        with pytest.raises(Conflict, match="t1"):
            storage.delete_template_version(base)
        assert storage.list_template_versions() == [base]

    # tenants

    def test_mounted_rootfs_shows_the_template(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode, owner: Owner
    ) -> None:
        rootfs = self.tenant(storage, "t1", mode)
        assert (rootfs / "etc" / "hostname").read_text() == "template\n"
        assert (rootfs / "bin" / "app").exists()
        # Through the mount, template files and the root show the tenant's own range.
        t1 = base_of("t1")
        assert owner(rootfs) == (os.geteuid() + t1, os.getegid() + t1)
        assert owner(rootfs / "usr" / "bin" / "app") == (os.geteuid() + t1, os.getegid() + t1)
        assert storage.is_mounted("t1")
        assert self.mount(storage, "t1") == rootfs  # idempotent
        two = self.tenant(storage, "t2", mode)
        t2 = base_of("t2")
        assert owner(two / "usr" / "bin" / "app") == (os.geteuid() + t2, os.getegid() + t2)

    def test_a_second_tenant_is_a_conflict(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode
    ) -> None:
        storage.create_tenant("t1", base, mode, 64, base_of("t1"))
        with pytest.raises(Conflict, match="already exists"):
            storage.create_tenant("t1", base, mode, 64, base_of("t1"))
        assert storage.list_tenants() == ["t1"]

    def test_writes_stay_in_their_tenant(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode
    ) -> None:
        one = self.tenant(storage, "t1", mode)
        two = self.tenant(storage, "t2", mode)
        with self.as_tenant("t1"):
            (one / "etc" / "hostname").write_text("one\n")
            (one / "new").write_text("mine\n")
            (one / "data" / "gone").unlink()
        assert (two / "etc" / "hostname").read_text() == "template\n"
        assert not (two / "new").exists()
        assert (two / "data" / "gone").exists()
        storage.create_tenant("t3", base, mode, 64, base_of("t3"))
        three = self.mount(storage, "t3")
        assert (three / "etc" / "hostname").read_text() == "template\n"

    def test_unmount_then_mount_keeps_the_files(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode
    ) -> None:
        rootfs = self.tenant(storage, "t1", mode)
        with self.as_tenant("t1"):
            (rootfs / "kept").write_text("across mounts\n")
        storage.unmount_tenant("t1")
        assert not storage.is_mounted("t1")
        storage.unmount_tenant("t1")  # harmless twice
        assert (self.mount(storage, "t1") / "kept").read_text() == "across mounts\n"

    def test_copy_tenant_copies_its_files(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode, owner: Owner
    ) -> None:
        src = self.tenant(storage, "src", mode)
        with self.as_tenant("src"):
            (src / "etc" / "hostname").write_text("src\n")
            (src / "data" / "gone").unlink()
        storage.copy_tenant("src", "dst", 64, base_of("dst"))
        dst = self.mount(storage, "dst")
        b = base_of("dst")
        assert owner(dst / "etc" / "hostname") == (os.geteuid() + b, os.getegid() + b)
        assert (dst / "etc" / "hostname").read_text() == "src\n"
        assert not (dst / "data" / "gone").exists()
        with self.as_tenant("dst"):
            (dst / "etc" / "hostname").write_text("dst\n")
        assert (src / "etc" / "hostname").read_text() == "src\n"
        with pytest.raises(Conflict):
            storage.copy_tenant("src", "dst", 64, base_of("dst"))
        with pytest.raises(NotFound):
            storage.copy_tenant("missing", "other", 64, base_of("other"))

    def test_version_from_tenant_captures_writes_and_deletions(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode, owner: Owner
    ) -> None:
        rootfs = self.tenant(storage, "t1", mode)
        with self.as_tenant("t1"):
            (rootfs / "etc" / "hostname").write_text("changed\n")
            (rootfs / "data" / "gone").unlink()
            (rootfs / "etc" / "new").write_text("new\n")
            # A directory removed and made again: overlayfs marks it opaque.
            for child in (rootfs / "srv").iterdir():
                child.unlink()
            (rootfs / "srv").rmdir()
            (rootfs / "srv").mkdir()
            (rootfs / "srv" / "fresh").write_text("fresh\n")
        ref = TemplateVersionRef("derived", 1)
        path = storage.version_from_tenant(ref, "t1")
        assert (path / "etc" / "hostname").read_text() == "changed\n"
        assert (path / "etc" / "new").read_text() == "new\n"
        assert not (path / "data" / "gone").exists()
        assert (path / "data" / "keep").exists()
        assert sorted(p.name for p in (path / "srv").iterdir()) == ["fresh"]
        assert os.path.islink(path / "bin")
        # The version holds the ids tenants see, not t1's host range.
        assert owner(path / "usr" / "bin" / "app")[0] == os.geteuid() + SHIFT
        assert owner(path / "etc" / "hostname")[0] == os.geteuid() + SHIFT
        assert owner(path / "etc" / "new")[0] == os.geteuid() + SHIFT
        assert os.lstat(path / "usr" / "bin" / "app").st_mode & stat.S_ISUID
        assert ref in storage.list_template_versions()
        with pytest.raises(Conflict):
            storage.version_from_tenant(ref, "t1")
        # The new version serves a new tenant; the old one is unchanged.
        child = self.tenant(storage, "t2", mode, ref)
        assert (child / "srv" / "fresh").exists()
        assert not (child / "srv" / "old").exists()
        assert (self.tenant(storage, "t3", mode) / "data" / "gone").exists()

    def test_delete_tenant_leaves_nothing_and_is_harmless_twice(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode
    ) -> None:
        rootfs = self.tenant(storage, "t1", mode)
        with self.as_tenant("t1"):
            (rootfs / "file").write_text("x\n")
        storage.delete_tenant("t1")
        assert storage.list_tenants() == []
        assert not storage.is_mounted("t1")
        assert not rootfs.exists()
        storage.delete_tenant("t1")
        storage.delete_tenant("never-existed")
        with pytest.raises(NotFound):
            self.mount(storage, "t1")
        # The id is free again.
        storage.create_tenant("t1", base, mode, 64, base_of("t1"))

    def test_list_tenants(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode
    ) -> None:
        assert storage.list_tenants() == []
        for tid in ("b", "a", "c"):
            storage.create_tenant(tid, base, mode, 64, base_of(tid))
        assert storage.list_tenants() == ["a", "b", "c"]
        assert not storage.is_mounted("a")
        storage.delete_tenant("b")
        assert storage.list_tenants() == ["a", "c"]

    # template versions between nodes

    def test_a_sent_version_is_received_whole(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode, owner: Owner
    ) -> None:
        # Received under another name on the same driver: as another node would.
        ref = TemplateVersionRef("copy", base.version)
        path = storage.receive_template_version(ref, storage.send_template_version(base, None))
        assert (path / "etc" / "hostname").read_text() == "template\n"
        assert os.path.islink(path / "bin")
        assert os.lstat(path / "usr" / "bin" / "app").st_mode & stat.S_ISUID
        assert owner(path / "usr" / "bin" / "app") == (os.geteuid() + SHIFT, os.getegid() + SHIFT)
        assert ref in storage.list_template_versions()
        assert storage.version_size(base, None) > 0
        rootfs = self.tenant(storage, "t1", mode, ref)
        assert (rootfs / "data" / "keep").read_text() == "keep\n"
        with pytest.raises(Conflict, match="already exists"):
            storage.receive_template_version(ref, storage.send_template_version(base, None))

    def test_a_version_travels_as_the_difference_from_its_parent(
        self, storage: StorageDriver, base: TemplateVersionRef, mode: StorageMode
    ) -> None:
        rootfs = self.tenant(storage, "t1", mode)
        with self.as_tenant("t1"):
            (rootfs / "etc" / "hostname").write_text("second\n")
            (rootfs / "data" / "gone").unlink()
        second = TemplateVersionRef(base.template, 2)
        storage.version_from_tenant(second, "t1")
        first_copy = TemplateVersionRef("copy", 1)
        storage.receive_template_version(first_copy, storage.send_template_version(base, None))
        full = b"".join(storage.send_template_version(second, None))
        diff = b"".join(storage.send_template_version(second, base))
        if storage.caps.incremental_send:
            assert len(diff) < len(full) / 2
        path = storage.receive_template_version(TemplateVersionRef("copy", 2), iter([diff]))
        assert (path / "etc" / "hostname").read_text() == "second\n"
        assert not (path / "data" / "gone").exists()
        assert (path / "data" / "keep").exists()

    def test_sending_a_missing_version_is_not_found(
        self, storage: StorageDriver, base: TemplateVersionRef
    ) -> None:
        with pytest.raises(NotFound, match="template ls"):
            storage.send_template_version(TemplateVersionRef("nope", 1), None)
        with pytest.raises(NotFound, match="template ls"):
            storage.send_template_version(base, TemplateVersionRef(base.template, 9))

    def test_a_cut_or_failing_stream_leaves_nothing(
        self, storage: StorageDriver, base: TemplateVersionRef
    ) -> None:
        data = b"".join(storage.send_template_version(base, None))
        ref = TemplateVersionRef("copy", base.version)
        with pytest.raises(HostError):
            storage.receive_template_version(ref, iter([data[: len(data) // 2]]))
        assert ref not in storage.list_template_versions()

        def failing() -> Iterator[bytes]:
            yield data[:4096]
            raise ConnectionError("the sending node went away")

        with pytest.raises(ConnectionError):
            storage.receive_template_version(ref, failing())
        assert ref not in storage.list_template_versions()
        # Nothing half-made stands in the way of a whole stream.
        path = storage.receive_template_version(ref, iter([data]))
        assert (path / "etc" / "hostname").read_text() == "template\n"
