"""Sleep: idle tenants asleep, woken by their next request (the `Sleep` area of Fleet).

    sleep            project token → the tenant sleeps on its node (stopped or frozen)
    wake             project or router token → it runs again; a router calls this for
                     the first request to a sleeping tenant and holds that request
    report_activity  router → which tenants got requests, and how long ago; and which
                     it woke at their node (recorded running without asking the node)
    sleep_idle_once  background: running tenants idle past their `sleep_after` sleep
    sync_sleepers    heartbeat: tenants a node put to sleep itself (memory pressure)

Idleness is decided here rather than by a router or a node: every router reports the
requests it served, and the control plane keeps the latest per tenant (`active_at`),
so with several routers a tenant is idle only when none of them served it lately.
Reports carry ages, not timestamps, so the routers' clocks do not matter. A sleep is
claimed by a conditional UPDATE (running and still idle → sleeping) before its node is
asked, so several control plane processes never sleep one tenant twice and a request
reported in the meantime wins.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BindParameter, Table, bindparam, case, select, update

from hoody.agent.spec import SLEEP_MODES
from hoody.control.auth import Principal
from hoody.control.base import FleetBase
from hoody.control.containers import _container_json
from hoody.control.db import Container, Node
from hoody.errors import HoodyError, InvalidInput

__all__ = ["MAX_ACTIVITY_BATCH", "Sleep", "Woken"]

log = logging.getLogger(__name__)

MAX_ACTIVITY_BATCH = 20_000
# Reported ages beyond this are not news: idle timeouts are shorter than a day.
_MAX_AGE = 86_400.0
# Sleeps asked of nodes at once by one sweep: a stopped sleep mostly waits (for the
# app to exit on SIGTERM), so many can overlap.
_SLEEPERS = 16


@dataclass(frozen=True)
class Woken:
    """What a wake did: the sleep the tenant was woken from ("frozen", "stopped", or ""
    when it was awake), the node agent's round trip and the node's own share (ms)."""

    was: str
    agent_ms: float
    node_ms: float


class Sleep(FleetBase):
    def sleep(self, who: Principal, cid: str, mode: str | None = None) -> dict[str, Any]:
        """Put container `cid` to sleep in `mode` (default: its own sleep mode).

        Harmless when it sleeps already. Conflict unless it runs; NotFound when it is
        not the caller's.
        """
        if mode is not None and mode not in SLEEP_MODES:
            raise InvalidInput(f"sleep mode {mode!r} is invalid; use stopped or frozen")
        _, node = self._node_of(who.project_filter(), cid, "sleep")
        rec = self._agent(node.url, node.agent_token).sleep(cid, mode)
        return self._record_state(cid, rec)

    def wake(self, who: Principal, cid: str) -> dict[str, Any]:
        """Wake container `cid`: a thaw when frozen, a start when stopped; harmless when
        it runs. Project tokens wake their own containers, router tokens any."""
        return self.wake_traced(who, cid)[0]

    def wake_traced(self, who: Principal, cid: str) -> tuple[dict[str, Any], Woken]:
        """`wake`, and what it did and where its time went (routers read both)."""
        project = None if who.scope in ("admin", "router") else who.project_filter()
        # A router's wake error reaches the customer's browser: no node name there.
        _, node = self._node_of(project, cid, "wake", named=who.is_admin)
        start = time.perf_counter()
        rec, woke, node_ms = self._agent(node.url, node.agent_token).wake_from(cid)
        agent_ms = (time.perf_counter() - start) * 1000
        return self._record_state(cid, rec, active=True), Woken(woke, agent_ms, node_ms)

    def _record_state(self, cid: str, rec: dict[str, Any], active: bool = False) -> dict[str, Any]:
        with self.store.write() as s:
            row = self._find(s, None, cid)
            row.state = str(rec.get("state", row.state))
            row.asleep = str(rec.get("sleep_mode") or "") if row.state == "sleeping" else ""
            if active:
                row.active_at = max(row.active_at, self.clock())
            return _container_json(row)

    def report_activity(
        self, who: Principal, seen: dict[str, float], woken: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Record that each container in `seen` got a request `seen[cid]` seconds ago,
        and that each in `woken` was woken at its node `woken[cid]` seconds ago.

        Only routers (and admins) report. Unknown ids are ignored: a router may report
        a tenant deleted a moment ago. A woken container the rows still have sleeping
        is recorded running, active since its wake, without asking its node again: if
        the node put it back to sleep since, that sleep is later than the wake and the
        node's next heartbeat records it (sync_sleepers). Returns how many were recorded.
        """
        who.require_router()
        woken = woken or {}
        if len(seen) + len(woken) > MAX_ACTIVITY_BATCH:
            raise InvalidInput(
                f"{len(seen) + len(woken)} entries in one activity report; send at most "
                f"{MAX_ACTIVITY_BATCH}"
            )
        now = self.clock()
        params, awake = _stamps(now, seen), _stamps(now, woken)
        table = cast(Table, Container.__table__)
        at: BindParameter[float] = bindparam("b_at")
        record_wake = (
            update(table)
            .where(table.c.id == bindparam("b_cid"), table.c.state == "sleeping")
            .values(
                state="running",
                asleep="",
                active_at=case((table.c.active_at < at, at), else_=table.c.active_at),
            )
        )
        record_seen = (
            update(table)
            .where(table.c.id == bindparam("b_cid"), table.c.active_at < at)
            .values(active_at=at)
        )
        woke = 0
        if params or awake:
            with self.store.write() as s:
                if awake:
                    woke = s.connection().execute(record_wake, awake).rowcount
                if params:
                    s.connection().execute(record_seen, params)
        return {"recorded": len(params), "woken": max(0, woke)}

    def sleep_idle_once(self) -> list[str]:
        """Put every running container idle past its `sleep_after` to sleep; returns
        the ids put to sleep. Containers on nodes that are down wait for their node."""
        now = self.clock()
        with self.store.read() as s:
            nodes = {n.name: n for n in s.scalars(select(Node)) if n.health == "up"}
            rows = s.execute(
                select(
                    Container.id,
                    Container.node,
                    Container.sleep_after,
                    Container.sleep_mode,
                    Container.active_at,
                    Container.created_at,
                ).where(Container.state == "running", Container.sleep_after.is_not(None))
            ).all()
        due = [
            (cid, node, mode)
            for cid, node, after, mode, active, created in rows
            if node in nodes and after is not None and max(active, created) + after <= now
        ]
        if not due:
            return []
        with ThreadPoolExecutor(min(_SLEEPERS, len(due)), "hoody-sleeper") as pool:
            done = pool.map(lambda d: self._sleep_idle(d[0], nodes[d[1]], d[2], now), due)
            return [cid for cid, slept in zip((d[0] for d in due), done, strict=True) if slept]

    def _sleep_idle(self, cid: str, node: Node, mode: str, now: float) -> bool:
        table = cast(Table, Container.__table__)
        with self.store.write() as s:
            claimed = s.connection().execute(
                update(table)
                .where(
                    table.c.id == cid,
                    table.c.state == "running",
                    table.c.sleep_after.is_not(None),
                    table.c.active_at + table.c.sleep_after <= now,
                    table.c.created_at + table.c.sleep_after <= now,
                )
                .values(state="sleeping", asleep=mode)
            )
            if claimed.rowcount != 1:
                return False  # woken, reported active, or claimed by another process
        try:
            rec = self._agent(node.url, node.agent_token).sleep(cid, mode)
        except HoodyError as exc:
            log.warning("could not put idle tenant %s to sleep: %s", cid, exc.message)
            with self.store.write() as s:
                s.execute(
                    update(Container)
                    .where(Container.id == cid, Container.state == "sleeping")
                    .values(state="running", asleep="")
                )
            return False
        log.info("tenant %s was idle past its sleep_after; asleep (%s)", cid, mode)
        self._record_state(cid, rec)
        return True

    def sync_sleepers(self, node: str, sleeping: dict[str, dict[str, Any]]) -> None:
        """Record the tenants node `node` says sleep: id → {"mode", "at": when it slept,
        node clock}.

        Only running → sleeping is applied, and only for a sleep that happened after
        the container's last activity here: a heartbeat built before a wake must not
        put the woken tenant back to sleep. The other way (a row says sleeping, the
        node runs it) costs at most one wake that finds it running.
        """
        if not sleeping:
            return
        with self.store.write() as s:
            rows = s.scalars(
                select(Container).where(
                    Container.node == node,
                    Container.state == "running",
                    Container.id.in_(list(sleeping)),
                )
            )
            for row in rows:
                entry = sleeping[row.id]
                if float(entry.get("at", 0)) > row.active_at:
                    row.state, row.asleep = "sleeping", str(entry.get("mode") or "stopped")


def _stamps(now: float, ages: dict[str, float]) -> list[dict[str, Any]]:
    """`{cid: seconds ago}` from a router → UPDATE parameters (id, when), past ones
    dropped; an age that is not seconds >= 0 is refused."""
    params = []
    for cid, age in ages.items():
        if not isinstance(age, int | float) or isinstance(age, bool) or age < 0:
            raise InvalidInput(f"the age reported for {cid[:63]!r} must be seconds >= 0")
        if age <= _MAX_AGE and isinstance(cid, str) and len(cid) <= 63:
            params.append({"b_cid": cid, "b_at": now - float(age)})
    return params
