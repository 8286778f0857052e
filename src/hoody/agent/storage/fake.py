"""A StorageDriver in plain directories, for tests that run without root.

Template versions and tenants are ordinary directories under `root`; a tenant gets a
full copy of its version's files in either mode, and "mounting" only marks it mounted
and returns that directory. Things the filesystem cannot show without root are kept
as bookkeeping and stated here: ownership shifts (of versions, and of tenants' ranges,
which the real driver shows through idmapped mounts) are recorded, not applied (`owner`
answers what the real driver's lstat would), disk limits are recorded, not enforced,
and usage is the bytes of files that differ from the template version.

Sent versions are uncompressed tar streams of the version's files; a parent is checked
for but not used (the whole version travels every time). As btrfs does with received
UUIDs, each version has an origin (made here, or the sender's when received) and a
stream made against a parent applies only where a version of that origin is held.

Tests make the host fail on purpose with `failing` (method name -> the error it raises
until removed) and read what was received, against which parent, in `received`.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hoody.agent.storage import StorageCaps, StorageMode, TemplateVersionRef
from hoody.errors import Conflict, HoodyError, HostError, InvalidInput, NotFound
from hoody.undo import Undo

__all__ = ["FakeStorage"]


@dataclass
class _Tenant:
    ref: TemplateVersionRef
    mode: StorageMode
    disk_mib: int
    shift: int  # the tenant's host id base: what its files show as once mounted
    mounted: bool = False


class FakeStorage:
    caps = StorageCaps(modes=("overlay", "snapshot"), disk_limit=True, usage=True)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions: dict[TemplateVersionRef, int] = {}  # ref -> uid shift applied
        self.tenants: dict[str, _Tenant] = {}
        self.origins: dict[TemplateVersionRef, str] = {}
        # Failures injected by tests: method name -> the error it raises.
        self.failing: dict[str, HoodyError] = {}
        # (version, the parent it was received against) of each version received.
        self.received: list[tuple[TemplateVersionRef, TemplateVersionRef | None]] = []

    def _fail(self, method: str) -> None:
        if (exc := self.failing.get(method)) is not None:
            raise exc

    def _version_path(self, ref: TemplateVersionRef) -> Path:
        return self.root / "templates" / ref.template / str(ref.version)

    def _rootfs(self, tid: str) -> Path:
        return self.root / "tenants" / tid / "rootfs"

    def _tenant(self, tid: str) -> _Tenant:
        try:
            return self.tenants[tid]
        except KeyError:
            raise NotFound(f"tenant {tid} has no storage; `hoody ls` lists tenants") from None

    def owner(self, path: Path) -> tuple[int, int]:
        """(uid, gid) of `path` as the real driver would have shifted it."""
        st = os.lstat(path)
        shift = 0
        for ref, uid_shift in self.versions.items():
            if path.is_relative_to(self._version_path(ref)):
                shift = uid_shift
        for tenant_id, tenant in self.tenants.items():
            if path.is_relative_to(self._rootfs(tenant_id)):
                shift = self.versions.get(tenant.ref, 0) + tenant.shift
        return st.st_uid + shift, st.st_gid + shift

    def ensure_ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def create_template_version(
        self, ref: TemplateVersionRef, populate: Callable[[Path], None], uid_shift: int
    ) -> Path:
        path = self._version_path(ref)
        if ref in self.versions or path.exists():
            raise Conflict(
                f"template {ref.template} version {ref.version} already exists; "
                "delete it first or make a new version"
            )
        path.mkdir(parents=True)
        with Undo() as undo:
            undo.add(lambda: shutil.rmtree(path), "remove version dir")
            populate(path)
            self.versions[ref] = uid_shift
            self.origins[ref] = uuid.uuid4().hex
            undo.commit()
        return path

    def version_from_tenant(self, ref: TemplateVersionRef, tid: str) -> Path:
        tenant = self._tenant(tid)
        path = self._version_path(ref)
        if ref in self.versions:
            raise Conflict(
                f"template {ref.template} version {ref.version} already exists; "
                "delete it first or make a new version"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self._rootfs(tid), path, symlinks=True)
        self.versions[ref] = self.versions.get(tenant.ref, 0)
        self.origins[ref] = uuid.uuid4().hex
        return path

    def delete_template_version(self, ref: TemplateVersionRef) -> None:
        users = sorted(tid for tid, t in self.tenants.items() if t.ref == ref)
        if users:
            raise Conflict(
                f"template {ref.template} version {ref.version} is used by tenant(s) "
                f"{', '.join(users[:3])}; delete them first"
            )
        self.versions.pop(ref, None)
        self.origins.pop(ref, None)
        shutil.rmtree(self._version_path(ref), ignore_errors=True)

    def _existing(self, ref: TemplateVersionRef) -> Path:
        if ref not in self.versions:
            raise NotFound(
                f"template {ref.template} version {ref.version} does not exist on this node; "
                "`hoody node template ls` lists templates"
            )
        return self._version_path(ref)

    def send_template_version(
        self, ref: TemplateVersionRef, parent: TemplateVersionRef | None
    ) -> Iterator[bytes]:
        self._fail("send_template_version")
        if parent is not None:
            self._existing(parent)
        path = self._existing(ref)

        def stream() -> Iterator[bytes]:
            buf = io.BytesIO()
            # The uid shift the real driver applies to files rides along as a header,
            # and so do the origins btrfs keeps as received UUIDs.
            headers = {
                "hoody.uid_shift": str(self.versions[ref]),
                "hoody.origin": self.origins[ref],
            }
            if parent is not None:
                headers["hoody.parent"] = self.origins[parent]
            with tarfile.open(
                fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=headers
            ) as tar:
                tar.add(path, arcname=".")
            data = buf.getvalue()
            for start in range(0, len(data), 1 << 16):
                yield data[start : start + (1 << 16)]

        return stream()

    def receive_template_version(self, ref: TemplateVersionRef, stream: Iterable[bytes]) -> Path:
        path = self._version_path(ref)
        if ref in self.versions or path.exists():
            raise Conflict(
                f"template {ref.template} version {ref.version} already exists on this "
                "node; nothing to receive"
            )
        self._fail("receive_template_version")
        data = b"".join(stream)
        with Undo() as undo:
            path.mkdir(parents=True)
            undo.add(lambda: shutil.rmtree(path), "remove version dir")
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                    members = tar.getmembers()
                    for member in members:
                        name = os.path.normpath(member.name)
                        if name.startswith(("/", "..")):
                            raise HostError(f"stream member {member.name!r} leaves the version")
                    headers = tar.pax_headers
                    parent = self._parent(headers.get("hoody.parent"))
                    tar.extractall(path, members=members)
                    shift = int(headers.get("hoody.uid_shift", "0"))
            except tarfile.TarError as exc:
                raise HostError(
                    f"the stream for template {ref.template} version {ref.version} is not "
                    f"whole ({exc}); send it again"
                ) from exc
            self.versions[ref] = shift
            self.origins[ref] = headers.get("hoody.origin") or uuid.uuid4().hex
            self.received.append((ref, parent))
            undo.commit()
        return path

    def _parent(self, origin: str | None) -> TemplateVersionRef | None:
        """The version held here that a stream's parent origin names."""
        if origin is None:
            return None
        for held, its_origin in self.origins.items():
            if its_origin == origin:
                return held
        # btrfs receive's own words, which the control plane answers by sending whole.
        raise HostError(
            "ERROR: cannot find parent subvolume (this node holds no copy of the version "
            "the stream was made against); send the version whole"
        )

    def version_size(self, ref: TemplateVersionRef, parent: TemplateVersionRef | None) -> int:
        total = 0
        for dirpath, _, files in os.walk(self._existing(ref)):
            for name in files:
                total += Path(dirpath, name).lstat().st_size
        return total

    def list_template_versions(self) -> list[TemplateVersionRef]:
        return sorted(self.versions, key=lambda r: (r.template, r.version))

    def create_tenant(
        self, tid: str, ref: TemplateVersionRef, mode: StorageMode, disk_mib: int, uid_shift: int
    ) -> None:
        self._fail("create_tenant")
        if mode not in self.caps.modes:
            raise InvalidInput(f"storage mode {mode!r} is invalid; use overlay or snapshot")
        if ref not in self.versions:
            raise NotFound(
                f"template {ref.template} version {ref.version} does not exist on this node; "
                "`hoody node template ls` lists templates"
            )
        self._add(tid, ref, mode, disk_mib, self._version_path(ref), uid_shift)

    def copy_tenant(self, src: str, dst: str, disk_mib: int, uid_shift: int) -> None:
        source = self._tenant(src)
        self._add(dst, source.ref, source.mode, disk_mib, self._rootfs(src), uid_shift)

    def _add(
        self,
        tid: str,
        ref: TemplateVersionRef,
        mode: StorageMode,
        disk_mib: int,
        files: Path,
        shift: int,
    ) -> None:
        if tid in self.tenants:
            raise Conflict(f"tenant {tid} already exists; delete it first or pick another id")
        if disk_mib < 0:
            raise InvalidInput(f"disk limit {disk_mib} MiB is invalid; give 0 or more")
        rootfs = self._rootfs(tid)
        with Undo() as undo:
            undo.add(lambda: shutil.rmtree(rootfs.parent, ignore_errors=True), "remove dir")
            rootfs.parent.mkdir(parents=True)
            shutil.copytree(files, rootfs, symlinks=True)
            self.tenants[tid] = _Tenant(ref, mode, disk_mib, shift)
            undo.commit()

    def set_disk_limit(self, tid: str, disk_mib: int) -> None:
        if disk_mib < 0:
            raise InvalidInput(f"disk limit {disk_mib} MiB is invalid; give 0 or more")
        self._tenant(tid).disk_mib = disk_mib

    def tenant_usage(self, tid: str) -> int:
        """Bytes of the tenant's regular files that are new or differ from the version's."""
        base = self._version_path(self._tenant(tid).ref)
        rootfs = self._rootfs(tid)
        used = 0
        for dirpath, _, files in os.walk(rootfs):
            for name in files:
                path = Path(dirpath, name)
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                try:
                    orig = (base / path.relative_to(rootfs)).lstat()
                except FileNotFoundError:
                    used += st.st_size
                    continue
                if (orig.st_size, orig.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                    used += st.st_size
        return used

    def mount_tenant(self, tid: str, userns: int) -> Path:
        self._tenant(tid).mounted = True
        return self._rootfs(tid)

    def unmount_tenant(self, tid: str) -> None:
        if tid in self.tenants:
            self.tenants[tid].mounted = False

    def delete_tenant(self, tid: str) -> None:
        self.tenants.pop(tid, None)
        shutil.rmtree(self._rootfs(tid).parent, ignore_errors=True)

    def list_tenants(self) -> list[str]:
        return sorted(self.tenants)

    def is_mounted(self, tid: str) -> bool:
        return tid in self.tenants and self.tenants[tid].mounted
