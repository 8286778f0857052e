"""Choosing a node for a new tenant: pure functions over a snapshot of the fleet.

A node is a candidate when it is up, not cordoned or draining, has the requested
template version ready, and still fits the tenant's memory and disk after everything
already promised on it, including placements still being created. Among candidates:

    spread  the most memory headroom left after this tenant (the default): tenants
            spread across the fleet, a new node fills up first
    pack    the least headroom that still fits (best fit): one node fills before the
            next is used, so idle nodes can be switched off

Ties go to the node with fewer tenants, then by name, so the choice is deterministic.
The caller (the service) builds the snapshot inside the transaction that records the
placement, which is what keeps concurrent placements from overfilling a node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from hoody.errors import Exhausted, InvalidInput

__all__ = ["STRATEGIES", "NodeView", "Placement", "Request", "Strategy", "place"]

Strategy = Literal["spread", "pack"]
STRATEGIES: tuple[Strategy, ...] = ("spread", "pack")

_MIB = 1 << 20


@dataclass(frozen=True)
class NodeView:
    """What placement knows of one node. Byte counts; `promised` includes pending."""

    name: str
    health: str = "up"  # up | down
    cordon: str = "none"  # none | cordoned | draining
    has_template: bool = True
    memory_total: int = 0
    memory_promised: int = 0
    disk_free: int = 0
    tenants: int = 0
    max_tenants: int | None = None

    @property
    def memory_headroom(self) -> int:
        return self.memory_total - self.memory_promised


@dataclass(frozen=True)
class Request:
    template: str
    version: int
    memory_mib: int
    disk_mib: int


@dataclass(frozen=True)
class Placement:
    """The chosen node and why, in words stored in the container's `placement` field."""

    node: str
    strategy: Strategy
    explanation: str
    skipped: dict[str, str] = field(default_factory=dict)


def _skip_reason(node: NodeView, req: Request) -> str | None:
    if node.health != "up":
        return "down (missed heartbeats)"
    if node.cordon != "none":
        return node.cordon
    if not node.has_template:
        return f"does not have template {req.template} v{req.version} yet"
    if node.max_tenants is not None and node.tenants >= node.max_tenants:
        return f"full ({node.tenants} of {node.max_tenants} tenants)"
    need = req.memory_mib * _MIB
    if node.memory_headroom < need:
        return (
            f"full (memory: {_mib(node.memory_headroom)} free after promised limits, "
            f"{req.memory_mib} MiB needed)"
        )
    if node.disk_free and node.disk_free < req.disk_mib * _MIB:
        return f"full (disk: {_mib(node.disk_free)} free, {req.disk_mib} MiB needed)"
    return None


def _mib(value: int) -> str:
    mib = value // _MIB
    return f"{mib / 1024:.1f} GiB" if abs(mib) >= 1024 else f"{mib} MiB"


def place(nodes: Sequence[NodeView], req: Request, strategy: Strategy = "spread") -> Placement:
    """The node for `req` among `nodes` by `strategy`.

    Raises InvalidInput for an unknown strategy and Exhausted, naming every node and
    why it was skipped, when no node qualifies.
    """
    if strategy not in STRATEGIES:
        raise InvalidInput(f"placement strategy {strategy!r} is unknown; use spread or pack")
    skipped: dict[str, str] = {}
    candidates: list[NodeView] = []
    for node in sorted(nodes, key=lambda n: n.name):
        reason = _skip_reason(node, req)
        if reason is None:
            candidates.append(node)
        else:
            skipped[node.name] = reason
    if not candidates:
        detail = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "no nodes"
        raise Exhausted(
            f"no node can take a {req.memory_mib} MiB tenant of {req.template} "
            f"v{req.version} ({detail}); add a node with `hoody node serve --join`, "
            "uncordon one, or delete tenants"
        )
    sign = -1 if strategy == "spread" else 1
    chosen = min(candidates, key=lambda n: (sign * n.memory_headroom, n.tenants, n.name))
    after = chosen.memory_headroom - req.memory_mib * _MIB
    others = [n for n in candidates if n is not chosen]
    why = "most" if strategy == "spread" else "least (best fit)"
    parts = [
        f"{strategy}: {chosen.name} has the {why} memory headroom "
        f"({_mib(after)} left after this {req.memory_mib} MiB tenant, "
        f"{chosen.tenants} tenants)"
    ]
    if others:
        parts.append(
            "other candidates: "
            + ", ".join(f"{n.name} {_mib(n.memory_headroom)} free" for n in others)
        )
    if skipped:
        parts.append("skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    return Placement(chosen.name, strategy, "; ".join(parts), skipped)
