"""StorageDriver on a btrfs pool: read-only template versions, a subvolume per tenant.

Layout inside the pool:

    templates/<name>/<version>   read-only subvolume holding the rootfs
    tenants/<tid>                the tenant's subvolume:
                                   overlay mode: upper/ and work/ of an overlayfs whose
                                   lower layer is the template version;
                                   snapshot mode: a writable snapshot of the version,
                                   the rootfs itself
    tenants/<tid>.json           {"mode", "template", "version", "ids"}: kept next to
                                   the subvolume, not in it, because in snapshot mode the
                                   subvolume is the tenant's / and must hold only its files
    .scratch/                    short-lived read-only captures (version_from_tenant)

Template versions travel between nodes with `btrfs send` (incremental with `-p` from
a parent version both nodes hold) and `btrfs receive`. A received subvolume cannot be
moved once read-only, and its name is the one it had on the sending node, so it is
received straight into templates/<name>/ where it gets its final name (the version);
a version on disk without a record in the node's database is half-received and is
removed by reconcile.

A tenant's root filesystem is mounted at `<run_dir>/<tid>/rootfs`: an overlay mount in
overlay mode, a bind mount of the subvolume in snapshot mode, so callers find it in one
place either way.

Ownership. Template versions hold the ids tenants see (0..65535, unshifted), so one
version serves tenants of different host id ranges (hoody.agent.ids): each tenant sees
it through an *idmapped* mount made with its user namespace, where a file of id N on
disk shows as the tenant's host id base + N. Overlay mode: the idmapped version is the
read-only lower layer (one page cache for all its tenants) and the upper is a plain
directory holding the tenant's host ids (an idmapped upper would need host id 0 in the
map, or overlay mounts read-only). Snapshot mode: the subvolume keeps unshifted ids
like its version and is bind-mounted idmapped, so a copy costs no chown walk. The pool
directory is root-only (0700): on disk those unshifted files carry host ids of real
users and root, which only the idmapped mounts may show anyone.

Subvolume create/snapshot/delete, read-only flags and qgroup limits use the btrfs
ioctls directly and mounts use mount(2): the copy path then costs no process at all
(`btrfs subvolume create` is ~1.5 ms of process start for a ~0.05 ms ioctl).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hoody.agent.storage import StorageCaps, StorageMode, TemplateVersionRef
from hoody.agent.storage.pool import is_btrfs
from hoody.agent.storage.tree import apply_upper, shift_ownership
from hoody.errors import Conflict, HoodyError, HostError, InvalidInput, NotFound
from hoody.private import walk_through_dir
from hoody.proc import run_fed, stream_out
from hoody.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_NOATIME,
    MOUNT_ATTR_RDONLY,
    fs_mount,
    idmapped_tree,
    move_mount,
    umount,
)
from hoody.undo import Undo

__all__ = [
    "BtrfsStorage",
    "create_subvolume",
    "delete_subvolume",
    "mount_overlay",
    "snapshot_subvolume",
]

# --- btrfs ioctls (linux/btrfs.h) -------------------------------------------------


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (0x94 << 8) | nr


_W, _R, _RW = 1, 2, 3
_VOL_ARGS = 4096  # struct btrfs_ioctl_vol_args / _v2 / ino_lookup_args are all 4 KiB
_IOC_SYNC = _ioc(0, 8, 0)
_IOC_SUBVOL_CREATE = _ioc(_W, 14, _VOL_ARGS)
_IOC_SNAP_DESTROY = _ioc(_W, 15, _VOL_ARGS)
_IOC_INO_LOOKUP = _ioc(_RW, 18, _VOL_ARGS)
_IOC_SNAP_CREATE_V2 = _ioc(_W, 23, _VOL_ARGS)
_IOC_SUBVOL_GETFLAGS = _ioc(_R, 25, 8)
_IOC_SUBVOL_SETFLAGS = _ioc(_W, 26, 8)
_IOC_FS_INFO = _ioc(_R, 31, 1024)
_IOC_QGROUP_LIMIT = _ioc(_R, 43, 48)  # declared _IOR in the header, though it writes
_SUBVOL_RDONLY = 1 << 1
_QGROUP_LIMIT_MAX_RFER = 1 << 0
_QGROUP_LIMIT_MAX_EXCL = 1 << 1
_QGROUP_CLEAR = (1 << 64) - 1  # "no limit" for the field whose flag is set
_FIRST_FREE_OBJECTID = 256  # inode number of every subvolume's root directory
_V2_NAME_OFFSET = 56  # fd, transid, flags, then a 32-byte union before the name


@contextlib.contextmanager
def _opendir(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _name_args(name: str, offset: int = 8, fd: int = 0) -> bytearray:
    raw = name.encode()
    if not raw or b"/" in raw or len(raw) > 255:
        raise InvalidInput(f"subvolume name {name!r} is invalid; use a plain file name")
    buf = bytearray(_VOL_ARGS)
    struct.pack_into("q", buf, 0, fd)
    buf[offset : offset + len(raw)] = raw
    return buf


def _host_error(what: str, path: Path, exc: OSError) -> HoodyError:
    if exc.errno == errno.EEXIST:
        return Conflict(f"{path} already exists; delete it first or pick another name")
    return HostError(
        f"could not {what} {path}: {exc.strerror}; check the pool with "
        "`btrfs filesystem usage` and `dmesg`"
    )


def is_subvolume(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == _FIRST_FREE_OBJECTID


def create_subvolume(path: Path) -> None:
    """A new empty subvolume at `path`. Conflict if `path` exists."""
    try:
        with _opendir(path.parent) as parent:
            fcntl.ioctl(parent, _IOC_SUBVOL_CREATE, _name_args(path.name))
    except OSError as exc:
        raise _host_error("create subvolume", path, exc) from exc


def snapshot_subvolume(src: Path, dst: Path, *, readonly: bool) -> None:
    """Snapshot subvolume `src` to `dst`. Conflict if `dst` exists."""
    try:
        with _opendir(src) as source, _opendir(dst.parent) as parent:
            args = _name_args(dst.name, offset=_V2_NAME_OFFSET, fd=source)
            struct.pack_into("Q", args, 16, _SUBVOL_RDONLY if readonly else 0)
            fcntl.ioctl(parent, _IOC_SNAP_CREATE_V2, args)
    except OSError as exc:
        raise _host_error("snapshot into", dst, exc) from exc


def delete_subvolume(path: Path) -> None:
    """Delete the subvolume at `path` (read-only or not); harmless when absent.

    Returns once it is unlinked; the btrfs cleaner frees its extents in the background.
    A plain directory at `path` (never a subvolume) is removed as a tree.
    """
    if not path.exists() and not path.is_symlink():
        return
    if not is_subvolume(path):
        shutil.rmtree(path)
        return
    try:
        with _opendir(path.parent) as parent:
            fcntl.ioctl(parent, _IOC_SNAP_DESTROY, _name_args(path.name))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _host_error("delete subvolume", path, exc) from exc


def set_readonly(path: Path) -> None:
    try:
        with _opendir(path) as fd:
            flags = bytearray(8)
            fcntl.ioctl(fd, _IOC_SUBVOL_GETFLAGS, flags)
            value = struct.unpack("Q", flags)[0] | _SUBVOL_RDONLY
            fcntl.ioctl(fd, _IOC_SUBVOL_SETFLAGS, bytearray(struct.pack("Q", value)))
    except OSError as exc:
        raise _host_error("make read-only", path, exc) from exc


def is_readonly(path: Path) -> bool:
    with _opendir(path) as fd:
        flags = bytearray(8)
        fcntl.ioctl(fd, _IOC_SUBVOL_GETFLAGS, flags)
        return bool(struct.unpack("Q", flags)[0] & _SUBVOL_RDONLY)


def sync_filesystem(path: Path) -> None:
    """Commit the filesystem's transaction (qgroup numbers are updated on commit)."""
    with _opendir(path) as fd:
        fcntl.ioctl(fd, _IOC_SYNC, 0)


def subvolume_id(path: Path) -> int:
    with _opendir(path) as fd:
        args = bytearray(_VOL_ARGS)
        struct.pack_into("QQ", args, 0, 0, _FIRST_FREE_OBJECTID)
        fcntl.ioctl(fd, _IOC_INO_LOOKUP, args)
        return int(struct.unpack_from("Q", args, 0)[0])


def filesystem_uuid(path: Path) -> str:
    with _opendir(path) as fd:
        args = bytearray(1024)
        fcntl.ioctl(fd, _IOC_FS_INFO, args)
        return str(uuid.UUID(bytes=bytes(args[16:32])))


def set_qgroup_limit(path: Path, *, referenced: int | None, exclusive: int | None) -> None:
    """Limit the qgroup of subvolume `path`; None for a field clears that limit."""
    flags = _QGROUP_LIMIT_MAX_RFER | _QGROUP_LIMIT_MAX_EXCL
    rfer = _QGROUP_CLEAR if referenced is None else referenced
    excl = _QGROUP_CLEAR if exclusive is None else exclusive
    # qgroupid 0 means "the subvolume this fd is in".
    args = bytearray(struct.pack("QQQQQQ", 0, flags, rfer, excl, 0, 0))
    try:
        with _opendir(path) as fd:
            fcntl.ioctl(fd, _IOC_QGROUP_LIMIT, args)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ENOENT):
            raise HostError(
                f"btrfs quotas are off for {path}; run `btrfs quota enable <pool>` "
                "(or `hoody node init`) to turn them on"
            ) from exc
        raise _host_error("set the disk limit of", path, exc) from exc


# --- mounts ---------------------------------------------------------------------


def mounted_at(path: Path) -> bool:
    """Whether a filesystem is mounted at `path`. Tenant roots are overlay or a btrfs
    subvolume, each with a device number of its own, so the device (or inode) change
    from the parent tells, without reading the mount table: that grows with every
    tenant and was parsed on every copy."""
    return os.path.ismount(path)


# --- the driver -----------------------------------------------------------------


def _check_name(value: str, what: str) -> str:
    # The engine validates ids and names; this only keeps paths inside the pool.
    if not value or "/" in value or value.startswith(".") or "\0" in value:
        raise InvalidInput(f"{what} {value!r} is invalid; use letters, digits and hyphens")
    return value


class BtrfsStorage:
    """Templates and tenants on the btrfs pool at `pool`; tenant mounts under `run_dir`.

    Disk limits and usage are qgroups (quotas must be on: `ensure_pool` does that).
    Qgroup numbers are updated when btrfs commits a transaction (about every 30 s,
    or on `btrfs filesystem sync <pool>`), so usage lags writes by up to that long.
    """

    caps = StorageCaps(
        modes=("overlay", "snapshot"), disk_limit=True, usage=True, incremental_send=True
    )

    def __init__(self, pool: Path, run_dir: Path) -> None:
        self.pool = pool
        self.run_dir = run_dir
        self.templates = pool / "templates"
        self.tenants = pool / "tenants"
        self.scratch = pool / ".scratch"
        self._uuid: str | None = None
        # Receives into one template's directory are told apart by what appears in
        # it, so they run one at a time per template.
        self._receiving: dict[str, threading.Lock] = {}
        self._receiving_guard = threading.Lock()

    # paths and records

    def _version_path(self, ref: TemplateVersionRef) -> Path:
        return self.templates / _check_name(ref.template, "template name") / str(ref.version)

    def _subvolume(self, tid: str) -> Path:
        return self.tenants / _check_name(tid, "tenant id")

    def _meta_path(self, tid: str) -> Path:
        return self.tenants / f"{_check_name(tid, 'tenant id')}.json"

    def _rootfs(self, tid: str) -> Path:
        return self.run_dir / _check_name(tid, "tenant id") / "rootfs"

    def _meta(self, tid: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads(self._meta_path(tid).read_text())
        except FileNotFoundError:
            raise NotFound(f"tenant {tid} has no storage; `hoody ls` lists tenants") from None
        return meta

    def _write_meta(
        self, tid: str, mode: StorageMode, ref: TemplateVersionRef, ids_base: int
    ) -> None:
        path = self._meta_path(tid)
        tmp = path.with_name(path.name + ".tmp")
        meta = {"mode": mode, "template": ref.template, "version": ref.version, "ids": ids_base}
        tmp.write_text(json.dumps(meta))
        tmp.rename(path)  # atomic: a record is whole or absent

    def _exists(self, tid: str) -> bool:
        return self._subvolume(tid).exists() or self._meta_path(tid).exists()

    def _qgroup_dir(self, path: Path) -> Path:
        if self._uuid is None:
            self._uuid = filesystem_uuid(self.pool)
        return Path("/sys/fs/btrfs", self._uuid, "qgroups", f"0_{subvolume_id(path)}")

    # pool

    def ensure_ready(self) -> None:
        """Raise HostError with the fix unless the pool is btrfs with quotas on.

        Creates the pool's directories and removes captures a crash left in .scratch.
        """
        if not self.pool.is_dir():
            raise HostError(
                f"btrfs pool {self.pool} does not exist; run `hoody node init --size 20G` "
                "to create it"
            )
        if not is_btrfs(self.pool):
            raise HostError(
                f"btrfs pool {self.pool} is not on btrfs; run `hoody node init --size 20G` "
                "to create a loop-file pool"
            )
        if not Path("/sys/fs/btrfs", filesystem_uuid(self.pool), "qgroups").is_dir():
            raise HostError(
                f"btrfs quotas are off on pool {self.pool}; run `btrfs quota enable "
                f"{self.pool}` (or `hoody node init`) to turn them on"
            )
        for path in (self.templates, self.tenants, self.scratch):
            path.mkdir(parents=True, exist_ok=True)
        walk_through_dir(self.run_dir)
        for leftover in self.scratch.iterdir():
            delete_subvolume(leftover)

    # template versions

    def create_template_version(
        self, ref: TemplateVersionRef, populate: Callable[[Path], None], uid_shift: int
    ) -> Path:
        path = self._version_path(ref)
        if path.exists():
            raise Conflict(
                f"template {ref.template} version {ref.version} already exists; "
                "delete it first or make a new version"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        with Undo() as undo:
            create_subvolume(path)
            undo.add(lambda: self._delete_version_path(path), "delete template subvolume")
            populate(path)
            shift_ownership(path, uid_shift)
            set_readonly(path)
            undo.commit()
        return path

    def version_from_tenant(self, ref: TemplateVersionRef, tid: str) -> Path:
        """A new read-only version holding the tenant's current merged filesystem.

        Overlay mode: the tenant's subvolume is first captured in a read-only snapshot
        (one point in time for the upper layer), then a writable snapshot of its lower
        version gets the captured upper applied and is made read-only. Snapshot mode:
        one read-only snapshot. A running tenant's in-flight writes may or may not be
        in it; stop the tenant for an exact copy. Conflict if the version exists,
        NotFound if the tenant does not.
        """
        meta = self._meta(tid)
        path = self._version_path(ref)
        if path.exists():
            raise Conflict(
                f"template {ref.template} version {ref.version} already exists; "
                "delete it first or make a new version"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        sub = self._subvolume(tid)
        if meta["mode"] == "snapshot":
            snapshot_subvolume(sub, path, readonly=True)
            return path
        lower = self._version_path(TemplateVersionRef(meta["template"], meta["version"]))
        self.scratch.mkdir(exist_ok=True)
        capture = self.scratch / f"{tid}-{os.urandom(4).hex()}"
        with Undo() as undo:
            snapshot_subvolume(sub, capture, readonly=True)
            undo.add(lambda: delete_subvolume(capture), "delete capture")
            snapshot_subvolume(lower, path, readonly=False)
            undo.add(lambda: self._delete_version_path(path), "delete template subvolume")
            # The upper holds the tenant's host ids; the version holds the ids it sees.
            apply_upper(capture / "upper", path, -int(meta.get("ids", 0)))
            set_readonly(path)
            delete_subvolume(capture)
            undo.commit()
        return path

    def _delete_version_path(self, path: Path) -> None:
        delete_subvolume(path)
        with contextlib.suppress(OSError):  # other versions of the template remain
            path.parent.rmdir()

    def delete_template_version(self, ref: TemplateVersionRef) -> None:
        """Delete the version; harmless when absent. Conflict while a tenant uses it."""
        users = [tid for tid in self.list_tenants() if self._uses(tid, ref)]
        if users:
            raise Conflict(
                f"template {ref.template} version {ref.version} is used by tenant(s) "
                f"{', '.join(sorted(users)[:3])}; delete them first"
            )
        self._delete_version_path(self._version_path(ref))

    # template versions between nodes

    def send_template_version(
        self, ref: TemplateVersionRef, parent: TemplateVersionRef | None
    ) -> Iterator[bytes]:
        """`btrfs send` of the version (`-p parent` for only the difference)."""
        argv = ["btrfs", "-q", "send"]
        if parent is not None:
            argv += ["-p", str(self._existing_version(parent))]
        argv.append(str(self._existing_version(ref)))
        return stream_out(argv)

    def _existing_version(self, ref: TemplateVersionRef) -> Path:
        path = self._version_path(ref)
        if not is_subvolume(path):
            raise NotFound(
                f"template {ref.template} version {ref.version} does not exist on this node; "
                "`hoody node template ls` lists templates"
            )
        return path

    def receive_template_version(self, ref: TemplateVersionRef, stream: Iterable[bytes]) -> Path:
        """`btrfs receive` the stream into templates/<name>/, where it must make exactly
        the subvolume `<version>`, read-only; anything else is removed and refused."""
        path = self._version_path(ref)
        folder = path.parent
        with self._receive_lock(ref.template):
            if path.exists():
                raise Conflict(
                    f"template {ref.template} version {ref.version} already exists on this "
                    "node; nothing to receive"
                )
            folder.mkdir(parents=True, exist_ok=True)
            before = set(os.listdir(folder))
            try:
                # -C: the stream's paths cannot leave the folder; -e: stop at its end.
                run_fed(["btrfs", "-q", "receive", "-C", "-e", str(folder)], stream)
                made = set(os.listdir(folder)) - before
                if made != {path.name} or not is_subvolume(path) or not is_readonly(path):
                    raise HostError(
                        f"the stream for template {ref.template} version {ref.version} made "
                        f"{sorted(made) or 'nothing'} instead of read-only subvolume "
                        f"{path.name}; send it again from a node that has this version"
                    )
            except BaseException:
                for name in set(os.listdir(folder)) - before:
                    delete_subvolume(folder / name)
                with contextlib.suppress(OSError):  # other versions of the template remain
                    folder.rmdir()
                raise
        return path

    def _receive_lock(self, template: str) -> threading.Lock:
        with self._receiving_guard:
            return self._receiving.setdefault(template, threading.Lock())

    def version_size(self, ref: TemplateVersionRef, parent: TemplateVersionRef | None) -> int:
        """Referenced bytes of the version; with a parent, its exclusive bytes (what it
        does not share with other subvolumes: about what an incremental send carries).
        0 when quotas cannot tell."""
        try:
            path = self._existing_version(ref)
            sync_filesystem(self.pool)
            qgroup = self._qgroup_dir(path)
            return int((qgroup / ("exclusive" if parent else "referenced")).read_text())
        except (OSError, ValueError):
            return 0

    def _uses(self, tid: str, ref: TemplateVersionRef) -> bool:
        try:
            meta = self._meta(tid)
        except NotFound:
            return False
        return (meta["template"], meta["version"]) == (ref.template, ref.version)

    def list_template_versions(self) -> list[TemplateVersionRef]:
        if not self.templates.is_dir():
            return []
        refs = (
            TemplateVersionRef(name.name, int(version.name))
            for name in self.templates.iterdir()
            if name.is_dir()
            for version in name.iterdir()
            if version.name.isdigit()
        )
        return sorted(refs, key=lambda r: (r.template, r.version))

    # tenants

    def create_tenant(
        self, tid: str, ref: TemplateVersionRef, mode: StorageMode, disk_mib: int, uid_shift: int
    ) -> None:
        """Create the tenant's subvolume from version `ref` (not mounted); `uid_shift`
        is the host id the tenant's id 0 maps to.

        Overlay: an empty subvolume with upper/ (its root owned by `uid_shift`, with
        the template root's mode) and work/. Snapshot: a writable snapshot of the
        version, ids unshifted (seen through an idmapped mount). NotFound if the version
        is missing, Conflict if the tenant exists; a failure leaves nothing.
        """
        if mode not in self.caps.modes:
            raise InvalidInput(f"storage mode {mode!r} is invalid; use overlay or snapshot")
        version = self._version_path(ref)
        if not version.is_dir():
            raise NotFound(
                f"template {ref.template} version {ref.version} does not exist on this node; "
                "`hoody node template ls` lists templates"
            )
        if self._exists(tid):
            raise Conflict(f"tenant {tid} already exists; delete it first or pick another id")
        sub = self._subvolume(tid)
        with Undo() as undo:
            if mode == "overlay":
                create_subvolume(sub)
                undo.add(lambda: delete_subvolume(sub), "delete tenant subvolume")
                upper = sub / "upper"
                upper.mkdir()
                os.chown(upper, uid_shift, uid_shift)
                os.chmod(upper, stat.S_IMODE(os.stat(version).st_mode))
                (sub / "work").mkdir(mode=0o700)
            else:
                snapshot_subvolume(version, sub, readonly=False)
                undo.add(lambda: delete_subvolume(sub), "delete tenant subvolume")
            self._write_meta(tid, mode, ref, uid_shift)
            undo.add(lambda: self._meta_path(tid).unlink(missing_ok=True), "forget tenant")
            self.set_disk_limit(tid, disk_mib)
            undo.commit()

    def copy_tenant(self, src: str, dst: str, disk_mib: int, uid_shift: int) -> None:
        """`dst` starts as a snapshot of `src`'s subvolume (same version and mode), its
        files owned by `dst`'s host ids (`uid_shift` as in create_tenant).

        `src` may be mounted and running; its writes still in flight may be missed,
        so copy a stopped tenant for an exact copy. NotFound if `src` is missing,
        Conflict if `dst` exists.
        """
        meta = self._meta(src)
        if self._exists(dst):
            raise Conflict(f"tenant {dst} already exists; delete it first or pick another id")
        ref = TemplateVersionRef(meta["template"], meta["version"])
        sub = self._subvolume(dst)
        with Undo() as undo:
            snapshot_subvolume(self._subvolume(src), sub, readonly=False)
            undo.add(lambda: delete_subvolume(sub), "delete tenant subvolume")
            if meta["mode"] == "overlay":  # the upper holds host ids: src's become dst's
                shift_ownership(sub / "upper", uid_shift - int(meta.get("ids", 0)))
            self._write_meta(dst, meta["mode"], ref, uid_shift)
            undo.add(lambda: self._meta_path(dst).unlink(missing_ok=True), "forget tenant")
            self.set_disk_limit(dst, disk_mib)
            undo.commit()

    def set_disk_limit(self, tid: str, disk_mib: int) -> None:
        """Limit the tenant's own bytes to `disk_mib` MiB (0: no limit).

        Overlay: the referenced bytes of its subvolume (all of it is the tenant's
        delta, including data a copy started with). Snapshot: its exclusive bytes, as
        the rest is shared with the template version. Writes past the limit fail with
        EDQUOT ("Disk quota exceeded").
        """
        if disk_mib < 0:
            raise InvalidInput(f"disk limit {disk_mib} MiB is invalid; give 0 or more")
        mode = self._meta(tid)["mode"]
        limit = disk_mib << 20 if disk_mib else None
        sub = self._subvolume(tid)
        if mode == "overlay":
            set_qgroup_limit(sub, referenced=limit, exclusive=None)
        else:
            set_qgroup_limit(sub, referenced=None, exclusive=limit)

    def tenant_usage(self, tid: str) -> int:
        """The tenant's own bytes as its qgroup counts them (see set_disk_limit).

        Read from sysfs without a sync: the number is as of the last transaction
        commit (`btrfs filesystem sync <pool>` forces one).
        """
        mode = self._meta(tid)["mode"]
        qgroup = self._qgroup_dir(self._subvolume(tid))
        field = "referenced" if mode == "overlay" else "exclusive"
        try:
            return int((qgroup / field).read_text())
        except FileNotFoundError as exc:
            raise HostError(
                f"btrfs quotas are off on pool {self.pool}; run `btrfs quota enable "
                f"{self.pool}` to measure tenant disk usage"
            ) from exc

    def mount_tenant(self, tid: str, userns: int) -> Path:
        """Mount the tenant's root filesystem (idempotent) and return its path.

        `userns` is an fd of a user namespace with the tenant's id mapping: template
        (and snapshot) files show through it as the tenant's host ids. The mount keeps
        that namespace referenced; another with the same mapping serves later starts.
        """
        meta = self._meta(tid)
        target = self._rootfs(tid)
        if mounted_at(target):
            return target
        # The tenant's own way in: its root walks it when the runtime sets the
        # container up; no other tenant's uid may pass (see hoody.private).
        own = int(meta.get("ids", 0))
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target.parent, own, own)
        target.parent.chmod(0o700)
        sub = self._subvolume(tid)
        try:
            if meta["mode"] == "overlay":
                lower = self._version_path(TemplateVersionRef(meta["template"], meta["version"]))
                mount_overlay(lower, sub, target, userns)
            else:
                tree = idmapped_tree(sub, userns, MOUNT_ATTR_NOATIME)
                try:
                    move_mount(tree, target)
                finally:
                    os.close(tree)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if mounted_at(target):
                    umount(target, MNT_DETACH)
            raise HostError(
                f"could not mount tenant {tid}'s rootfs at {target}: {exc.strerror}; "
                "check `dmesg` (overlay needs the overlay module: `modprobe overlay`)"
            ) from exc
        return target

    def unmount_tenant(self, tid: str) -> None:
        """Unmount the tenant's rootfs; harmless when not mounted.

        Falls back to a lazy unmount only when the mount is busy (a process still has
        a file open): the tree disappears from the host at once and is released when
        that process lets go.
        """
        target = self._rootfs(tid)
        while mounted_at(target):
            try:
                umount(target)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    umount(target, MNT_DETACH)
                elif exc.errno in (errno.EINVAL, errno.ENOENT):
                    return
                else:
                    raise HostError(
                        f"could not unmount {target}: {exc.strerror}; check `findmnt {target}`"
                    ) from exc

    def delete_tenant(self, tid: str) -> None:
        """Unmount, delete the subvolume, its record and its run dir; harmless when absent."""
        self.unmount_tenant(tid)
        delete_subvolume(self._subvolume(tid))
        self._meta_path(tid).unlink(missing_ok=True)
        rootfs = self._rootfs(tid)
        for path in (rootfs, rootfs.parent):
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()

    def list_tenants(self) -> list[str]:
        """Tenant ids with a subvolume or a record (a half-made one included)."""
        if not self.tenants.is_dir():
            return []
        names = set()
        for entry in self.tenants.iterdir():
            if entry.name.endswith(".json"):
                names.add(entry.name[: -len(".json")])
            elif not entry.name.endswith(".tmp"):
                names.add(entry.name)
        return sorted(names)

    def is_mounted(self, tid: str) -> bool:
        return mounted_at(self._rootfs(tid))


def mount_overlay(lower: Path, sub: Path, target: Path, userns: int) -> None:
    """Overlay at `target`: `lower` seen through `userns`'s id mapping (read-only,
    handed over as a detached mount: `lowerdir+` takes an fd from Linux 6.13), upper and
    work in the tenant's subvolume. About 2 ms."""
    paths = (str(sub / "upper"), str(sub / "work"))
    if any(c in p for p in paths for c in ",:\\"):
        raise HostError(
            f"pool path {sub.parent.parent} holds ',', ':' or '\\', which overlay mount "
            "options cannot carry; move the pool to a plain path"
        )
    tree = idmapped_tree(lower, userns, MOUNT_ATTR_RDONLY)
    try:
        # metacopy=off and redirect_dir=off keep every changed file and renamed
        # directory whole in the upper layer, which version_from_tenant relies on;
        # index=off since nothing here needs NFS export or hard-link identity.
        options = {"upperdir": paths[0], "workdir": paths[1], "index": "off"}
        options |= {"metacopy": "off", "redirect_dir": "off"}
        try:
            fs = fs_mount(
                "overlay", options, {"lowerdir+": tree}, attrs=MOUNT_ATTR_NOATIME, what=str(target)
            )
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise HostError(
                f"overlayfs refused tenant layers at {target} ({exc.strerror}); it takes an "
                "idmapped lower layer as a file descriptor from Linux 6.13 on: upgrade the "
                "kernel, or use `--storage snapshot`; `dmesg` tells more"
            ) from exc
    finally:
        os.close(tree)
    try:
        move_mount(fs, target)
    finally:
        os.close(fs)
