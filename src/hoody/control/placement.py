"""Choosing a node for a new tenant: pure functions over a snapshot of the fleet.

A limit is a cap, not a reservation: placement counts what tenants use. A node is a
candidate when it is up, not cordoned or draining, has the template version ready,
and still fits the tenant:

    memory   committed + this tenant's request + reserve <= memory x overcommit
             committed: the sum over its tenants of max(request, measured use), with
                        copies still being made (or made since the node last reported)
                        counting their request
    disk     free - pending - this tenant's expected bytes >= margin
             expected: what the template's tenants measure on disk (their own bytes),
                       not their disk limit

Among candidates:

    spread  the smallest share of its memory committed, in whole percent, then the
            fewest tenants (the default): tenants spread across the fleet, a new node
            fills up first. Whole percent: what tenants measure moves by kilobytes
            between heartbeats, and that noise must not decide between equal nodes
    pack    the least memory left that still fits (best fit): one node fills before
            the next is used, so idle nodes can be switched off

Ties go to the node with fewer tenants, then by name, so the choice is deterministic.
A refusal names the figure that refused: requested memory, measured memory, the host
reserve, or disk. The caller (the service) builds the snapshot inside the transaction
that records the placement, which is what keeps concurrent placements from overfilling
a node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from hoody.errors import Exhausted, InvalidInput

__all__ = ["STRATEGIES", "NodeView", "Placement", "Request", "Strategy", "fmt_bytes", "place"]

Strategy = Literal["spread", "pack"]
STRATEGIES: tuple[Strategy, ...] = ("spread", "pack")

_MIB = 1 << 20


@dataclass(frozen=True)
class NodeView:
    """What placement knows of one node, in bytes. Committed and requested include
    pending copies; measured is what the node last reported."""

    name: str
    health: str = "up"  # up | down
    cordon: str = "none"  # none | cordoned | draining
    has_template: bool = True
    memory_total: int = 0
    overcommit: float = 1.0
    memory_reserve: int = 0
    memory_requested: int = 0
    memory_measured: int = 0
    memory_committed: int = 0
    disk_free: int = 0
    disk_margin: int = 0
    tenants: int = 0
    max_tenants: int | None = None
    pressure: str = ""  # why the node is under memory pressure; "" when it is not

    @property
    def memory_capacity(self) -> int:
        return int(self.memory_total * self.overcommit)

    @property
    def memory_free(self) -> int:
        """What placement may still give out: capacity less reserve less committed."""
        return self.memory_capacity - self.memory_reserve - self.memory_committed


@dataclass(frozen=True)
class Request:
    """A tenant to place: its memory limit (MiB), the memory placement counts for it
    (bytes) and where that figure came from, and the disk it is expected to use."""

    template: str
    version: int
    memory_mib: int
    memory_request: int
    request_source: str = "limit"  # asked | template | learned | limit
    disk: int = 0


@dataclass(frozen=True)
class Placement:
    """The chosen node and why, in words stored in the container's `placement` field."""

    node: str
    strategy: Strategy
    explanation: str
    skipped: dict[str, str] = field(default_factory=dict)


def fmt_bytes(value: int) -> str:
    mib = value // _MIB if value >= 0 else -((-value) // _MIB)
    return f"{mib / 1024:.1f} GiB" if abs(mib) >= 1024 else f"{mib} MiB"


def _memory_reason(node: NodeView, req: Request) -> str | None:
    need = req.memory_request
    if node.memory_committed + need + node.memory_reserve <= node.memory_capacity:
        return None
    f = fmt_bytes
    # Which figure refused it: the tenant alone, the reserve (it would fit without),
    # or the tenants already there, by what counted more for them.
    if need > node.memory_capacity:
        figure = f"this tenant's request alone ({f(need)}, {req.request_source})"
    elif node.memory_committed + need <= node.memory_capacity:
        figure = f"the host reserve ({f(node.memory_reserve)})"
    elif node.memory_measured > node.memory_requested:
        figure = "measured use"
    else:
        figure = "requested memory"
    return (
        f"full (memory, refused by {figure}: {f(node.memory_committed)} committed "
        f"({f(node.memory_requested)} requested, {f(node.memory_measured)} measured) "
        f"+ {f(need)} for this tenant + {f(node.memory_reserve)} reserve > "
        f"{f(node.memory_capacity)} capacity ({f(node.memory_total)} x {node.overcommit:g}))"
    )


def _skip_reason(node: NodeView, req: Request) -> str | None:
    if node.health != "up":
        return "down (missed heartbeats)"
    if node.cordon != "none":
        return node.cordon
    if not node.has_template:
        return f"does not have template {req.template} v{req.version} yet"
    if node.pressure:
        return f"under memory pressure ({node.pressure}); putting idle tenants to sleep"
    if node.max_tenants is not None and node.tenants >= node.max_tenants:
        return f"full ({node.tenants} of {node.max_tenants} tenants)"
    memory = _memory_reason(node, req)
    if memory is not None:
        return memory
    # disk_free 0 without a margin: the node reported no disk (unknown, not full).
    if (node.disk_free or node.disk_margin) and node.disk_free - req.disk < node.disk_margin:
        return (
            f"full (disk, refused by measured disk: {fmt_bytes(node.disk_free)} free, "
            f"{fmt_bytes(req.disk)} expected for this tenant, "
            f"{fmt_bytes(node.disk_margin)} margin kept)"
        )
    return None


def _share(node: NodeView) -> int:
    """Percent of what the node may give out that is committed."""
    room = node.memory_capacity - node.memory_reserve
    return 100 if room <= 0 else node.memory_committed * 100 // room


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
            f"no node can take a tenant of {req.template} v{req.version} "
            f"({fmt_bytes(req.memory_request)} requested, {req.request_source}; "
            f"limit {req.memory_mib} MiB) ({detail}); add a node with "
            "`hoody node serve --join`, uncordon one, raise a node's overcommit "
            "(`hoody node set --overcommit`), or delete tenants"
        )
    if strategy == "spread":
        chosen = min(candidates, key=lambda n: (_share(n), n.tenants, n.name))
        why = f"the least of its memory committed ({_share(chosen)} %, then fewest tenants)"
    else:
        chosen = min(candidates, key=lambda n: (n.memory_free, n.tenants, n.name))
        why = "the least memory free (best fit)"
    after = chosen.memory_free - req.memory_request
    others = [n for n in candidates if n is not chosen]
    parts = [
        f"{strategy}: {chosen.name} has {why} "
        f"({fmt_bytes(after)} left after this tenant's {fmt_bytes(req.memory_request)} "
        f"request ({req.request_source}), {chosen.tenants} tenants)"
    ]
    if others:
        parts.append(
            "other candidates: "
            + ", ".join(f"{n.name} {fmt_bytes(n.memory_free)} free" for n in others)
        )
    if skipped:
        parts.append("skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    return Placement(chosen.name, strategy, "; ".join(parts), skipped)
