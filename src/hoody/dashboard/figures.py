"""The fleet in numbers, read from the control plane's database: what the dashboard
shows and /metrics exports.

Everything here is a read of the store (plus `sample`, which appends one history
point), so any control plane process of a fleet computes the same figures. Node
figures come from the headroom each node sends with its heartbeats (see
`hoody.agent.node_info`); tenant counts from the containers table.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Text, cast, func, or_, select, text
from sqlalchemy.exc import IntegrityError

from hoody.control.base import LIVE, check_text, num
from hoody.control.db import Container, FleetSample, Node, Store, Template
from hoody.control.nodes import node_state
from hoody.errors import InvalidInput

__all__ = ["FleetFigures"]

# What a node keeps for itself when we estimate how many more tenants fit: the agent,
# page cache for templates, and a margin so the kernel never reclaims under pressure.
DEFAULT_RESERVE_FRACTION = 0.10
SORTS: dict[str, Any] = {
    "newest": Container.seq.desc(),
    "oldest": Container.seq.asc(),
    "id": Container.id.asc(),
    "memory": Container.memory_mib.desc(),
    "disk": Container.disk_mib.desc(),
}


def _node_figures(
    node: Node, counts: dict[str, int], estimates: list[dict[str, Any]]
) -> dict[str, Any]:
    h = node.headroom or {}
    total = num(h.get("memory_total_bytes"))
    available = num(h.get("memory_available_bytes"))
    cpus = max(1, num(h.get("cpus")))
    load = float(h.get("load_1m") or 0.0)
    return {
        "name": node.name,
        "state": node_state(node),
        "tenants": sum(counts.values()),
        "running": counts.get("running", 0),
        "states": counts,
        "memory_total_bytes": total,
        "memory_used_bytes": max(0, total - available) if total else 0,
        "memory_available_bytes": available,
        # placement's sum of working sets where the node reports it, else ours
        "tenant_memory_bytes": num(h.get("memory_measured_bytes"))
        or num(h.get("tenant_memory_bytes")),
        "memory_reserve_bytes": num(h.get("memory_reserve_bytes"))
        or int(total * DEFAULT_RESERVE_FRACTION),
        "cpus": cpus,
        "load_1m": round(load, 2),
        "cpu_load": round(load / cpus, 3),
        "disk_total_bytes": num(h.get("disk_total_bytes")),
        "disk_free_bytes": num(h.get("disk_free_bytes")),
        "disk_tenants_bytes": num(h.get("tenant_disk_bytes")),
        "disk_shared_bytes": num(h.get("shared_disk_bytes")),
        "disk_templates_bytes": num(h.get("template_disk_bytes")),
        "ksm_profit_bytes": num(h.get("ksm_profit_bytes")),
        "ksmd_cpu_percent": float(h.get("ksmd_cpu_percent") or 0.0),
        "ksmd_cpu_seconds": float(h.get("ksmd_cpu_seconds") or 0.0),
        "monthly_cost": node.monthly_cost,
        "currency": node.currency or "USD",
        "last_heartbeat": node.last_heartbeat,
        # placement's own answer, per template version: how many more it would place
        "estimates": [
            {k: e.get(k) for k in ("template", "version", "further_tenants", "limited_by")}
            for e in estimates
        ],
        "headroom": h,
    }


def _room(nodes: list[dict[str, Any]], tenants: int) -> dict[str, Any]:
    """How many more tenants fit at today's measured memory use per tenant.

    Per node that takes tenants (up, not cordoned): its available memory less its
    host reserve (as the node reports it; else 10 %), divided by the fleet's average
    use per running tenant. The average is
    the tenants' own cgroup memory where nodes report it, else (older agents) the
    node's used memory over its tenants, which also counts the host's own use and so
    errs low."""
    measured = [n for n in nodes if n["running"] and n["tenant_memory_bytes"]]
    if measured:
        per_tenant = sum(n["tenant_memory_bytes"] for n in measured) / sum(
            n["running"] for n in measured
        )
        basis = "measured tenant memory (cgroups)"
    else:
        used = [n for n in nodes if n["tenants"] and n["memory_used_bytes"]]
        per_tenant = (
            sum(n["memory_used_bytes"] for n in used) / sum(n["tenants"] for n in used)
            if used
            else 0.0
        )
        basis = "node memory in use per tenant (includes the host's own use)"
    more = None
    if per_tenant > 0:
        more = 0
        for n in nodes:
            if n["state"] != "up":
                continue
            free = max(0.0, n["memory_available_bytes"] - n["memory_reserve_bytes"])
            more += math.floor(free / per_tenant)
    return {
        "more_tenants": more,
        "memory_per_tenant_bytes": round(per_tenant),
        "basis": basis if per_tenant else "no tenants yet to measure",
        "reserve_fraction": DEFAULT_RESERVE_FRACTION,
        "tenants": tenants,
    }


def _bill(nodes: list[dict[str, Any]]) -> tuple[float, str, bool]:
    """(sum of node costs, currency, every node has a cost). Mixed currencies are
    not converted: the currency reads e.g. 'USD+EUR' and the sum is not meaningful."""
    costs = [n for n in nodes if n["monthly_cost"] is not None]
    currencies = sorted({n["currency"] for n in costs}) or ["USD"]
    total = round(sum(float(n["monthly_cost"]) for n in costs), 2)
    return total, "+".join(currencies), len(costs) == len(nodes) and bool(nodes)


def _used(usage: dict[str, dict[str, Any]], node: str, cid: str, i: int) -> int | None:
    pair = usage.get(node, {}).get(cid)
    return int(pair[i]) if isinstance(pair, list) and len(pair) == 2 else None


class FleetFigures:
    """Reads of the fleet for the dashboard and /metrics. Thread-safe."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        estimates: Callable[[], dict[str, list[dict[str, Any]]]] | None = None,
    ) -> None:
        """`estimates` gives placement's per-node estimates of further tenants per
        template version (`Fleet.list_nodes`), shown next to the measured figures."""
        self.store = store
        self.clock = clock
        self.estimates = estimates

    def change_mark(self) -> int:
        """A number that moves whenever a tenant is added, removed or changes state, or
        a node's state or cost changes, in any process (triggers of migration 0600)."""
        with self.store.engine.connect() as conn:
            if self.store.is_postgres:
                value = conn.execute(text("SELECT last_value FROM fleet_change_seq")).scalar()
            else:
                value = conn.execute(text("SELECT n FROM fleet_changes WHERE id = 1")).scalar()
        return int(value or 0)

    def summary(self) -> dict[str, Any]:
        """The headline and one entry per node."""
        with self.store.read() as s:
            rows = s.execute(
                select(Container.node, Container.state, func.count())
                .where(Container.state.in_(LIVE))
                .group_by(Container.node, Container.state)
            ).all()
            nodes = list(s.scalars(select(Node).order_by(Node.name)))
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for node_name, state, count in rows:
            counts[node_name][state] = int(count)
        estimates = self.estimates() if self.estimates else {}
        figures = [
            _node_figures(n, counts.get(n.name, {}), estimates.get(n.name, [])) for n in nodes
        ]
        tenants = sum(sum(c.values()) for c in counts.values())
        running = sum(c.get("running", 0) for c in counts.values())
        bill, currency, complete = _bill(figures)
        return {
            "at": self.clock(),
            "headline": {
                "tenants": tenants,
                "running": running,
                "states": {
                    state: sum(c.get(state, 0) for c in counts.values())
                    for state in sorted({st for c in counts.values() for st in c})
                },
                "nodes": len(figures),
                "nodes_up": sum(1 for n in figures if n["state"] != "down"),
                "monthly_bill": bill,
                "currency": currency,
                "bill_complete": complete,
                "cost_per_tenant": round(bill / tenants, 4) if tenants and bill else None,
                **_room(figures, tenants),
            },
            "nodes": figures,
        }

    def sample(self, every: float) -> bool:
        """Record one history point for the current `every`-second bucket; False when
        another process already did."""
        summary = self.summary()
        h = summary["headline"]
        now = summary["at"]
        try:
            with self.store.write() as s:
                s.add(
                    FleetSample(
                        bucket=int(now // every),
                        at=now,
                        tenants=h["tenants"],
                        running=h["running"],
                        nodes=h["nodes"],
                        nodes_up=h["nodes_up"],
                        monthly_cost=h["monthly_bill"],
                        currency=h["currency"][:16],
                        memory_used_bytes=sum(n["memory_used_bytes"] for n in summary["nodes"]),
                        memory_total_bytes=sum(n["memory_total_bytes"] for n in summary["nodes"]),
                    )
                )
        except IntegrityError:
            return False
        return True

    def history(self, since: float | None = None, limit: int = 2000) -> dict[str, Any]:
        """Samples since `since` (default: the last 30 days), oldest first, as columns
        ready for the plots; plus cost per tenant by tenant count (latest bill for each
        count), sorted by count."""
        since = since if since is not None else self.clock() - 30 * 86400
        with self.store.read() as s:
            rows = list(
                s.scalars(
                    select(FleetSample)
                    .where(FleetSample.at >= since)
                    .order_by(FleetSample.at.desc())
                    .limit(limit)
                )
            )
        rows.reverse()
        by_count: dict[int, float] = {}
        for r in rows:
            if r.tenants and r.monthly_cost:
                by_count[r.tenants] = r.monthly_cost / r.tenants
        counts = sorted(by_count)
        return {
            "at": [r.at for r in rows],
            "tenants": [r.tenants for r in rows],
            "running": [r.running for r in rows],
            "monthly_cost": [r.monthly_cost for r in rows],
            "cost_by_count": {
                "tenants": counts,
                "cost_per_tenant": [round(by_count[c], 4) for c in counts],
            },
        }

    def tenants(
        self,
        *,
        search: str | None = None,
        node: str | None = None,
        template: str | None = None,
        state: str | None = None,
        metadata: dict[str, str] | None = None,
        page: int = 1,
        per_page: int = 50,
        sort: str = "newest",
    ) -> dict[str, Any]:
        """One page of tenants matching the filters, with the total count.

        `search` matches part of the id or of the metadata JSON. Deleted tenants show
        only with state="deleted". Offset paging: pages stay cheap because every filter
        and order runs in the database (the node/state index, the primary key)."""
        if not 1 <= per_page <= 200:
            raise InvalidInput(f"per_page {per_page} is invalid; give 1 to 200")
        if not 1 <= page <= 1_000_000:
            raise InvalidInput(f"page {page} is invalid; give 1 or more")
        if sort not in SORTS:
            raise InvalidInput(f"sort {sort!r} is invalid; use one of {', '.join(SORTS)}")
        where = []
        if state:
            where.append(Container.state == check_text(state, "state", 16))
        else:
            where.append(Container.state != "deleted")
        if node:
            where.append(Container.node == check_text(node, "node", 63))
        if template:
            where.append(Container.template == check_text(template, "template", 63))
        for k, v in (metadata or {}).items():
            check_text(k, "metadata key", 100)
            where.append(Container.meta[k].as_string() == check_text(v, "metadata value", 500))
        if search:
            check_text(search, "search", 200)
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern += "%"
            where.append(
                or_(
                    Container.id.like(pattern, escape="\\"),
                    cast(Container.meta, Text).like(pattern, escape="\\"),
                )
            )
        with self.store.read() as s:
            total = int(s.scalar(select(func.count()).select_from(Container).where(*where)) or 0)
            rows = list(
                s.scalars(
                    select(Container)
                    .where(*where)
                    .order_by(SORTS[sort])
                    .offset((page - 1) * per_page)
                    .limit(per_page)
                )
            )
            # From the templates table: a DISTINCT over every container row costs a
            # scan of 10,000 rows on each page of the table.
            templates = list(s.scalars(select(Template.name).order_by(Template.name)))
            node_names = list(s.scalars(select(Node.name).order_by(Node.name)))
            usage: dict[str, dict[str, Any]] = {
                name: blob or {}
                for name, blob in s.execute(
                    select(Node.name, Node.tenant_usage).where(
                        Node.name.in_({r.node for r in rows})
                    )
                )
            }
        now = self.clock()
        return {
            "total": total,
            "page": page,
            "per_page": per_page,
            "pages": max(1, math.ceil(total / per_page)),
            "items": [
                {
                    "id": r.id,
                    "project_id": r.project_id,
                    "template": r.template,
                    "version": r.version,
                    "node": r.node,
                    "state": r.state,
                    "memory_mib": r.memory_mib,
                    "disk_mib": r.disk_mib,
                    # measured, as the node last reported it; None: not reported yet
                    "memory_bytes": _used(usage, r.node, r.id, 0),
                    "disk_bytes": _used(usage, r.node, r.id, 1),
                    "metadata": r.meta,
                    "created_at": r.created_at,
                    "age_seconds": max(0.0, now - r.created_at),
                    "url": r.url,
                }
                for r in rows
            ],
            "choices": {"nodes": node_names, "templates": templates},
        }
