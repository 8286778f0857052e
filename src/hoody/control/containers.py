"""Containers: copy (with idempotency and placement), list, get, start, stop, delete.

A copy is three steps, and only the middle one talks to a node:

    reserve   one transaction: place the tenant and record it as `creating`
    agent     the chosen node makes it (on an unreachable node: mark it down, place again)
    finish    record what the node made (state, address, limits)

Each step registers its undo (`hoody.undo`): a failure at any step removes the record
(and the idempotency key) and whatever the node made, so a failed copy leaves nothing;
a process that dies half-way leaves a `creating` row that the reconcile loop
(reconcile.py) adopts or fails.

Placement only picks nodes that hold the template version `ready`; when none of those
can take the tenant but a node that could is still to receive the version (or is
receiving it), the copy waits for the transfer (`Settings.replica_wait`) instead of
failing half-way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hoody.agent.client import AgentClient
from hoody.agent.spec import TenantSpec, check_name
from hoody.control import capacity, quotas
from hoody.control.auth import Principal
from hoody.control.base import FleetBase, check_int, check_text
from hoody.control.claims import tenant_url
from hoody.control.db import (
    Container,
    IdempotencyKey,
    Node,
    Project,
    TemplateReplica,
    TemplateVersion,
)
from hoody.control.placement import NodeView, Placement, Request, Strategy, place
from hoody.errors import (
    Conflict,
    Exhausted,
    Forbidden,
    HoodyError,
    HostError,
    InvalidInput,
    NotFound,
)
from hoody.undo import Undo

__all__ = ["Containers", "Reservation"]

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class Reservation:
    """A placed container recorded as `creating`, not yet made on its node."""

    cid: str
    project: int
    node: str
    url: str
    token: str
    version: int
    key: str | None


class _StillReceiving(Exhausted):
    """No node holds the version ready, but some are receiving it: wait, then retry."""


class _Unreachable(HostError):
    """The chosen node could not be connected to: nothing reached it; place again."""


def _request_hash(template: str, spec: TenantSpec) -> str:
    """What an Idempotency-Key is bound to: the same request hashes the same, and keys
    made before the spec was a model keep their hash (sleep counts only when given)."""
    body: dict[str, Any] = {
        "template": template,
        "name": spec.name,
        "version": spec.version,
        "limits": spec.limits.model_dump(exclude_none=True) if spec.limits else None,
        "env": spec.env,
        "firewall": spec.firewall,
        "metadata": spec.metadata,
    }
    if spec.sleep is not None and (sleep := spec.sleep.model_dump(exclude_none=True)):
        body["sleep"] = sleep
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class Containers(FleetBase):
    def copy(
        self,
        project: int,
        template: str,
        spec: TenantSpec | None = None,
        *,
        idempotency_key: str | None = None,
        strategy: Strategy | None = None,
    ) -> dict[str, Any]:
        """Create a tenant of `template` in `project` on the node placement picks.

        Returns the container (state running unless the agent says otherwise). With
        `idempotency_key`, every call with the same key in this project returns the
        same container, also when calls race; the same key with a different request
        is a Conflict. On failure nothing is left: no container row, no key row.
        """
        check_int(project, "project")
        check_name(template)
        spec = spec or TenantSpec()
        if idempotency_key is None:
            return self._copy(project, template, spec, None, strategy)
        if not isinstance(idempotency_key, str) or not _KEY.match(idempotency_key):
            raise InvalidInput(
                "Idempotency-Key is invalid; give 1-255 printable ASCII characters, "
                "such as the billing event id"
            )
        with self.store.read() as s:
            # Before the key insert, whose foreign key would otherwise fail on a missing
            # project and look like a held key.
            if s.get(Project, project) is None:
                raise NotFound(f"project {project} does not exist; create it first")
        digest = _request_hash(template, spec)
        done = self._claim_or_wait(project, idempotency_key, digest)
        if done is not None:
            return done
        held = (project, idempotency_key)
        with self._in_flight_lock:
            self._keys_in_flight.add(held)
        try:
            return self._copy(project, template, spec, idempotency_key, strategy)
        except BaseException:
            # Release the key so a retry (or a waiting duplicate) makes the container.
            with self.store.write() as s:
                s.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.project_id == project, IdempotencyKey.key == idempotency_key
                    )
                )
            raise
        finally:
            with self._in_flight_lock:
                self._keys_in_flight.discard(held)

    def _claim_or_wait(self, project: int, key: str, digest: str) -> dict[str, Any] | None:
        """None once this call owns `key`; else the container the owner made."""
        deadline = self.clock() + self.settings.idempotency_wait
        pause = 0.02
        while True:
            try:
                with self.store.write() as s:
                    s.add(
                        IdempotencyKey(
                            project_id=project,
                            key=key,
                            request_hash=digest,
                            state="pending",
                            created_at=self.clock(),
                        )
                    )
                return None
            except IntegrityError:
                pass  # someone holds the key: read what they made
            with self.store.read() as s:
                row = s.scalar(
                    select(IdempotencyKey).where(
                        IdempotencyKey.project_id == project, IdempotencyKey.key == key
                    )
                )
                if row is None:
                    if self.clock() > deadline:  # cannot happen unless the insert is broken
                        raise Conflict(f"could not claim Idempotency-Key {key!r}; retry")
                    continue  # the owner failed and let go; try to own it
                if row.request_hash != digest:
                    raise Conflict(
                        f"Idempotency-Key {key!r} was used for a different request; "
                        "use a new key for a new request"
                    )
                if row.state == "done" and row.container_id:
                    found = s.scalar(select(Container).where(Container.id == row.container_id))
                    if found is not None:
                        return _container_json(found)
                stale = row.created_at < self.clock() - self.settings.idempotency_stale
            if stale:
                self._release_stale_key(project, key)
                continue
            if self.clock() > deadline:
                raise Conflict(
                    f"a request with Idempotency-Key {key!r} is still in progress; "
                    "retry later with the same key"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)

    def _release_stale_key(self, project: int, key: str) -> None:
        with self.store.write() as s:
            row = s.scalar(
                select(IdempotencyKey).where(
                    IdempotencyKey.project_id == project,
                    IdempotencyKey.key == key,
                    IdempotencyKey.state == "pending",
                )
            )
            if row is None:
                return
            if row.container_id:
                s.execute(
                    update(Container)
                    .where(Container.id == row.container_id, Container.state == "creating")
                    .values(state="failed")
                )
            s.delete(row)

    def _copy(
        self,
        project: int,
        template: str,
        spec: TenantSpec,
        key: str | None,
        strategy: Strategy | None,
    ) -> dict[str, Any]:
        # A node that cannot be reached is marked down and the copy is placed again
        # elsewhere, so a dead node costs a retry rather than a failed copy.
        unreachable: set[str] = set()
        waited_until: float | None = None
        while True:
            try:
                res = self.reserve(project, template, spec, key, strategy, unreachable)
            except _StillReceiving:
                now = self.clock()
                waited_until = waited_until or now + self.settings.replica_wait
                if now > waited_until:
                    raise
                if key is not None:
                    # Still alive: the reconcile loop releases keys of copies that died.
                    with self.store.write() as s:
                        s.execute(
                            update(IdempotencyKey)
                            .where(IdempotencyKey.project_id == project, IdempotencyKey.key == key)
                            .values(created_at=now)
                        )
                time.sleep(0.5)
                continue
            with self._in_flight_lock:
                self._in_flight.add(res.cid)
            try:
                made = self._make(res, template, spec)
            except _Unreachable:
                log.warning("node %s is unreachable; marked down, placing again", res.node)
                unreachable.add(res.node)
                continue
            finally:
                with self._in_flight_lock:
                    self._in_flight.discard(res.cid)
            return made

    def _make(self, res: Reservation, template: str, spec: TenantSpec) -> dict[str, Any]:
        """reserve (done; undo: drop the row) → agent copy (undo: delete it there) →
        finish. When the node cannot confirm the undo delete, the row stays `deleting`
        rather than vanishing, so the reconcile loop retries until the node confirms
        and no tenant is left running without a row."""
        on_node = {"unsure": False}
        with Undo() as undo:
            undo.add(lambda: self._drop_reservation(res, on_node["unsure"]), "drop the row")
            agent = self._agent(res.url, res.token)
            try:
                placed = spec.model_copy(update={"name": res.cid, "version": res.version})
                rec = agent.copy(template, placed)
            except BaseException as exc:
                cause = exc.__cause__ if isinstance(exc, HostError) else None
                if isinstance(cause, httpx.ConnectError):
                    # Nothing reached the node; the undo drops the row.
                    with self.store.write() as s:
                        s.execute(update(Node).where(Node.name == res.node).values(health="down"))
                    raise _Unreachable(res.node) from exc
                if cause is not None or not isinstance(exc, HoodyError):
                    # A timeout, a cut connection or our own cancel: the node may have
                    # made it after all. (An error the agent answered with means its
                    # own undo already removed everything.)
                    undo.add(lambda: self._undo_copy(agent, res, on_node), "delete on the node")
                raise
            undo.add(lambda: self._undo_copy(agent, res, on_node), "delete on the node")
            out = self.finish(res, rec)
            undo.commit()
            return out

    def _undo_copy(self, agent: AgentClient, res: Reservation, on_node: dict[str, bool]) -> None:
        try:
            agent.delete(res.cid)
        except NotFound:
            pass  # the node never made it
        except HoodyError as exc:
            on_node["unsure"] = True
            log.warning(
                "could not remove %s from %s (%s); left deleting for the reconcile loop",
                res.cid,
                res.node,
                exc.message,
            )

    def _drop_reservation(self, res: Reservation, unsure: bool) -> None:
        with self.store.write() as s:
            if unsure:
                s.execute(
                    update(Container)
                    .where(Container.id == res.cid, Container.state != "deleted")
                    .values(state="deleting")
                )
            else:
                s.execute(delete(Container).where(Container.id == res.cid))

    def reserve(
        self,
        project: int,
        template: str,
        spec: TenantSpec,
        key: str | None = None,
        strategy: Strategy | None = None,
        unreachable: set[str] | None = None,
    ) -> Reservation:
        """Place a copy and record it (state creating) in one transaction.

        Raises NotFound for an unknown template or version, Exhausted when no node can
        take it, Conflict when `name` is taken.
        """
        with self.store.write() as s:
            # Locked first: copies of one project take their quota turn by turn, from
            # any control plane process, until this row commits (SQLite: one writer).
            owner = quotas.lock(s, project, for_update=self.store.is_postgres)
            tmpl = self._visible_template(s, project, template)
            vq = select(TemplateVersion).where(TemplateVersion.template_id == tmpl.id)
            if spec.version is not None:
                vq = vq.where(TemplateVersion.version == spec.version)
            ver = s.scalar(vq.order_by(TemplateVersion.version.desc()).limit(1))
            if ver is None:
                which = f"version {spec.version}" if spec.version else "any version"
                raise NotFound(f"template {template} has no {which} on any node yet")
            asked = spec.limits.model_dump(exclude_none=True) if spec.limits else {}
            limits = {k: v for k, v in {**(ver.limits or {}), **asked}.items() if v is not None}
            memory = int(limits.get("memory_mib", self.settings.default_memory_mib))
            disk = int(limits.get("disk_mib", self.settings.default_disk_mib))
            request_mib = limits.get("memory_request_mib")
            if request_mib is not None and request_mib > memory:
                raise InvalidInput(
                    f"memory request {request_mib:g} MiB is above the memory limit {memory} "
                    "MiB; a request is the expected use, at most the limit"
                )
            used = quotas.usage(s, [project]).get(project, quotas.Usage())
            quotas.check(owner, used, memory, disk)
            placement, nodes, request, source = self._place(
                s, ver, template, memory, asked, strategy, unreachable or set()
            )
            cid = spec.name or self._new_id(s, template)
            if s.scalar(select(Container.seq).where(Container.id == cid)) is not None:
                raise Conflict(f"container name {cid} is taken; pick another or leave it out")
            s.add(
                Container(
                    id=cid,
                    project_id=project,
                    template=template,
                    version=ver.version,
                    node=placement.node,
                    state="creating",
                    placement=placement.explanation,
                    memory_mib=memory,
                    # Explicit requests only: a learned one is looked up again
                    # each time (capacity.pending), as it is learned better.
                    memory_request_mib=-(-request // (1 << 20))
                    if source in ("asked", "template")
                    else 0,
                    disk_mib=disk,
                    limits=limits,
                    meta=spec.metadata or {},
                    created_at=self.clock(),
                    active_at=self.clock(),
                )
            )
            if key is not None:
                s.execute(
                    update(IdempotencyKey)
                    .where(IdempotencyKey.project_id == project, IdempotencyKey.key == key)
                    .values(container_id=cid)
                )
            try:
                s.flush()
            except IntegrityError as exc:
                raise Conflict(f"container name {cid} is taken; pick another") from exc
            node = nodes[placement.node]
            return Reservation(
                cid, project, node.name, node.url, node.agent_token, ver.version, key
            )

    def finish(self, res: Reservation, rec: dict[str, Any]) -> dict[str, Any]:
        """Record what the node made for `res` (its agent record); returns the container.

        Conflict when the row is no longer this copy's to finish (failed by the
        reconcile loop, or taken over with a stale idempotency key): the caller's undo
        then removes the tenant from its node. A row the reconcile loop already adopted
        is returned as it is.
        """
        with self.store.write() as s:
            row = s.scalar(select(Container).where(Container.id == res.cid))
            if row is None:  # removed by a stale-key takeover meanwhile
                raise Conflict(f"container {res.cid} vanished while being created; retry the copy")
            if row.state == "creating":
                self._record_made(row, rec)
            elif row.node != res.node or row.state not in (
                "running",
                "stopped",
                "sleeping",
                "failed",
            ):
                raise Conflict(
                    f"container {res.cid} was marked {row.state} while its node made it "
                    "(the copy outlived the reconcile deadline); retry the copy"
                )
            if res.key is not None:
                s.execute(
                    update(IdempotencyKey)
                    .where(IdempotencyKey.project_id == res.project, IdempotencyKey.key == res.key)
                    .values(state="done")
                )
            return _container_json(row)

    def _record_made(self, row: Container, rec: dict[str, Any]) -> None:
        """Fill `row` from the agent's record of the tenant it made."""
        row.state = str(rec.get("state", "running"))
        row.ip = str(rec.get("ip", ""))
        row.port = int(rec.get("port", 8080))
        if self.settings.router_url:
            row.url = tenant_url(self.settings.router_url, row.id)
        elif self.settings.public_domain:
            row.url = f"https://{row.id}.{self.settings.public_domain}/"
        else:
            row.url = str(rec.get("url", ""))
        policy = rec.get("sleep")
        if isinstance(policy, dict):
            idle = policy.get("idle_seconds")
            row.sleep_after = int(idle) if isinstance(idle, int) else None
            row.sleep_mode = str(policy.get("mode") or "stopped")
        row.asleep = str(rec.get("sleep_mode") or "") if row.state == "sleeping" else ""
        row.active_at = self.clock()
        lim = rec.get("limits")
        if isinstance(lim, dict):
            row.limits = lim
            row.memory_mib = int(lim.get("memory_mib", row.memory_mib))
            row.disk_mib = int(lim.get("disk_mib", row.disk_mib))

    def _place(
        self,
        s: Session,
        ver: TemplateVersion,
        template: str,
        memory: int,
        asked: dict[str, Any],
        strategy: Strategy | None,
        unreachable: set[str],
    ) -> tuple[Placement, dict[str, Node], int, str]:
        """Place a copy of `ver` (limit `memory` MiB, `asked` its own limits); returns
        the placement, the nodes by name, the memory (bytes) counted for it and where
        that figure came from (asked, template, learned, limit)."""
        q = select(Node).order_by(Node.id)
        if self.store.is_postgres:
            # Serialises placements that could pick the same nodes, across processes;
            # the lock is held until the new container row commits.
            q = q.with_for_update()
        nodes = {n.name: n for n in s.scalars(q)}
        replicas = dict(
            s.execute(
                select(TemplateReplica.node_id, TemplateReplica.state).where(
                    TemplateReplica.version_id == ver.id
                )
            ).all()
        )
        known = capacity.learned(nodes.values(), template, ver.version)
        request, source = capacity.resolve_request(asked, ver.limits, known, memory)
        need = capacity.disk_need(known)
        pending = capacity.pending(s, nodes, self.clock())
        views: list[NodeView] = []
        for node in nodes.values():
            mine = pending.get(node.name, capacity.Pending())
            views.append(
                capacity.node_view(
                    node,
                    mine,
                    has_template=replicas.get(node.id) == "ready",
                    default_overcommit=self.settings.memory_overcommit,
                    healthy=node.name not in unreachable,
                    pending_disk=mine.creating * need,
                )
            )
        req = Request(template, ver.version, memory, request, source, need)
        try:
            return place(views, req, strategy or self.settings.strategy), nodes, request, source
        except Exhausted as exc:
            # Nodes that will hold the version soon: receiving it, or lacking it while
            # a node that is up holds it (the replicator starts sending it within a second).
            held = any(replicas.get(n.id) == "ready" and n.health == "up" for n in nodes.values())
            coming = sorted(
                n.name
                for n in nodes.values()
                if n.health == "up"
                and n.cordon == "none"
                and n.name not in unreachable
                and (replicas.get(n.id) == "receiving" or (held and n.id not in replicas))
            )
            if coming:
                raise _StillReceiving(
                    f"template {template} v{ver.version} is still on its way to "
                    f"{', '.join(coming)} and no other node can take the tenant; "
                    "`hoody templates` shows the progress, retry when it is there"
                ) from exc
            raise

    def _new_id(self, s: Session, template: str) -> str:
        stem = template[:50].rstrip("-")
        for _ in range(20):
            cid = f"{stem}-{''.join(secrets.choice(_ID_ALPHABET) for _ in range(6))}"
            if s.scalar(select(Container.seq).where(Container.id == cid)) is None:
                return cid
        raise Conflict("could not find an unused container id; give one with `name`")

    def list_containers(
        self,
        who: Principal,
        *,
        project: int | None = None,
        template: str | None = None,
        node: str | None = None,
        state: str | None = None,
        metadata: dict[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page, oldest first: {"items": [...], "next_cursor": str | None}.

        Deleted containers are listed only with state="deleted". Pass `next_cursor`
        back as `cursor` for the next page; it is None on the last page.
        """
        scope = who.project_filter()
        if scope is not None and project is not None and project != scope:
            raise Forbidden(f"this token belongs to project {scope}, not {project}")
        if scope is not None and node is not None:
            # It would tell a project which nodes exist and which of them hold its
            # tenants: placement is the operator's to know.
            raise Forbidden("only admin tokens list containers by node; drop `node`")
        if not 1 <= limit <= 500:
            raise InvalidInput(f"limit {limit} is invalid; give 1 to 500")
        after = 0
        if cursor:
            if not re.match(r"^c[0-9]{1,15}$", cursor):
                raise InvalidInput("cursor is invalid; pass back the `next_cursor` of a page")
            after = int(cursor[1:])
        q = select(Container).where(Container.seq > after)
        project = scope if scope is not None else project
        if project is not None:
            check_int(project, "project")
            q = q.where(Container.project_id == project)
        for value, column, what in (
            (template, Container.template, "template"),
            (node, Container.node, "node"),
        ):
            if value is not None:
                q = q.where(column == check_text(value, what, 63))
        if state is None:
            q = q.where(Container.state != "deleted")
        else:
            q = q.where(Container.state == check_text(state, "state", 16))
        for k, v in (metadata or {}).items():
            check_text(k, "metadata key", 100)
            q = q.where(Container.meta[k].as_string() == check_text(v, "metadata value", 500))
        with self.store.read() as s:
            rows = list(s.scalars(q.order_by(Container.seq).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [_container_json(r) for r in rows],
            "next_cursor": f"c{rows[-1].seq}" if more else None,
        }

    def get_container(self, who: Principal, cid: str) -> dict[str, Any]:
        with self.store.read() as s:
            row = self._find(s, who.project_filter(), cid)
            if row.state == "deleted":
                raise NotFound(f"container {cid} was deleted")
            return _container_json(row)

    def _act(self, who: Principal, cid: str, verb: str) -> dict[str, Any]:
        _, node = self._node_of(who.project_filter(), cid, verb)
        rec = self._agent(node.url, node.agent_token).action(cid, verb)
        with self.store.write() as s:
            row = self._find(s, None, cid)
            row.state = str(rec.get("state", row.state))
            row.asleep = str(rec.get("sleep_mode") or "") if row.state == "sleeping" else ""
            if row.state == "running":
                row.active_at = max(row.active_at, self.clock())  # idle from now on
            return _container_json(row)

    def start(self, who: Principal, cid: str) -> dict[str, Any]:
        return self._act(who, cid, "start")

    def stop(self, who: Principal, cid: str) -> dict[str, Any]:
        return self._act(who, cid, "stop")

    def delete_container(self, who: Principal, cid: str) -> dict[str, Any]:
        """Delete the tenant and everything it had on its node.

        Returns {"id", "deleted": true, "existed": bool}: existed is true for the call
        that removed it and false for any later call (deleting twice is not an error).
        An id that never existed in the caller's project is NotFound. If its node is
        unreachable the container stays `deleting` and the error says to retry.
        """
        with self.store.write() as s:
            row = self._find(s, who.project_filter(), cid)
            if row.state == "deleted":
                return {"id": cid, "deleted": True, "existed": False}
            if row.state == "creating":
                raise Conflict(f"container {cid} is still being created; delete it afterwards")
            row.state = "deleting"
            node = s.scalar(select(Node).where(Node.name == row.node))
        if node is not None:
            try:
                self._agent(node.url, node.agent_token).delete(cid)
            except NotFound:
                pass  # the node never had it or lost it: nothing to remove there
            except HostError as exc:
                raise HostError(
                    f"container {cid} is marked deleting but node {node.name} could not "
                    f"remove it ({exc.message}); retry the delete"
                ) from exc
        with self.store.write() as s:
            row = self._find(s, None, cid)
            row.state, row.deleted_at, row.ip = "deleted", self.clock(), ""
        return {"id": cid, "deleted": True, "existed": True}


def _container_json(row: Container) -> dict[str, Any]:
    return {
        "id": row.id,
        "project_id": row.project_id,
        "template": row.template,
        "version": row.version,
        "node": row.node,
        "state": row.state,
        "ip": row.ip,
        "address": f"{row.ip}:{row.port}" if row.ip else "",
        "url": row.url,
        "placement": row.placement,
        "limits": row.limits,
        "sleep": {"idle_seconds": row.sleep_after, "mode": row.sleep_mode},
        "sleep_mode": row.asleep or None,
        "metadata": row.meta,
        "created_at": row.created_at,
        "deleted_at": row.deleted_at,
    }
