"""Nodes: join, heartbeats (headroom and the template versions each holds), health,
cordon and drain."""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hoody.agent.spec import check_name
from hoody.agent.usage import parse_reserve
from hoody.control import auth, capacity
from hoody.control.auth import Principal
from hoody.control.base import LIVE, FleetBase, check_text, num, op_json
from hoody.control.db import Container, Node, Template, TemplateReplica, TemplateVersion, Token
from hoody.errors import Conflict, Forbidden, InvalidInput

__all__ = ["Nodes", "node_state"]

log = logging.getLogger(__name__)


def node_state(node: Node) -> str:
    """up, down, cordoned or draining: health and cordon in one word."""
    if node.health != "up":
        return "down"
    return "up" if node.cordon == "none" else node.cordon


class Nodes(FleetBase):
    def join(self, who: Principal, name: str, url: str, agent_token: str) -> dict[str, Any]:
        """Register node `name` at agent `url`, or re-register it (a rejoin).

        A join token registers new nodes only: a name already in the fleet is a
        Conflict that nothing changed, since whoever holds a join token (it sits in
        provisioning scripts) could otherwise point an existing node's name at a
        server of theirs and receive its tenants and its agent's credential. A node
        rejoins with its own node token (kept in its state dir, `node.token`), which
        gets `token: null` back: keep using the one you have; that token cannot
        register any other name. An admin token may also re-register a node (the way
        back for a node that lost its credential); it gets a new node token and the
        node's earlier ones are revoked.

        Conflict too when another node of that name at another URL is up, unless
        the caller is that node (its own token).
        """
        if who.scope == "node" and who.node != name:
            raise Forbidden(
                f"this is node {who.node}'s credential; it rejoins node {who.node} only. "
                f"Join {name} with its own credential, or a join token if it is new"
            )
        if who.scope not in ("join", "admin", "node"):
            raise Forbidden("joining a node needs a join token; `hoody token create --join`")
        check_name(name, "node name")
        check_text(url, "agent url", 300)
        check_text(agent_token, "agent token", 200)
        if not re.match(r"^https?://[^\s/]+", url):
            raise InvalidInput(f"agent url {url!r} is invalid; give http://HOST:PORT")
        try:
            return self._join(who, name, url, agent_token)
        except IntegrityError as exc:  # two joins of one new name raced: one won
            raise Conflict(
                f"node {name} was registered by another join meanwhile; a join token only "
                "registers new nodes: give this server its own name (`hoody node init --name`)"
            ) from exc

    def _join(self, who: Principal, name: str, url: str, agent_token: str) -> dict[str, Any]:
        now = self.clock()
        with self.store.write() as s:
            node = s.scalar(select(Node).where(Node.name == name))
            if node is not None and who.scope == "join":
                raise Conflict(
                    f"node {name} is already registered, and a join token only registers "
                    "new nodes; its agent rejoins with its own credential (node.token in "
                    "its state dir: `hoody node serve --join URL` needs no --token then). "
                    "A new server needs its own name (`hoody node init --name`); a node "
                    "that lost its credential rejoins once with an admin token"
                )
            if node is not None and node.url != url and node.health == "up" and who.scope != "node":
                # Two servers initialised with the same name would take turns
                # replacing each other; a node that moved can rejoin once it is down,
                # or at once with its own credential (which proves it is that node).
                raise Conflict(
                    f"node name {name} is taken by the node at {node.url}, which is up; "
                    "give this server its own name (`hoody node init --name`)"
                )
            if node is None:
                node = Node(name=name, url=url, agent_token=agent_token, created_at=now)
                s.add(node)
            node.url, node.agent_token = url, agent_token
            node.health, node.last_heartbeat = "up", now
            token: str | None = None
            # A rejoin with the node's own token keeps that token; a join with a join
            # or admin token replaces whatever node token there was.
            if who.scope != "node":
                token, prefix = auth.mint_token()
                s.execute(update(Token).where(Token.node_name == name).values(revoked=True))
                s.add(
                    Token(
                        prefix=prefix,
                        hash=auth.hash_token(token),
                        scope="node",
                        node_name=name,
                        created_at=now,
                    )
                )
            s.flush()
            return {"node": self._node_json(s, node), "token": token}

    def heartbeat(
        self,
        who: Principal,
        name: str,
        headroom: dict[str, Any],
        templates: list[dict[str, Any]] | None = None,
        usage: list[dict[str, Any]] | None = None,
        *,
        tenant_usage: dict[str, list[int]] | None = None,
    ) -> dict[str, Any]:
        """Record that node `name` is alive, its headroom, what its tenants use per
        template version (`usage`, kept as headroom["templates"]), each tenant's
        measured [memory, disk] bytes (`tenant_usage`, for the dashboard's table), and
        (if given) the template versions it holds. Only the node's own token or an
        admin token may send it."""
        if not (who.is_admin or (who.scope == "node" and who.node == name)):
            raise Forbidden(f"only node {name}'s own token may send its heartbeats")
        if usage is not None:
            headroom = {**headroom, "templates": usage}
        with self.store.write() as s:
            node = self._node(s, name)
            if node.health != "up":
                log.info("node %s is back up", name)
            node.health, node.last_heartbeat, node.headroom = "up", self.clock(), headroom
            if templates is not None:
                self._sync_templates(s, node, templates)
            if tenant_usage is not None:
                node.tenant_usage = {
                    cid: [max(0, int(m)), max(0, int(d))]
                    for cid, (m, d) in tenant_usage.items()
                    if isinstance(cid, str) and len(cid) <= 63
                }
            return self._node_json(s, node)

    def _sync_templates(self, s: Session, node: Node, reported: list[dict[str, Any]]) -> None:
        # A heartbeat built before a snapshot or a transfer finished may arrive after it
        # and drop the new replica here; the next heartbeat brings it back. Replicas
        # still `receiving` are the replicator's and are left alone.
        seen: set[int] = set()
        for item in reported:
            name, version = item.get("name"), item.get("version")
            if not isinstance(name, str) or not isinstance(version, int):
                continue
            tmpl = s.scalar(select(Template).where(Template.name == name))
            if tmpl is None:
                tmpl = Template(name=name, project_id=None, created_at=self.clock())
                s.add(tmpl)
                s.flush()
            ver = s.scalar(
                select(TemplateVersion).where(
                    TemplateVersion.template_id == tmpl.id, TemplateVersion.version == version
                )
            )
            if ver is None:
                limits = item.get("limits") if isinstance(item.get("limits"), dict) else {}
                ver = TemplateVersion(
                    template_id=tmpl.id, version=version, limits=limits, created_at=self.clock()
                )
                s.add(ver)
                s.flush()
            replica = s.scalar(
                select(TemplateReplica).where(
                    TemplateReplica.version_id == ver.id, TemplateReplica.node_id == node.id
                )
            )
            if replica is None:
                s.add(TemplateReplica(version_id=ver.id, node_id=node.id, state="ready"))
            else:
                replica.state, replica.progress = "ready", 1.0
            seen.add(ver.id)
        s.execute(
            delete(TemplateReplica).where(
                TemplateReplica.node_id == node.id,
                TemplateReplica.state == "ready",
                TemplateReplica.version_id.not_in(seen),
            )
        )

    def mark_down_stale(self) -> list[str]:
        """Mark down every up node whose last heartbeat is older than the timeout."""
        cutoff = self.clock() - self.settings.heartbeat_timeout
        with self.store.read() as s:
            stale = s.scalar(
                select(func.count()).where(Node.health == "up", Node.last_heartbeat < cutoff)
            )
        if not stale:
            return []  # the usual case: no write transaction every check
        with self.store.write() as s:
            names = list(
                s.scalars(
                    update(Node)
                    .where(Node.health == "up", Node.last_heartbeat < cutoff)
                    .values(health="down")
                    .returning(Node.name)
                )
            )
        for name in names:
            log.warning(
                "node %s missed heartbeats for %.0f s: marked down",
                name,
                self.settings.heartbeat_timeout,
            )
        return names

    def list_nodes(self, who: Principal) -> list[dict[str, Any]]:
        who.require_admin()
        with self.store.read() as s:
            nodes = list(s.scalars(select(Node).order_by(Node.name)))
            # One pass over the tenant rows for all nodes, not one per node.
            pending = capacity.pending(s, {n.name: n for n in nodes}, self.clock())
            return [self._node_json(s, n, nodes, pending) for n in nodes]

    def set_node(
        self,
        who: Principal,
        name: str,
        overcommit: float | None = None,
        reserve: str | None = None,
        *,
        monthly_cost: float | None = None,
        currency: str | None = None,
    ) -> dict[str, Any]:
        """Change node `name`'s overcommit ratio and host memory reserve (the node keeps
        them: its agent saves them and reports them in every heartbeat), and what it
        costs a month (kept here: the dashboard's bill is the sum). None keeps a value.

        A negative or non-finite cost, or a currency that is not three letters, is
        InvalidInput; everything is checked before anything changes."""
        who.require_admin()
        if reserve is not None:
            parse_reserve(reserve)
        if overcommit is not None and not 0.1 <= overcommit <= 20:
            raise InvalidInput(f"overcommit {overcommit!r} is invalid; give a ratio from 0.1 to 20")
        if monthly_cost is not None and (
            isinstance(monthly_cost, bool)
            or not isinstance(monthly_cost, int | float)
            or not 0 <= monthly_cost < 1e12
        ):
            raise InvalidInput(
                f"monthly cost {monthly_cost!r} is invalid; give a number like 29 or 29.50"
            )
        if currency is not None and not re.match(r"^[A-Za-z]{3}$", currency or ""):
            raise InvalidInput(f"currency {currency!r} is invalid; give an ISO code like USD")
        info: dict[str, Any] = {}
        if overcommit is not None or reserve is not None:
            with self.store.read() as s:
                node = self._node(s, name)
                url, token = node.url, node.agent_token
            info = self._agent(url, token).configure_node(
                overcommit=overcommit, memory_reserve=reserve
            )
        with self.store.write() as s:
            node = self._node(s, name)
            if isinstance(info.get("headroom"), dict):
                node.headroom = info["headroom"]
            if monthly_cost is not None:
                node.monthly_cost = float(monthly_cost)
            if currency is not None:
                node.currency = currency.upper()
            return self._node_json(s, node)

    def set_cordon(self, who: Principal, name: str, cordon: str) -> dict[str, Any]:
        """cordon: none (uncordon), cordoned (no new tenants), draining (cordoned, and
        its tenants are to move away; returns the drain operation)."""
        who.require_admin()
        with self.store.write() as s:
            node = self._node(s, name)
            node.cordon = cordon
            out = self._node_json(s, node)
            if cordon == "draining":
                op = self._new_op(s, None, "drain", name)
                self._refresh_drain(s, op)
                out["operation"] = op_json(op)
            return out

    def _node_json(
        self,
        s: Session,
        node: Node,
        everyone: list[Node] | None = None,
        pending: dict[str, capacity.Pending] | None = None,
    ) -> dict[str, Any]:
        """The node as the API shows it; `everyone` (all nodes) and `pending` (for at
        least this node) are read here unless the caller already has them."""
        count, memory = s.execute(
            select(func.count(), func.coalesce(func.sum(Container.memory_mib), 0)).where(
                Container.node == node.name, Container.state.in_(LIVE)
            )
        ).one()
        if pending is None:
            pending = capacity.pending(s, {node.name: node}, self.clock())
        mine = pending.get(node.name, capacity.Pending())
        view = capacity.node_view(
            node,
            mine,
            has_template=True,
            default_overcommit=self.settings.memory_overcommit,
            pending_disk=mine.creating * capacity.DEFAULT_DISK_NEED,
        )
        if everyone is None:
            everyone = list(s.scalars(select(Node)))
        estimates = []
        for tmpl, version, limits in self._newest_ready(s, node):
            known = capacity.learned(everyone, tmpl, version)
            limit_mib = num((limits or {}).get("memory_mib")) or self.settings.default_memory_mib
            request, source = capacity.resolve_request(None, limits, known, limit_mib)
            disk = capacity.disk_need(known)
            further, limited_by = capacity.estimate(view, request, disk)
            estimates.append(
                {
                    "template": tmpl,
                    "version": version,
                    "memory_request_bytes": request,
                    "request_source": source,
                    "disk_bytes": disk,
                    "further_tenants": further,
                    "limited_by": limited_by,
                }
            )
        disk_total = num((node.headroom or {}).get("disk_total_bytes"))
        return {
            "name": node.name,
            "url": node.url,
            "state": node_state(node),
            "health": node.health,
            "cordon": node.cordon,
            "last_heartbeat": node.last_heartbeat,
            "headroom": node.headroom,
            "containers": int(count),
            "memory_promised_mib": int(memory),
            "capacity": capacity.capacity_json(view, disk_total),
            "estimates": estimates,
            "monthly_cost": node.monthly_cost,
            "currency": node.currency or "USD",
        }

    @staticmethod
    def _newest_ready(s: Session, node: Node) -> list[tuple[str, int, dict[str, Any]]]:
        """(template, version, limits) of the newest version of each template the node
        holds ready."""
        rows = s.execute(
            select(Template.name, TemplateVersion.version, TemplateVersion.limits)
            .join(TemplateVersion, TemplateVersion.template_id == Template.id)
            .join(TemplateReplica, TemplateReplica.version_id == TemplateVersion.id)
            .where(TemplateReplica.node_id == node.id, TemplateReplica.state == "ready")
            .order_by(Template.name, TemplateVersion.version)
        ).all()
        newest = {name: (version, limits or {}) for name, version, limits in rows}
        return [(name, v, lim) for name, (v, lim) in sorted(newest.items())]
