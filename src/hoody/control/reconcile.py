"""The control plane's reconcile loop: rows and nodes agree again after any crash.

A process killed between the steps of a copy or a delete leaves a row half-way, and
a node can hold a tenant no row knows of. Each round (at start, then every
`Settings.reconcile_every` s) asks every node that is up for its tenants and gives
every state a way out:

    creating   past `creating_deadline` and not this process's copy in flight:
               adopted (the row takes the node's record) if the node has the tenant,
               else failed, off any node, so it holds no capacity; its idempotency
               key is released so a retry makes a new one
    deleting   the node's delete is retried until the node confirms; then deleted
    (no row)   a tenant on a node with no live row is an orphan: logged and listed
               (`GET /api/v1/orphans`, `hoody orphans`) from the first round that sees
               it, removed only after `orphan_grace` s, never silently

A node still making a tenant (its record says `creating`) is left to finish. Rows on
a node that no longer exists are settled without it: `deleting` becomes deleted,
`creating` past its deadline fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update

from hoody.control.auth import Principal
from hoody.control.base import LIVE
from hoody.control.containers import Containers
from hoody.control.db import Container, IdempotencyKey, Node, Orphan
from hoody.errors import HoodyError, NotFound

__all__ = ["Reconcile", "ReconcileReport"]

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    """What one round did, by container or tenant id."""

    adopted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    released_keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return {k: sorted(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class _NodeRef:
    name: str
    url: str
    token: str
    up: bool


class Reconcile(Containers):
    def reconcile_once(self) -> ReconcileReport:
        """One round with every node; a node that cannot be reached is skipped."""
        report = ReconcileReport()
        with self.store.read() as s:
            nodes = [
                _NodeRef(n.name, n.url, n.agent_token, n.health == "up")
                for n in s.scalars(select(Node).order_by(Node.name))
            ]
        for node in nodes:
            if not node.up:
                continue
            try:
                tenants = {t["id"]: t for t in self._agent(node.url, node.token).tenants()}
            except HoodyError as exc:
                log.warning("reconcile: cannot list tenants of node %s: %s", node.name, exc)
                report.unreachable.append(node.name)
                continue
            self._settle_rows(node, tenants, report)
            self._track_orphans(node, tenants, report)
        self._settle_nodeless({n.name for n in nodes}, {n.name for n in nodes if not n.up}, report)
        self._release_abandoned_keys(report)
        if any((report.adopted, report.failed, report.deleted, report.orphans, report.removed)):
            log.info("reconciled: %s", report.to_json())
        return report

    def _rows(self, node: str) -> list[tuple[str, str, float]]:
        with self.store.read() as s:
            return [
                (cid, state, created)
                for cid, state, created in s.execute(
                    select(Container.id, Container.state, Container.created_at).where(
                        Container.node == node, Container.state.in_(("creating", "deleting"))
                    )
                )
            ]

    def _overdue(self, cid: str, created: float) -> bool:
        with self._in_flight_lock:
            if cid in self._in_flight:
                return False
        return self.clock() - created > self.settings.creating_deadline

    def _settle_rows(
        self, node: _NodeRef, tenants: dict[str, dict[str, Any]], report: ReconcileReport
    ) -> None:
        for cid, state, created in self._rows(node.name):
            if state == "creating":
                if not self._overdue(cid, created):
                    continue
                rec = tenants.get(cid)
                if rec is not None and rec.get("state") == "creating":
                    continue  # the node is still making it
                if rec is not None and self._adopt(cid, node.name, rec):
                    report.adopted.append(cid)
                elif rec is None and self._fail(cid):
                    report.failed.append(cid)
            else:
                try:
                    self._agent(node.url, node.token).delete(cid)
                except NotFound:
                    pass  # the node never had it: nothing to remove there
                except HoodyError as exc:
                    log.warning("reconcile: node %s could not delete %s: %s", node.name, cid, exc)
                    continue
                if self._mark_deleted(cid):
                    report.deleted.append(cid)

    def _adopt(self, cid: str, node: str, rec: dict[str, Any]) -> bool:
        with self.store.write() as s:
            row = s.scalar(select(Container).where(Container.id == cid))
            if row is None or row.state != "creating" or row.node != node:
                return False
            self._record_made(row, rec)
            s.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.container_id == cid, IdempotencyKey.state == "pending")
                .values(state="done")
            )
        log.warning("container %s was left creating; node %s has it: adopted", cid, node)
        return True

    def _fail(self, cid: str) -> bool:
        with self.store.write() as s:
            row = s.scalar(select(Container).where(Container.id == cid))
            if row is None or row.state != "creating":
                return False
            node = row.node
            # Off every node: placement no longer counts it, and deleting it asks no node.
            row.state, row.node = "failed", ""
            s.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.container_id == cid, IdempotencyKey.state == "pending"
                )
            )
        log.warning(
            "container %s was left creating and node %s does not have it: marked failed",
            cid,
            node or "(none)",
        )
        return True

    def _mark_deleted(self, cid: str) -> bool:
        with self.store.write() as s:
            done = s.execute(
                update(Container)
                .where(Container.id == cid, Container.state == "deleting")
                .values(state="deleted", deleted_at=self.clock(), ip="")
                .returning(Container.id)
            ).all()
        if done:
            log.info("container %s: delete finished on its node", cid)
        return bool(done)

    def _settle_nodeless(self, known: set[str], down: set[str], report: ReconcileReport) -> None:
        """Rows whose node is gone from the fleet, and overdue copies on down nodes."""
        with self.store.read() as s:
            rows = [
                (cid, state, node, created)
                for cid, state, node, created in s.execute(
                    select(
                        Container.id, Container.state, Container.node, Container.created_at
                    ).where(Container.state.in_(("creating", "deleting")))
                )
                if node not in known or node in down
            ]
        for cid, state, node, created in rows:
            if state == "creating" and self._overdue(cid, created):
                # A node that comes back with the tenant reports it as an orphan.
                if self._fail(cid):
                    report.failed.append(cid)
            elif state == "deleting" and node not in known and self._mark_deleted(cid):
                report.deleted.append(cid)

    def _release_abandoned_keys(self, report: ReconcileReport) -> None:
        """Pending idempotency keys whose copy died before it had a live row: released,
        so a retry with the same key makes the container instead of waiting."""
        cutoff = self.clock() - self.settings.creating_deadline
        with self._in_flight_lock:
            held = set(self._keys_in_flight)
        with self.store.write() as s:
            rows = s.execute(
                select(IdempotencyKey, Container.state)
                .outerjoin(Container, Container.id == IdempotencyKey.container_id)
                .where(IdempotencyKey.state == "pending", IdempotencyKey.created_at < cutoff)
            ).all()
            for key, state in rows:
                if (key.project_id, key.key) in held or state == "creating":
                    continue  # in flight here, or settled with its row
                if state in ("running", "stopped"):
                    key.state = "done"
                    continue
                s.delete(key)
                report.released_keys.append(key.key)
                log.warning("released idempotency key %r left by a copy that died", key.key)

    def _track_orphans(
        self, node: _NodeRef, tenants: dict[str, dict[str, Any]], report: ReconcileReport
    ) -> None:
        now = self.clock()
        # Read after the node's list: a copy registers its row before asking the node,
        # so any tenant in that list that is being made already has its row.
        with self.store.read() as s:
            owned = set(
                s.scalars(
                    select(Container.id).where(
                        Container.node == node.name, Container.state.in_(LIVE)
                    )
                )
            )
        seen_stray = {
            tid: str(rec.get("state", ""))
            for tid, rec in tenants.items()
            if tid not in owned and rec.get("state") != "creating"
        }
        # A delete or a failed copy's undo that finished between the node's list and
        # our read of the rows looks like a stray for one round: only a tenant seen
        # stray twice in a row is an orphan (its first sighting is when it was seen).
        with self._in_flight_lock:
            earlier = self._suspects.get(node.name, {})
            self._suspects[node.name] = {t: earlier.get(t, now) for t in seen_stray}
        strays = {t: st for t, st in seen_stray.items() if t in earlier}
        due: list[str] = []
        with self.store.write() as s:
            known = {o.tenant: o for o in s.scalars(select(Orphan).where(Orphan.node == node.name))}
            for tid, state in strays.items():
                orphan = known.get(tid)
                if orphan is None:
                    s.add(
                        Orphan(
                            node=node.name,
                            tenant=tid,
                            state=state,
                            first_seen=earlier[tid],
                            last_seen=now,
                        )
                    )
                    log.warning(
                        "node %s has tenant %s, which no container row accounts for; "
                        "`hoody orphans` lists it, %s",
                        node.name,
                        tid,
                        "it is kept (no orphan grace set)"
                        if self.settings.orphan_grace is None
                        else f"removed {self.settings.orphan_grace:.0f} s after it was first seen",
                    )
                else:
                    orphan.state, orphan.last_seen = state, now
                    grace = self.settings.orphan_grace
                    if grace is not None and now - orphan.first_seen >= grace:
                        due.append(tid)
                report.orphans.append(tid)
            gone = [tid for tid in known if tid not in strays]
            if gone:
                s.execute(delete(Orphan).where(Orphan.node == node.name, Orphan.tenant.in_(gone)))
        for tid in due:
            try:
                self._agent(node.url, node.token).delete(tid)
            except NotFound:
                pass
            except HoodyError as exc:
                log.warning("could not remove orphan %s from %s: %s", tid, node.name, exc)
                continue
            with self.store.write() as s:
                s.execute(delete(Orphan).where(Orphan.node == node.name, Orphan.tenant == tid))
            log.warning(
                "removed orphan tenant %s from node %s after %.0f s of grace",
                tid,
                node.name,
                self.settings.orphan_grace or 0,
            )
            report.removed.append(tid)

    def list_orphans(self, who: Principal) -> list[dict[str, Any]]:
        """Tenants nodes have without a container row (admin), oldest first, with when
        each will be removed (`remove_at`, None when orphans are kept)."""
        who.require_admin()
        grace = self.settings.orphan_grace
        with self.store.read() as s:
            return [
                {
                    "node": o.node,
                    "tenant": o.tenant,
                    "state": o.state,
                    "first_seen": o.first_seen,
                    "last_seen": o.last_seen,
                    "remove_at": None if grace is None else o.first_seen + grace,
                }
                for o in s.scalars(select(Orphan).order_by(Orphan.first_seen, Orphan.id))
            ]

    def reconcile(self, who: Principal) -> dict[str, list[str]]:
        """Run one round now (admin); returns what it did."""
        who.require_admin()
        return self.reconcile_once().to_json()
