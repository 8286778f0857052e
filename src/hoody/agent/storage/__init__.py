"""Storage: templates as read-only versions, tenants as their own writable layer.

A template version is a read-only btrfs subvolume. A tenant is its own btrfs
subvolume: in `overlay` mode it holds the overlayfs upper and work dirs over the
template version (page cache of template files is shared by every tenant); in
`snapshot` mode it is a writable snapshot of the version. Either way the tenant's
disk is its own subvolume, limited by a qgroup, and delete is one subvolume.
"""

from __future__ import annotations

from collections.abc import Callable
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

        After populate, every file's uid/gid is shifted by `uid_shift` (the tenant user
        namespace's host base). Raises Conflict if the version exists. Returns its path.
        """

    def version_from_tenant(self, ref: TemplateVersionRef, tid: str) -> Path:
        """Make a new read-only version from the tenant's current filesystem."""

    def delete_template_version(self, ref: TemplateVersionRef) -> None: ...

    def list_template_versions(self) -> list[TemplateVersionRef]: ...

    def create_tenant(
        self, tid: str, ref: TemplateVersionRef, mode: StorageMode, disk_mib: int, uid_shift: int
    ) -> None:
        """Create the tenant's own subvolume (not mounted). Conflict if it exists."""

    def copy_tenant(self, src: str, dst: str, disk_mib: int) -> None:
        """New tenant `dst` whose files start as a copy of `src`'s (same template version)."""

    def mount_tenant(self, tid: str) -> Path:
        """Mount (idempotent) and return the tenant's root filesystem path."""

    def unmount_tenant(self, tid: str) -> None: ...

    def delete_tenant(self, tid: str) -> None:
        """Unmount and delete everything of the tenant; harmless when absent."""

    def tenant_usage(self, tid: str) -> int:
        """Bytes the tenant itself wrote (its delta from the template)."""

    def set_disk_limit(self, tid: str, disk_mib: int) -> None: ...

    def list_tenants(self) -> list[str]: ...

    def is_mounted(self, tid: str) -> bool: ...
