"""Per-tenant host ids: every tenant its own uid/gid range and its own namespace owner.

The kernel counts many per-user things (inotify instances and watches, mqueue bytes,
pending signals, processes, user namespaces, keys) per host uid, and charges what a
user namespace's processes use up the chain to the uid that *owns* the namespace. When
root made every tenant's namespace and every tenant ran as one host range, one tenant
holding 128 inotify instances left its neighbours and host root with none. So each
tenant gets, from its node's id area:

- an owner: one host uid/gid outside every tenant range, the euid of the process that
  creates the tenant's user namespace (`runtime.userns`), so the namespace's totals are
  charged to it and capped by that process's rlimits;
- a range of `IDS_PER_TENANT` host ids that tenant ids 0..65535 map to, so a process
  that escapes its namespaces owns no file and can signal no process of another tenant.

A node's area (`NodeConfig.id_base`, `id_slots`):

    id_base ...................... owners, one per slot (id_base + slot)
    id_base + OWNER_BLOCK ........ range of slot 0  (IDS_PER_TENANT ids)
    ... + slot * IDS_PER_TENANT .. range of slot `slot`

The node records each tenant's slot (`NodeStore`) and frees it on delete. Template files
stay stored with ids 0..65535 and are seen through an idmapped mount, so all tenants of
a template share one copy and one page cache of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hoody.errors import InvalidInput

__all__ = [
    "DEFAULT_ID_BASE",
    "DEFAULT_ID_SLOTS",
    "IDS_PER_TENANT",
    "TEMPLATE_ID_SHIFT",
    "IdArea",
    "TenantIds",
]

IDS_PER_TENANT = 65536
# Owners come first in an area; ranges start on the next multiple of this.
OWNER_BLOCK = 65536
# Far above the ids useradd hands out (1000+) and the subordinate ranges it gives each
# user (/etc/subuid, from 100000 in steps of 65536), below 2^31 (ids above it trip
# tools that keep ids signed).
DEFAULT_ID_BASE = 1_000_000_000
DEFAULT_ID_SLOTS = 8192
_MAX_ID = 2**31 - 1
# Template files are stored with the ids tenants see (0..65535), unshifted: each tenant
# sees them through an idmapped mount onto its own range. Nodes exchanging template
# versions must agree on this (the agent API sends it with every version).
TEMPLATE_ID_SHIFT = 0


@dataclass(frozen=True)
class TenantIds:
    """One tenant's host ids: `owner` owns its user namespace; tenant id N is host id
    `base + N` for N < `size`."""

    owner: int
    base: int
    size: int = IDS_PER_TENANT

    def mapping(self) -> list[dict[str, int]]:
        """The OCI `uidMappings`/`gidMappings` value."""
        return [{"containerID": 0, "hostID": self.base, "size": self.size}]

    def map_line(self) -> str:
        """The same mapping as a /proc/<pid>/uid_map line."""
        return f"0 {self.base} {self.size}\n"

    def owns(self, host_id: int) -> bool:
        return self.base <= host_id < self.base + self.size

    def to_json(self) -> dict[str, Any]:
        return {"owner": self.owner, "base": self.base, "size": self.size}


@dataclass(frozen=True)
class IdArea:
    """A node's block of host ids: `slots` owners, then `slots` ranges."""

    base: int = DEFAULT_ID_BASE
    slots: int = DEFAULT_ID_SLOTS

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= OWNER_BLOCK:
            raise InvalidInput(
                f"id slots {self.slots} is invalid; give 1 to {OWNER_BLOCK} tenants per node"
            )
        if self.base < 1 << 20 or self.end > _MAX_ID:
            raise InvalidInput(
                f"id area {self.base}..{self.end} is invalid; it must start at or above "
                f"{1 << 20} (clear of user ids and /etc/subuid ranges) and end below 2^31: "
                "give a smaller --id-base or fewer --id-slots"
            )

    @property
    def end(self) -> int:
        """One past the last id of the area."""
        return self.base + OWNER_BLOCK + self.slots * IDS_PER_TENANT

    def ids(self, slot: int) -> TenantIds:
        if not 0 <= slot < self.slots:
            raise InvalidInput(f"id slot {slot} is outside this node's {self.slots} slots")
        return TenantIds(
            owner=self.base + slot, base=self.base + OWNER_BLOCK + slot * IDS_PER_TENANT
        )
