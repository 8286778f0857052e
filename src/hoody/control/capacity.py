"""A node's capacity as the control plane sees it: what its agent last reported, plus
the copies the control plane placed there since.

Shared by placement (containers.py) and the node list (nodes.py), so `hoody nodes`
shows the very figures placement decides by.

    reported   heartbeat headroom: memory total, overcommit, reserve, and the sums of
               requested / measured / committed (max of the two per tenant) memory
               over the node's tenants; per template version the p90 of what its
               running tenants use (memory working set and own disk bytes)
    pending    copies still being made, or made since the node last reported (they
               may not be in its figures yet): each counts its request, but no more
               of them than the node's own count of tenants says it lacks
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from hoody.agent.usage import reserve_bytes
from hoody.control.db import Container, Node
from hoody.control.placement import NodeView

__all__ = [
    "DEFAULT_DISK_NEED",
    "RECENT",
    "Learned",
    "Pending",
    "capacity_json",
    "disk_margin",
    "disk_need",
    "estimate",
    "learned",
    "node_view",
    "pending",
    "pressure",
    "resolve_request",
]

_MIB = 1 << 20
# A copy made less than this long before a node's heartbeat arrived may be missing
# from the figures in it (measured a moment before sending): count it as pending.
RECENT = 5.0
# Disk a tenant is expected to use before any tenant of its template was measured.
DEFAULT_DISK_NEED = 64 * _MIB
# States whose tenants should run (a stopped tenant does not count, as on the node;
# a sleeping one does: it wakes on its next request).
_COUNTED = ("creating", "running", "sleeping", "failed")


@dataclass(frozen=True)
class Learned:
    """The fleet's knowledge of one template version: the largest p90 any up node
    reports for its running tenants (None until one runs)."""

    memory: int | None = None
    disk: int | None = None
    tenants: int = 0


@dataclass(frozen=True)
class Pending:
    """Per node, from the control plane's own rows."""

    tenants: int = 0
    requested: int = 0  # bytes: every counted copy's request
    # Requests (bytes) of the copies the node may not have reported yet, newest first.
    recent: tuple[int, ...] = ()
    creating: int = 0

    def unreported(self, counted: int | None) -> int:
        """Bytes of requests missing from a node's figures that counted `counted`
        tenants: the newest copies beyond that count (copies made shortly before it
        measured are in its figures, and counting them again would make a node that
        just reported look fuller than it is); every recent one when it did not say."""
        if counted is None:
            return sum(self.recent)
        return sum(self.recent[: max(0, self.tenants - counted)])


def learned(nodes: Iterable[Node], template: str, version: int) -> Learned:
    memory: int | None = None
    disk: int | None = None
    tenants = 0
    for node in nodes:
        if node.health != "up":
            continue
        for item in (node.headroom or {}).get("templates") or []:
            if not isinstance(item, dict):
                continue
            if item.get("name") != template or item.get("version") != version:
                continue
            count = _num(item.get("tenants"))
            if count <= 0:
                continue
            tenants += count
            memory = max(memory or 0, _num(item.get("memory_p90_bytes")))
            disk = max(disk or 0, _num(item.get("disk_p90_bytes")))
    return Learned(memory or None, disk, tenants)


def resolve_request(
    asked: dict[str, Any] | None,
    template_limits: dict[str, Any] | None,
    known: Learned,
    limit_mib: int,
) -> tuple[int, str]:
    """The memory (bytes) placement counts for a new copy, and where it came from:
    asked (the copy's request), template (its version's), learned (p90 of its running
    tenants), limit (nothing known yet)."""
    for source, values in (("asked", asked), ("template", template_limits)):
        value = (values or {}).get("memory_request_mib")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return min(int(value), limit_mib) * _MIB, source
    if known.memory:
        return min(known.memory, limit_mib * _MIB), "learned"
    return limit_mib * _MIB, "limit"


def disk_need(known: Learned) -> int:
    """What one more tenant is expected to write: the p90 its template's tenants
    measure (at least 1 MiB: its logs and metadata), or 64 MiB before any ran."""
    if known.disk is None or not known.tenants:
        return DEFAULT_DISK_NEED
    return max(known.disk, _MIB)


def disk_margin(disk_total: int) -> int:
    """Disk kept free on a node for its tenants to grow: 10 %, at least 1 GiB."""
    return min(max(1 << 30, disk_total // 10), disk_total // 2)


def pending(s: Session, nodes: dict[str, Node], now: float) -> dict[str, Pending]:
    """Per node of `nodes`: counted copies and their requests, and those that may be
    missing from its last heartbeat (creating, or created shortly before it). Rows
    of other nodes are not read (the node/state index narrows the scan to `nodes`).

    A copy keeps an explicit request (its own or its template's) as
    `memory_request_mib`; one without (0) counts what its template version's tenants
    are learned to use now, else its limit, as its node will count it once it runs.
    So a copy placed before anything was measured does not stay counted at its limit.
    """
    known: dict[tuple[str, int], Learned] = {}

    def request(template: str, version: int, limit_mib: int, explicit_mib: int) -> int:
        if explicit_mib > 0:
            return explicit_mib * _MIB
        if (template, version) not in known:
            known[(template, version)] = learned(nodes.values(), template, version)
        return resolve_request(None, None, known[(template, version)], limit_mib)[0]

    columns = (
        Container.node,
        Container.template,
        Container.version,
        Container.memory_mib,
        Container.memory_request_mib,
    )
    if not nodes:
        return {}
    # Listing the nodes lets SQL range-scan the node/state index instead of reading
    # every tenant row (measured: 77 ms per node over 10,000 rows without it).
    counted = (Container.node.in_(list(nodes)), Container.state.in_(_COUNTED))
    totals: dict[str, list[int]] = {}  # node → [tenants, requested, creating]
    for name, tmpl, version, limit, explicit, count, creating in s.execute(
        select(*columns, func.count(), func.count().filter(Container.state == "creating"))
        .where(*counted)
        .group_by(*columns)
    ):
        t = totals.setdefault(name, [0, 0, 0])
        t[0] += int(count)
        t[1] += int(count) * request(tmpl, version, limit, explicit)
        t[2] += int(creating)
    recent: dict[str, list[int]] = {}  # node → requests, newest first
    since = or_(
        Container.state == "creating",
        *(
            (Container.node == name) & (Container.created_at > _cutoff(node))
            for name, node in nodes.items()
        ),
    )
    for name, tmpl, version, limit, explicit in s.execute(
        select(*columns).where(*counted, since).order_by(Container.created_at.desc())
    ):
        recent.setdefault(name, []).append(request(tmpl, version, limit, explicit))
    out: dict[str, Pending] = {}
    for name in set(totals) | set(recent):
        tenants, requested, creating = totals.get(name, [0, 0, 0])
        out[name] = Pending(tenants, requested, tuple(recent.get(name, ())), creating)
    return out


def _cutoff(node: Node) -> float:
    """Copies made after this may be missing from the node's last figures: those were
    measured `measured_age_seconds` before the heartbeat that carried them."""
    age = min(max(_num((node.headroom or {}).get("measured_age_seconds")), 0), 120)
    return node.last_heartbeat - RECENT - age


def node_view(
    node: Node,
    mine: Pending,
    *,
    has_template: bool,
    default_overcommit: float,
    healthy: bool = True,
    pending_disk: int = 0,
) -> NodeView:
    """Placement's view of `node`: the agent's figures plus what it may not have
    counted yet. Agents from before requests existed report only the sum of limits
    (`memory_promised_bytes`), which then serves as their committed memory.

    The control plane's own stored requests are not summed for a node that reports:
    a copy placed before its template had been measured was counted at its limit, and
    keeping that figure would pin it there for good."""
    h = node.headroom or {}
    total = _num(h.get("memory_total_bytes"))
    over = h.get("overcommit")
    overcommit = float(over) if isinstance(over, int | float) and over > 0 else default_overcommit
    reserve = (
        _num(h.get("memory_reserve_bytes"))
        if "memory_reserve_bytes" in h
        else reserve_bytes("auto", total)
    )
    if "memory_committed_bytes" in h:
        # The node's figures are the truth for what it runs (its use above requests
        # included); add what it cannot have counted yet.
        counted = h.get("memory_counted_tenants")
        missing = mine.unreported(_num(counted) if counted is not None else None)
        committed = _num(h["memory_committed_bytes"]) + missing
        requested = _num(h.get("memory_requested_bytes")) + missing
    else:
        # Not reported yet (or an agent from before requests, which reports the sum
        # of limits): our own sum of requests, or its limits, whichever is more.
        promised = _num(h.get("memory_promised_bytes"))
        committed = requested = max(promised + sum(mine.recent), mine.requested)
    disk_total = _num(h.get("disk_total_bytes"))
    return NodeView(
        name=node.name,
        health=node.health if healthy else "down",
        cordon=node.cordon,
        has_template=has_template,
        memory_total=total,
        overcommit=overcommit,
        memory_reserve=reserve,
        memory_requested=requested,
        memory_measured=_num(h.get("memory_measured_bytes")),
        memory_committed=committed,
        disk_free=max(0, _num(h.get("disk_free_bytes")) - pending_disk),
        disk_margin=disk_margin(disk_total),
        tenants=max(int(_num(h.get("tenants"))), mine.tenants),
        max_tenants=int(h["max_tenants"]) if _num(h.get("max_tenants")) else None,
        pressure=pressure(h),
    )


def pressure(h: dict[str, Any]) -> str:
    """Why a node's heartbeat says it is under memory pressure, or "" (see
    hoody.agent.pressure)."""
    if not _num(h.get("memory_pressured")):
        return ""
    return (
        f"tasks stalled on memory {_num(h.get('memory_pressure_pct'))}% of the time, "
        f"over its {h.get('memory_pressure_threshold_pct', '?')}% threshold"
    )


def estimate(view: NodeView, request: int, disk: int) -> tuple[int, str]:
    """How many more tenants of `request` bytes of memory and `disk` bytes of disk
    `view` can take now, and which figure runs out first (memory, disk, tenants)."""
    by = {"memory": max(0, view.memory_free // max(request, 1))}
    if view.disk_free or view.disk_margin:  # both 0: the node reported no disk
        by["disk"] = max(0, (view.disk_free - view.disk_margin) // max(disk, 1))
    if view.max_tenants is not None:
        by["tenants"] = max(0, view.max_tenants - view.tenants)
    limited_by = min(by, key=lambda k: by[k])
    return by[limited_by], limited_by


def capacity_json(view: NodeView, disk_total: int) -> dict[str, Any]:
    return {
        "memory_total_bytes": view.memory_total,
        "overcommit": view.overcommit,
        "memory_capacity_bytes": view.memory_capacity,
        "memory_reserve_bytes": view.memory_reserve,
        "memory_requested_bytes": view.memory_requested,
        "memory_measured_bytes": view.memory_measured,
        "memory_committed_bytes": view.memory_committed,
        "memory_free_bytes": view.memory_free,
        "disk_total_bytes": disk_total,
        "disk_free_bytes": view.disk_free,
        "disk_margin_bytes": view.disk_margin,
    }


def _num(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
