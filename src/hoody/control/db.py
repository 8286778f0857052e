"""The control plane's SQL state: tables, engine and transactions.

    projects ─┬─ tokens            hashed API tokens (admin, project, join, node scope)
              ├─ templates ── template_versions ── template_replicas ── nodes
              ├─ containers        one row per tenant, kept as a tombstone after delete
              ├─ idempotency_keys  UNIQUE(project, key): the database dedupes retries
              └─ operations        slow work a client polls

SQLite (a file under the state dir) is the default; PostgreSQL is used when
HOODY_DATABASE_URL is `postgresql+psycopg://…`. The schema is created and upgraded by
the Alembic migrations in `hoody.control.migrations`, never by `create_all`, so every
control plane process (and every test) runs the same DDL.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hoody.private import private_dir

__all__ = [
    "Base",
    "Container",
    "DashboardSession",
    "FleetChange",
    "FleetSample",
    "IdempotencyKey",
    "Node",
    "Operation",
    "Orphan",
    "Project",
    "Store",
    "Template",
    "TemplateReplica",
    "TemplateVersion",
    "Token",
    "database_url",
]

DEFAULT_STATE_DIR = Path("/var/lib/hoody/control")


def database_url(state_dir: Path | None = None) -> str:
    """HOODY_DATABASE_URL, else a SQLite file `control.db` in `state_dir`."""
    url = os.environ.get("HOODY_DATABASE_URL")
    if url:
        return url
    state_dir = state_dir or Path(os.environ.get("HOODY_CONTROL_DIR", str(DEFAULT_STATE_DIR)))
    private_dir(state_dir)
    return f"sqlite:///{state_dir / 'control.db'}"


def _now() -> float:
    return time.time()


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    # Quotas (None: none), checked by each copy in its reservation's transaction:
    # live tenants, the sum of their memory limits and of their disk limits (MiB).
    max_tenants: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_memory_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_disk_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Token(Base):
    """An API token, stored as sha256(token); `prefix` finds the row without the secret."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    # admin: nodes, projects, tokens, everything; project: one project's containers and
    # templates; join: may join new nodes; node: one node's heartbeats; router: the
    # route table and claim exchange.
    scope: Mapped[str] = mapped_column(String(16))
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    node_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: never


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    url: Mapped[str] = mapped_column(String(300))
    # The agent's own bearer token: the control plane needs it in the clear to call the
    # agent, so it is as secret as the database itself.
    agent_token: Mapped[str] = mapped_column(String(200))
    # health is what heartbeats say (up/down); cordon is what an admin said
    # (none/cordoned/draining). The API shows them combined as `state`.
    health: Mapped[str] = mapped_column(String(16), default="up")
    cordon: Mapped[str] = mapped_column(String(16), default="none")
    last_heartbeat: Mapped[float] = mapped_column(Float, default=_now)
    headroom: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    # What the server costs a month (the fleet's bill is their sum); NULL: not set.
    monthly_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    currency: Mapped[str] = mapped_column(String(3), default="USD", server_default="USD")
    # Each tenant's measured [memory bytes, own disk bytes], as the node last sent it
    # (every few heartbeats): the dashboard's tenant table reads it. Deferred: it is
    # one entry per tenant (2,000 on a full node), and every wake, heartbeat and
    # placement loads the node row without needing it.
    tenant_usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, deferred=True)


class Template(Base):
    """A template name. project_id NULL: shared, built on a node by its operator."""

    __tablename__ = "templates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Globally unique: agents keep one flat template namespace per node.
    name: Mapped[str] = mapped_column(String(63), unique=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    created_at: Mapped[float] = mapped_column(Float, default=_now)


class TemplateVersion(Base):
    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    # The version's default limits as its node reported them; placement needs the
    # memory a tenant will be promised when the copy does not override it.
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=_now)


class TemplateReplica(Base):
    """A template version present on a node: `ready`, or `receiving` (replication)."""

    __tablename__ = "template_replicas"
    __table_args__ = (UniqueConstraint("version_id", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("template_versions.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default="ready")
    progress: Mapped[float] = mapped_column(Float, default=1.0)


class Container(Base):
    """A tenant. After delete the row stays with state `deleted` so that deleting again
    can answer existed=false and the id is never handed out twice."""

    __tablename__ = "containers"
    __table_args__ = (
        Index("ix_containers_project_seq", "project_id", "seq"),
        Index("ix_containers_node_state", "node", "state"),
    )

    # seq orders the list and is the pagination cursor; id is the public DNS-safe name.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(63), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    template: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(63))
    # creating → running ⇄ sleeping | stopped | failed → deleting → deleted
    state: Mapped[str] = mapped_column(String(16))
    ip: Mapped[str] = mapped_column(String(64), default="")
    url: Mapped[str] = mapped_column(String(300), default="")
    placement: Mapped[str] = mapped_column(Text, default="")
    memory_mib: Mapped[int] = mapped_column(Integer)
    # Its explicit memory request (its own or its template's), 0 when it has none and
    # placement counts what its template's tenants are learned to use (capacity.py).
    memory_request_mib: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    disk_mib: Mapped[int] = mapped_column(Integer)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The tenant app's port on its node (the router's upstream is ip:port).
    port: Mapped[int] = mapped_column(Integer, default=8080, server_default="8080")
    # Bumped by claims/revoke: every session minted under an older value is refused.
    claims_gen: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Sleep: after `sleep_after` idle seconds (None: never for idleness) the fleet puts
    # it to sleep in `sleep_mode`; `asleep` is the mode it sleeps in now ("" awake).
    # `active_at` is when it last got a request through a router (as the routers
    # report them), was made, started or woken: what idleness is measured from.
    sleep_after: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sleep_mode: Mapped[str] = mapped_column(String(16), default="stopped", server_default="stopped")
    asleep: Mapped[str] = mapped_column(String(16), default="", server_default="")
    active_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("project_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 of the request, so reusing a key for a different request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    container_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done
    created_at: Mapped[float] = mapped_column(Float, default=_now)


class ClaimKey(Base):
    """A key that signs container claims and tenant sessions (see hoody.claims).

    The newest unretired key signs; a retired key verifies nothing. Keys are Ed25519
    pairs: `secret` is the private half, stored in the clear (it must be, to sign, so
    it is as secret as the database); `public_key` is all a router ever receives.
    Keys from before migration 0400 (HMAC secrets) have no public key and are retired."""

    __tablename__ = "claim_keys"

    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret: Mapped[str] = mapped_column(String(200))
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    retired_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ClaimUse(Base):
    """A claim that was exchanged: the primary key makes a second use fail in the
    database, whichever control plane process sees it."""

    __tablename__ = "claim_uses"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    container_id: Mapped[str] = mapped_column(String(63))
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float] = mapped_column(Float, default=_now)


class Operation(Base):
    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    updated_at: Mapped[float] = mapped_column(Float, default=_now)


class DashboardSession(Base):
    """A dashboard login: the cookie's sha256, its CSRF token, and the admin token it
    was made from (revoking that token ends the session)."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    csrf: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    expires_at: Mapped[float] = mapped_column(Float)


class FleetSample(Base):
    """One point of the fleet's history, for the dashboard's plots. `bucket` (the
    sample time divided by the interval) is unique, so several control plane processes
    sampling at once record one point."""

    __tablename__ = "fleet_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bucket: Mapped[int] = mapped_column(BigInteger, unique=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    tenants: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[int] = mapped_column(Integer)
    nodes_up: Mapped[int] = mapped_column(Integer)
    monthly_cost: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(16))
    memory_used_bytes: Mapped[int] = mapped_column(BigInteger)
    memory_total_bytes: Mapped[int] = mapped_column(BigInteger)


class FleetChange(Base):
    """SQLite's change counter: triggers on containers and nodes (migration 0600) bump
    `n` in every transaction that adds, removes or moves a tenant or changes a node's
    state, whichever code path (API, Exec script, reconcile) did it. The dashboard polls
    it. PostgreSQL's triggers advance the sequence `fleet_change_seq` instead: one row
    updated by every writer would serialise them until commit, and could deadlock
    against placement's node row locks."""

    __tablename__ = "fleet_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class Orphan(Base):
    """A tenant a node has that no live container row accounts for: reported from the
    first reconcile round that sees it, removed only once it outlives the grace period."""

    __tablename__ = "orphans"
    __table_args__ = (UniqueConstraint("node", "tenant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(63))
    tenant: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))  # what the node says it is
    first_seen: Mapped[float] = mapped_column(Float, default=_now)
    last_seen: Mapped[float] = mapped_column(Float, default=_now)


# SQLite: a transaction that will write starts with BEGIN IMMEDIATE, taking the write
# lock up front. A deferred transaction that reads and then writes can fail with
# "database is locked" instead of waiting; IMMEDIATE makes writers queue (busy timeout).
_immediate: contextvars.ContextVar[bool] = contextvars.ContextVar("immediate", default=False)


class Store:
    """An engine plus transactions. `read()` and `write()` yield a Session that commits
    on success and rolls back on any exception."""

    def __init__(self, url: str, *, migrate: bool = True, echo: bool = False) -> None:
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        # allow_nan=False: PostgreSQL's json type refuses NaN, so refuse it here first.
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": lambda obj: json.dumps(obj, allow_nan=False),
        }
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _sqlite_pragmas(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            from hoody.control.migrations import upgrade

            upgrade(self.engine)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        token = _immediate.set(True)
        try:
            with self._sessions() as session, session.begin():
                yield session
        finally:
            _immediate.reset(token)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is possible.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if _immediate.get() else "BEGIN")
