"""Storage: templates as read-only versions, tenants as their own writable layer.

A template version is a read-only btrfs subvolume. A tenant is its own btrfs
subvolume: in `overlay` mode it holds the overlayfs upper and work dirs over the
template version (page cache of template files is shared by every tenant); in
`snapshot` mode it is a writable snapshot of the version. Either way the tenant's
disk is its own subvolume, limited by a qgroup, and delete is one subvolume.

Template versions travel between nodes as streams: `send_template_version` on one
node, `receive_template_version` on another (btrfs send/receive on the real driver;
with a parent version both nodes hold, only the difference travels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["StorageCaps", "StorageDriver", "StorageMode", "TemplateVersionRef"]

StorageMode = Literal["overlay", "snapshot"]


@dataclass(frozen=True)
class StorageCaps:
    modes: tuple[StorageMode, ...]
    disk_limit: bool  # a per-tenant byte limit is enforced (ENOSPC/EDQUOT when full)
    usage: bool  # per-tenant bytes written can be measured
    # send_template_version with a parent streams only the difference
    incremental_send: bool = False


@dataclass(frozen=True)
class TemplateVersionRef:
    template: str
    version: int


class StorageDriver(Protocol):
    """Contract (tests/contract/storage.py runs it on every driver).

    Idempotent removals: deleting what is absent is not an error. Every create either
    completes or leaves nothing behind.
    """

    caps: StorageCaps

    def ensure_ready(self) -> None:
        """Check the pool is usable; raise HostError/MissingDependency with the fix if not."""

    def create_template_version(
        self, ref: TemplateVersionRef, populate: Callable[[Path], None], uid_shift: int
    ) -> Path:
        """Make a new read-only version filled by `populate(dir)`.

        After populate, every file's uid/gid is shifted by `uid_shift` (the engine
        passes hoody.agent.ids.TEMPLATE_ID_SHIFT: versions keep the ids tenants see).
        Raises Conflict if the version exists. Returns its path.
        """

    def version_from_tenant(self, ref: TemplateVersionRef, tid: str) -> Path:
        """Make a new read-only version from the tenant's current filesystem."""

    def delete_template_version(self, ref: TemplateVersionRef) -> None: ...

    def send_template_version(
        self, ref: TemplateVersionRef, parent: TemplateVersionRef | None
    ) -> Iterator[bytes]:
        """The version as a stream that `receive_template_version` on another node turns
        back into the same version.

        With `parent` (an earlier version of the same template that the receiver holds,
        received from or sent to the same lineage) only the difference is streamed.
        NotFound if either version is missing, before anything is streamed. The
        iterator raises HostError when the stream could not be made whole; closing it
        early stops the work.
        """

    def receive_template_version(self, ref: TemplateVersionRef, stream: Iterable[bytes]) -> Path:
        """Make read-only version `ref` from a stream of `send_template_version`.

        Conflict if the version exists. A failed, cut or foreign stream raises
        (HostError or whatever iterating `stream` raised) and leaves nothing behind.
        Returns the version's path.
        """

    def version_size(self, ref: TemplateVersionRef, parent: TemplateVersionRef | None) -> int:
        """About how many bytes sending `ref` (from `parent`) streams: for progress."""

    def list_template_versions(self) -> list[TemplateVersionRef]: ...

    def create_tenant(
        self, tid: str, ref: TemplateVersionRef, mode: StorageMode, disk_mib: int, uid_shift: int
    ) -> None:
        """Create the tenant's own subvolume (not mounted). Conflict if it exists.

        `uid_shift` is the host id the tenant's id 0 maps to (its range's base): its
        files show as owned by that range once mounted."""

    def copy_tenant(self, src: str, dst: str, disk_mib: int, uid_shift: int) -> None:
        """New tenant `dst` whose files start as a copy of `src`'s (same template
        version), owned by `dst`'s range (`uid_shift` as in create_tenant)."""

    def mount_tenant(self, tid: str, userns: int) -> Path:
        """Mount (idempotent) and return the tenant's root filesystem path.

        `userns` is an fd of a user namespace with the tenant's id mapping, through
        which shared (template) files are seen as the tenant's own host ids."""

    def unmount_tenant(self, tid: str) -> None: ...

    def delete_tenant(self, tid: str) -> None:
        """Unmount and delete everything of the tenant; harmless when absent."""

    def tenant_usage(self, tid: str) -> int:
        """Bytes the tenant itself wrote (its delta from the template)."""

    def set_disk_limit(self, tid: str, disk_mib: int) -> None: ...

    def list_tenants(self) -> list[str]: ...

    def is_mounted(self, tid: str) -> bool: ...
