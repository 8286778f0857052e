"""The fleet's business rules: tokens, nodes, templates, containers, operations.

`Fleet` is what the API calls and what tests call directly. Every method validates
its input (InvalidInput names the fix), checks the caller's scope, and keeps its
database transactions short: agents are never called while a transaction is open.

Two rules hold across any number of control plane processes sharing one database:

- **Idempotency** is a row, `idempotency_keys(project, key) UNIQUE`, inserted before
  anything else. A duplicate request hits the constraint and waits for the first
  request's result (the same container); if the first request fails its row is
  removed and a waiting duplicate takes over.
- **Placement** reads the fleet and records the new container in one transaction that
  locks the candidate node rows (`SELECT … FOR UPDATE` on PostgreSQL; SQLite has a
  single writer). Containers still being created count as promised, so two copies
  never both take a node's last slot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hoody.agent.client import AgentClient
from hoody.agent.spec import FirewallPolicy, Limits, check_name, check_tenant_id
from hoody.control import auth
from hoody.control.auth import Principal, Scope
from hoody.control.db import (
    Container,
    IdempotencyKey,
    Node,
    Operation,
    Project,
    Store,
    Template,
    TemplateReplica,
    TemplateVersion,
    Token,
)
from hoody.control.placement import NodeView, Placement, Request, Strategy, place
from hoody.errors import Conflict, Forbidden, HoodyError, HostError, InvalidInput, NotFound
from hoody.errors import Unauthorized as UnauthorizedError

__all__ = ["AgentFactory", "Fleet", "Settings"]

log = logging.getLogger(__name__)

AgentFactory = Callable[[str, str], AgentClient]
"""(agent url, agent token) → a client; tests inject clients over fake transports."""

_INT_MAX = 2**31 - 1
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_LIVE = ("creating", "running", "stopped", "failed", "deleting")


@dataclass(frozen=True)
class Settings:
    """Knobs of one control plane process; every process of a fleet should agree."""

    heartbeat_timeout: float = 10.0
    strategy: Strategy = "spread"
    # Tenants get `https://<cid>.<public_domain>/` when set, else the node-local URL.
    public_domain: str | None = None
    # How long a duplicate request waits for the first one's result.
    idempotency_wait: float = 120.0
    # A pending idempotency key older than this belonged to a process that died.
    idempotency_stale: float = 600.0
    memory_overcommit: float = 1.0
    default_memory_mib: int = 256
    default_disk_mib: int = 1024


def check_text(value: str, what: str, max_len: int = 200) -> str:
    """Refuse control characters (PostgreSQL text refuses NUL) and overlong strings."""
    if not isinstance(value, str) or len(value) > max_len or not _PRINTABLE.match(value):
        raise InvalidInput(
            f"{what} is invalid; give at most {max_len} printable characters "
            "(no control characters)"
        )
    return value


def check_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT_MAX:
        raise InvalidInput(f"{what} {value!r} is invalid; give a whole number from 1 to {_INT_MAX}")
    return value


def _request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class Fleet:
    """The control plane's services over one Store. Thread-safe: share one per process."""

    def __init__(
        self,
        store: Store,
        *,
        agents: AgentFactory | None = None,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.clock = clock
        self._agent_factory = agents or (lambda url, token: AgentClient(url, token, timeout=120))
        self._agents: dict[tuple[str, str], AgentClient] = {}
        self._agents_lock = threading.Lock()

    def close(self) -> None:
        with self._agents_lock:
            for client in self._agents.values():
                client.close()
            self._agents.clear()

    def _agent(self, url: str, token: str) -> AgentClient:
        with self._agents_lock:
            client = self._agents.get((url, token))
            if client is None:
                client = self._agents[(url, token)] = self._agent_factory(url, token)
            return client

    # auth

    def authenticate(self, header: str | None) -> Principal:
        """The caller behind an `Authorization` header; Unauthorized if none matches."""
        prefix, token = auth.parse_token(header)
        with self.store.read() as s:
            row = s.scalar(select(Token).where(Token.prefix == prefix))
            if row is None or row.revoked or not auth.matches(token, row.hash):
                raise UnauthorizedError(
                    "unknown or revoked API token; ask an admin for a new one "
                    "(`hoody token create --project N`)"
                )
            return Principal(row.scope, row.project_id, row.node_name)  # type: ignore[arg-type]

    def bootstrap_admin(self, token: str | None = None) -> str | None:
        """Make sure an admin token exists.

        With `token` (a `hdy_…` string, e.g. from HOODY_ADMIN_TOKEN) store it if it is
        new and return it. Without, mint one when there is no admin token yet and return
        it (shown once); return None when an admin token already exists.
        """
        with self.store.write() as s:
            if token is not None:
                prefix, token = auth.parse_token(f"Bearer {token}")
                if s.scalar(select(Token.id).where(Token.prefix == prefix)) is None:
                    s.add(
                        Token(
                            prefix=prefix,
                            hash=auth.hash_token(token),
                            scope="admin",
                            description="bootstrap",
                        )
                    )
                return token
            if s.scalar(select(Token.id).where(Token.scope == "admin", ~Token.revoked)):
                return None
            new, prefix = auth.mint_token()
            s.add(
                Token(prefix=prefix, hash=auth.hash_token(new), scope="admin", description="first")
            )
            return new

    # projects and tokens

    def create_project(self, who: Principal, name: str) -> dict[str, Any]:
        who.require_admin()
        check_name(name, "project name")
        try:
            with self.store.write() as s:
                row = Project(name=name, created_at=self.clock())
                s.add(row)
                s.flush()
                return _project_json(row)
        except IntegrityError as exc:
            raise Conflict(f"project {name} exists; pick another name") from exc

    def list_projects(self, who: Principal) -> list[dict[str, Any]]:
        who.require_admin()
        with self.store.read() as s:
            return [_project_json(p) for p in s.scalars(select(Project).order_by(Project.id))]

    def create_token(
        self,
        who: Principal,
        scope: Scope,
        *,
        project_id: int | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        """Mint a token; the returned `token` is the only time the secret is shown."""
        who.require_admin()
        if scope not in ("admin", "project", "join"):
            raise InvalidInput(f"token scope {scope!r} is invalid; use admin, project or join")
        check_text(description, "description")
        if scope == "project":
            if project_id is None:
                raise InvalidInput(
                    "a project token needs `project_id`; list them with GET /projects"
                )
            check_int(project_id, "project_id")
        elif project_id is not None:
            raise InvalidInput(f"a {scope} token belongs to no project; drop `project_id`")
        token, prefix = auth.mint_token()
        with self.store.write() as s:
            if project_id is not None and s.get(Project, project_id) is None:
                raise NotFound(f"project {project_id} does not exist; create it first")
            row = Token(
                prefix=prefix,
                hash=auth.hash_token(token),
                scope=scope,
                project_id=project_id,
                description=description,
                created_at=self.clock(),
            )
            s.add(row)
            s.flush()
            return {**_token_json(row), "token": token}

    def list_tokens(self, who: Principal) -> list[dict[str, Any]]:
        who.require_admin()
        with self.store.read() as s:
            return [_token_json(t) for t in s.scalars(select(Token).order_by(Token.id))]

    def revoke_token(self, who: Principal, token_id: int) -> dict[str, Any]:
        who.require_admin()
        check_int(token_id, "token id")
        with self.store.write() as s:
            row = s.get(Token, token_id)
            if row is None:
                raise NotFound(f"token {token_id} does not exist; GET /api/v1/tokens lists them")
            row.revoked = True
            return _token_json(row)

    # nodes

    def join(self, who: Principal, name: str, url: str, agent_token: str) -> dict[str, Any]:
        """Register (or re-register) node `name` at agent `url`.

        Allowed for join and admin tokens, which get a new node token back (earlier
        node tokens of this node are revoked), and for the node's own token (a rejoin),
        which gets `token: null`: keep using the one you have.
        """
        if not (who.scope in ("join", "admin") or (who.scope == "node" and who.node == name)):
            raise Forbidden("joining a node needs a join token; `hoody token create --join`")
        check_name(name, "node name")
        check_text(url, "agent url", 300)
        check_text(agent_token, "agent token", 200)
        if not re.match(r"^https?://[^\s/]+", url):
            raise InvalidInput(f"agent url {url!r} is invalid; give http://HOST:PORT")
        now = self.clock()
        with self.store.write() as s:
            node = s.scalar(select(Node).where(Node.name == name))
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
    ) -> dict[str, Any]:
        """Record that node `name` is alive, its headroom, and (if given) the template
        versions it holds. Only the node's own token or an admin token may send it."""
        if not (who.is_admin or (who.scope == "node" and who.node == name)):
            raise Forbidden(f"only node {name}'s own token may send its heartbeats")
        with self.store.write() as s:
            node = self._node(s, name)
            node.health, node.last_heartbeat, node.headroom = "up", self.clock(), headroom
            if templates is not None:
                self._sync_templates(s, node, templates)
            return self._node_json(s, node)

    def _sync_templates(self, s: Session, node: Node, reported: list[dict[str, Any]]) -> None:
        # A heartbeat built before a snapshot finished may arrive after it and drop the
        # new replica here; the next heartbeat brings it back.
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
            return [self._node_json(s, n) for n in s.scalars(select(Node).order_by(Node.name))]

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
                out["operation"] = _op_json(op)
            return out

    def _node(self, s: Session, name: str, *, lock: bool = False) -> Node:
        if not isinstance(name, str) or not re.match(r"^[a-z0-9-]{1,63}$", name):
            raise NotFound(f"node {name!r} does not exist; `hoody nodes` lists them")
        q = select(Node).where(Node.name == name)
        node = s.scalar(q.with_for_update() if lock and self.store.is_postgres else q)
        if node is None:
            raise NotFound(f"node {name} does not exist; `hoody nodes` lists them")
        return node

    def _node_json(self, s: Session, node: Node) -> dict[str, Any]:
        count, memory = s.execute(
            select(func.count(), func.coalesce(func.sum(Container.memory_mib), 0)).where(
                Container.node == node.name, Container.state.in_(_LIVE)
            )
        ).one()
        return {
            "name": node.name,
            "url": node.url,
            "state": _node_state(node),
            "health": node.health,
            "cordon": node.cordon,
            "last_heartbeat": node.last_heartbeat,
            "headroom": node.headroom,
            "containers": int(count),
            "memory_promised_mib": int(memory),
        }

    # templates

    def _visible_template(self, s: Session, project: int | None, name: str) -> Template:
        if not isinstance(name, str) or not re.match(r"^[a-z0-9-]{1,63}$", name):
            raise NotFound(f"template {name!r} does not exist; GET /api/v1/templates lists them")
        tmpl = s.scalar(select(Template).where(Template.name == name))
        if tmpl is None or (project is not None and tmpl.project_id not in (None, project)):
            raise NotFound(f"template {name} does not exist; GET /api/v1/templates lists them")
        return tmpl

    def _template_json(self, s: Session, tmpl: Template) -> dict[str, Any]:
        versions = []
        for ver in s.scalars(
            select(TemplateVersion)
            .where(TemplateVersion.template_id == tmpl.id)
            .order_by(TemplateVersion.version)
        ):
            replicas = s.execute(
                select(Node.name, TemplateReplica.state, TemplateReplica.progress)
                .join(Node, Node.id == TemplateReplica.node_id)
                .where(TemplateReplica.version_id == ver.id)
                .order_by(Node.name)
            ).all()
            versions.append(
                {
                    "version": ver.version,
                    "created_at": ver.created_at,
                    "limits": ver.limits,
                    "nodes": [{"node": n, "state": st, "progress": p} for n, st, p in replicas],
                }
            )
        return {
            "name": tmpl.name,
            "project_id": tmpl.project_id,
            "shared": tmpl.project_id is None,
            "versions": versions,
        }

    def list_templates(self, who: Principal) -> list[dict[str, Any]]:
        project = who.project_filter()
        with self.store.read() as s:
            q = select(Template).order_by(Template.name)
            if project is not None:
                q = q.where((Template.project_id == project) | Template.project_id.is_(None))
            return [self._template_json(s, t) for t in s.scalars(q)]

    def get_template(self, who: Principal, name: str) -> dict[str, Any]:
        with self.store.read() as s:
            return self._template_json(s, self._visible_template(s, who.project_filter(), name))

    def delete_template(self, who: Principal, name: str) -> dict[str, Any]:
        """Delete every version on every node. Refused (Conflict) while tenants use it;
        shared templates only by an admin."""
        with self.store.read() as s:
            tmpl = self._visible_template(s, who.project_filter(), name)
            if tmpl.project_id is None and not who.is_admin:
                raise Forbidden(f"template {name} is shared; only an admin may delete it")
            users = list(
                s.scalars(
                    select(Container.id)
                    .where(Container.template == name, Container.state.in_(_LIVE))
                    .limit(4)
                )
            )
            if users:
                raise Conflict(
                    f"template {name} is used by container(s) {', '.join(users[:3])}; "
                    "delete them first"
                )
            holders = s.execute(
                select(Node.name, Node.url, Node.agent_token)
                .join(TemplateReplica, TemplateReplica.node_id == Node.id)
                .join(TemplateVersion, TemplateVersion.id == TemplateReplica.version_id)
                .where(TemplateVersion.template_id == tmpl.id)
                .distinct()
            ).all()
        for _node_name, url, token in holders:
            with contextlib.suppress(NotFound):
                self._agent(url, token).delete_template(name)
        with self.store.write() as s:
            s.execute(delete(Template).where(Template.name == name))
        return {"name": name, "deleted": True, "nodes": sorted(h[0] for h in holders)}

    # containers

    def copy(
        self,
        project: int,
        template: str,
        *,
        name: str | None = None,
        version: int | None = None,
        limits: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        firewall: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
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
        if name is not None:
            check_tenant_id(name)
        if version is not None:
            check_int(version, "version")
        Limits().merged(limits)  # validates; the agent merges them with the template's
        if firewall is not None:
            FirewallPolicy.from_json(firewall)
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise InvalidInput('env must map names to strings, like {"PLAN": "pro"}')
        if metadata is not None and len(json.dumps(metadata, default=str)) > 16384:
            raise InvalidInput("metadata is too large; keep it under 16 KiB of JSON")
        body = {
            "template": template,
            "name": name,
            "version": version,
            "limits": limits,
            "env": env,
            "firewall": firewall,
            "metadata": metadata,
        }
        if idempotency_key is None:
            return self._copy(project, body, None, strategy)
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
        digest = _request_hash(body)
        done = self._claim_or_wait(project, idempotency_key, digest)
        if done is not None:
            return done
        try:
            return self._copy(project, body, idempotency_key, strategy)
        except BaseException:
            # Release the key so a retry (or a waiting duplicate) makes the container.
            with self.store.write() as s:
                s.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.project_id == project, IdempotencyKey.key == idempotency_key
                    )
                )
            raise

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
                        return self._container_json(found)
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
        self, project: int, body: dict[str, Any], key: str | None, strategy: Strategy | None
    ) -> dict[str, Any]:
        # A node that cannot be reached is marked down and the copy is placed again
        # elsewhere, so a dead node costs a retry rather than a failed copy.
        unreachable: set[str] = set()
        while True:
            cid, node_name, url, token, version = self._reserve(
                project, body, key, strategy, unreachable
            )
            agent = self._agent(url, token)
            try:
                rec = agent.copy(
                    body["template"],
                    name=cid,
                    version=version,
                    limits=body["limits"],
                    env=body["env"],
                    firewall=body["firewall"],
                    metadata=body["metadata"],
                )
                break
            except BaseException as exc:
                cause = exc.__cause__ if isinstance(exc, HostError) else None
                if isinstance(cause, httpx.TimeoutException):
                    # The agent may have made it after all; do not leave it behind.
                    try:
                        agent.delete(cid)
                    except HoodyError:
                        log.warning("could not remove %s from %s after a timeout", cid, node_name)
                with self.store.write() as s:
                    s.execute(delete(Container).where(Container.id == cid))
                    if isinstance(cause, httpx.ConnectError):
                        s.execute(update(Node).where(Node.name == node_name).values(health="down"))
                if isinstance(cause, httpx.ConnectError):
                    log.warning("node %s is unreachable; marked down, placing again", node_name)
                    unreachable.add(node_name)
                    continue
                raise
        with self.store.write() as s:
            row = s.scalar(select(Container).where(Container.id == cid))
            if row is None:  # removed by a stale-key takeover meanwhile
                raise Conflict(f"container {cid} vanished while being created; retry the copy")
            row.state = str(rec.get("state", "running"))
            row.ip = str(rec.get("ip", ""))
            row.url = (
                f"https://{cid}.{self.settings.public_domain}/"
                if self.settings.public_domain
                else str(rec.get("url", ""))
            )
            lim = rec.get("limits")
            if isinstance(lim, dict):
                row.limits = lim
                row.memory_mib = int(lim.get("memory_mib", row.memory_mib))
                row.disk_mib = int(lim.get("disk_mib", row.disk_mib))
            if key is not None:
                s.execute(
                    update(IdempotencyKey)
                    .where(IdempotencyKey.project_id == project, IdempotencyKey.key == key)
                    .values(state="done")
                )
            return self._container_json(row)

    def _reserve(
        self,
        project: int,
        body: dict[str, Any],
        key: str | None,
        strategy: Strategy | None,
        unreachable: set[str],
    ) -> tuple[str, str, str, str, int]:
        """Place and record the container (state creating) in one transaction."""
        template = body["template"]
        with self.store.write() as s:
            if s.get(Project, project) is None:
                raise NotFound(f"project {project} does not exist; create it first")
            tmpl = self._visible_template(s, project, template)
            vq = select(TemplateVersion).where(TemplateVersion.template_id == tmpl.id)
            if body["version"] is not None:
                vq = vq.where(TemplateVersion.version == body["version"])
            ver = s.scalar(vq.order_by(TemplateVersion.version.desc()).limit(1))
            if ver is None:
                which = f"version {body['version']}" if body["version"] else "any version"
                raise NotFound(f"template {template} has no {which} on any node yet")
            limits = {**(ver.limits or {}), **(body["limits"] or {})}
            memory = int(limits.get("memory_mib", self.settings.default_memory_mib))
            disk = int(limits.get("disk_mib", self.settings.default_disk_mib))
            placement, nodes = self._place(s, ver, template, memory, disk, strategy, unreachable)
            cid = body["name"] or self._new_id(s, template)
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
                    disk_mib=disk,
                    limits=limits,
                    meta=body["metadata"] or {},
                    created_at=self.clock(),
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
            return cid, node.name, node.url, node.agent_token, ver.version

    def _place(
        self,
        s: Session,
        ver: TemplateVersion,
        template: str,
        memory: int,
        disk: int,
        strategy: Strategy | None,
        unreachable: set[str],
    ) -> tuple[Placement, dict[str, Node]]:
        q = select(Node).order_by(Node.id)
        if self.store.is_postgres:
            # Serialises placements that could pick the same nodes, across processes;
            # the lock is held until the new container row commits.
            q = q.with_for_update()
        nodes = {n.name: n for n in s.scalars(q)}
        ready = set(
            s.scalars(
                select(TemplateReplica.node_id).where(
                    TemplateReplica.version_id == ver.id, TemplateReplica.state == "ready"
                )
            )
        )
        promised = {
            node: (int(count), int(mem), int(pending_disk))
            for node, count, mem, pending_disk in s.execute(
                select(
                    Container.node,
                    func.count(),
                    func.coalesce(func.sum(Container.memory_mib), 0),
                    func.coalesce(
                        func.sum(Container.disk_mib).filter(Container.state == "creating"), 0
                    ),
                )
                .where(Container.state.in_(_LIVE))
                .group_by(Container.node)
            )
        }
        views = []
        for node in nodes.values():
            h = node.headroom or {}
            count, mem_mib, pending_disk = promised.get(node.name, (0, 0, 0))
            # The agent's own promise counts tenants made without the control plane;
            # ours counts placements it has not made yet. Neither double-counts the
            # other's share if we take the larger of the two.
            agent_promised = _num(h.get("memory_promised_bytes"))
            views.append(
                NodeView(
                    name=node.name,
                    health="down" if node.name in unreachable else node.health,
                    cordon=node.cordon,
                    has_template=node.id in ready,
                    memory_total=int(
                        _num(h.get("memory_total_bytes")) * self.settings.memory_overcommit
                    ),
                    memory_promised=max(agent_promised, mem_mib << 20),
                    disk_free=max(0, _num(h.get("disk_free_bytes")) - (pending_disk << 20)),
                    tenants=max(int(_num(h.get("tenants"))), count),
                    max_tenants=int(h["max_tenants"]) if _num(h.get("max_tenants")) else None,
                )
            )
        req = Request(template, ver.version, memory, disk)
        return place(views, req, strategy or self.settings.strategy), nodes

    def _new_id(self, s: Session, template: str) -> str:
        stem = template[:50].rstrip("-")
        for _ in range(20):
            cid = f"{stem}-{''.join(secrets.choice(_ID_ALPHABET) for _ in range(6))}"
            if s.scalar(select(Container.seq).where(Container.id == cid)) is None:
                return cid
        raise Conflict("could not find an unused container id; give one with `name`")

    def _container_json(self, row: Container) -> dict[str, Any]:
        return {
            "id": row.id,
            "project_id": row.project_id,
            "template": row.template,
            "version": row.version,
            "node": row.node,
            "state": row.state,
            "ip": row.ip,
            "url": row.url,
            "placement": row.placement,
            "limits": row.limits,
            "metadata": row.meta,
            "created_at": row.created_at,
            "deleted_at": row.deleted_at,
        }

    def _find(self, s: Session, project: int | None, cid: str) -> Container:
        """The container `cid` (tombstones too), NotFound when another project's."""
        if not isinstance(cid, str) or not re.match(r"^[a-z0-9-]{1,63}$", cid):
            raise NotFound(f"container {cid!r} does not exist")
        row = s.scalar(select(Container).where(Container.id == cid))
        if row is None or (project is not None and row.project_id != project):
            raise NotFound(f"container {cid} does not exist; `hoody ls` lists yours")
        return row

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
            "items": [self._container_json(r) for r in rows],
            "next_cursor": f"c{rows[-1].seq}" if more else None,
        }

    def get_container(self, who: Principal, cid: str) -> dict[str, Any]:
        with self.store.read() as s:
            row = self._find(s, who.project_filter(), cid)
            if row.state == "deleted":
                raise NotFound(f"container {cid} was deleted")
            return self._container_json(row)

    def _node_of(self, who: Principal, cid: str, verb: str) -> tuple[Container, Node]:
        with self.store.read() as s:
            row = self._find(s, who.project_filter(), cid)
            if row.state in ("deleted", "deleting"):
                raise NotFound(f"container {cid} was deleted")
            if row.state == "creating":
                raise Conflict(f"container {cid} is still being created; {verb} it afterwards")
            node = self._node(s, row.node)
            if node.health != "up":
                raise Conflict(
                    f"container {cid} is on node {node.name}, which is down; "
                    f"{verb} it when the node is back"
                )
            return row, node

    def _act(self, who: Principal, cid: str, verb: str) -> dict[str, Any]:
        _, node = self._node_of(who, cid, verb)
        rec = self._agent(node.url, node.agent_token).action(cid, verb)
        with self.store.write() as s:
            row = self._find(s, None, cid)
            row.state = str(rec.get("state", row.state))
            return self._container_json(row)

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

    def snapshot(self, who: Principal, cid: str, template: str | None = None) -> dict[str, Any]:
        """Make a new version of template `template` (default: the container's own, if
        its project owns it) from the container's files, on the container's node.
        Returns the finished operation; its result is the template version."""
        row, node = self._node_of(who, cid, "snapshot")
        with self.store.write() as s:
            name = template or row.template
            check_name(name)
            tmpl = s.scalar(select(Template).where(Template.name == name))
            if tmpl is not None and tmpl.project_id != row.project_id:
                raise Conflict(
                    f"template {name} belongs to another project or is shared; "
                    "give a new name with `template`"
                )
            op = self._new_op(s, row.project_id, "snapshot", cid)
            op_id = op.id
        try:
            rec = self._agent(node.url, node.agent_token).action(
                cid, "snapshot", {"template": name}
            )
        except HoodyError as exc:
            with self.store.write() as s:
                failed = s.get(Operation, op_id)
                assert failed is not None
                failed.state, failed.error, failed.updated_at = (
                    "failed",
                    exc.to_json()["error"],
                    self.clock(),
                )
            raise
        with self.store.write() as s:
            tmpl = s.scalar(select(Template).where(Template.name == name))
            if tmpl is None:
                tmpl = Template(name=name, project_id=row.project_id, created_at=self.clock())
                s.add(tmpl)
                s.flush()
            version = int(rec.get("version", 0))
            ver = TemplateVersion(
                template_id=tmpl.id,
                version=version,
                limits=rec.get("limits") if isinstance(rec.get("limits"), dict) else {},
                created_at=self.clock(),
            )
            s.add(ver)
            s.flush()
            s.add(TemplateReplica(version_id=ver.id, node_id=node.id, state="ready"))
            done = s.get(Operation, op_id)
            assert done is not None
            done.state, done.updated_at = "succeeded", self.clock()
            done.result = {"template": name, "version": version, "node": node.name}
            return _op_json(done)

    # operations

    def _new_op(self, s: Session, project: int | None, kind: str, target: str) -> Operation:
        now = self.clock()
        op = Operation(
            id=uuid.uuid4().hex,
            project_id=project,
            kind=kind,
            target=target,
            state="running",
            result={},
            created_at=now,
            updated_at=now,
        )
        s.add(op)
        s.flush()
        return op

    def _refresh_drain(self, s: Session, op: Operation) -> None:
        # Moving tenants needs template replication; until then a drain finishes when
        # the node's tenants have been deleted.
        remaining = s.scalar(
            select(func.count()).where(Container.node == op.target, Container.state.in_(_LIVE))
        )
        op.result = {"containers_remaining": int(remaining or 0)}
        if not remaining and op.state == "running":
            op.state = "succeeded"
        op.updated_at = self.clock()

    def get_operation(self, who: Principal, op_id: str) -> dict[str, Any]:
        project = who.project_filter()
        if not isinstance(op_id, str) or not re.match(r"^[0-9a-f]{32}$", op_id):
            raise NotFound(f"operation {op_id!r} does not exist")
        with self.store.write() as s:
            op = s.get(Operation, op_id)
            if op is None or (project is not None and op.project_id != project):
                raise NotFound(f"operation {op_id} does not exist")
            if op.kind == "drain" and op.state == "running":
                self._refresh_drain(s, op)
            return _op_json(op)


def _num(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _node_state(node: Node) -> str:
    if node.health != "up":
        return "down"
    return "up" if node.cordon == "none" else node.cordon


def _project_json(row: Project) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "created_at": row.created_at}


def _token_json(row: Token) -> dict[str, Any]:
    return {
        "id": row.id,
        "prefix": row.prefix,
        "scope": row.scope,
        "project_id": row.project_id,
        "node": row.node_name,
        "description": row.description,
        "created_at": row.created_at,
        "revoked": row.revoked,
    }


def _op_json(op: Operation) -> dict[str, Any]:
    return {
        "id": op.id,
        "kind": op.kind,
        "target": op.target,
        "state": op.state,
        "result": op.result,
        "error": op.error,
        "created_at": op.created_at,
        "updated_at": op.updated_at,
    }
