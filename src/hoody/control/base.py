"""What every part of the fleet service shares: settings, the store, agent clients,
input checks, lookups and operations.

`FleetBase` holds the state; access.py, nodes.py, templates.py, containers.py and
replication.py each add one area's methods on top of it, and service.py combines them
into `Fleet`. Lookups used by more than one area live here so that no area reaches
into another.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hoody.agent.client import AgentClient
from hoody.control import redact
from hoody.control.auth import Principal
from hoody.control.db import Container, Node, Operation, Store, Template
from hoody.control.placement import Strategy
from hoody.errors import Conflict, HoodyError, InvalidInput, NotFound

__all__ = [
    "LIVE",
    "AgentFactory",
    "FleetBase",
    "Settings",
    "check_int",
    "check_text",
    "num",
    "op_json",
]

log = logging.getLogger(__name__)

AgentFactory = Callable[[str, str], AgentClient]
"""(agent url, agent token) → a client; tests inject clients over fake transports."""

INT_MAX = 2**31 - 1
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_NAME = re.compile(r"^[a-z0-9-]{1,63}$")
# Container states that hold resources on a node (everything but "deleted").
LIVE = ("creating", "running", "sleeping", "stopped", "failed", "deleting")


@dataclass(frozen=True)
class Settings:
    """Knobs of one control plane process; every process of a fleet should agree."""

    # Agents heartbeat every 2 s (`hoody node serve --join`); a node is down once it
    # has been silent this long, checked every 0.5 s: a dead node is marked down
    # within 8.5 s of its last heartbeat.
    heartbeat_timeout: float = 8.0
    strategy: Strategy = "spread"
    # Tenants get `https://<cid>.<public_domain>/` when set, else the node-local URL.
    public_domain: str | None = None
    # The router's own URL, e.g. http://localhost:8000: tenants then answer at
    # http://<cid>.localhost:8000/ (takes precedence over public_domain).
    router_url: str | None = None
    # Container claims live at most this long (an authorize call may ask for less);
    # the session a claim is exchanged for lasts session_ttl.
    claim_ttl: int = 3600
    session_ttl: int = 12 * 3600
    # How long a duplicate request waits for the first one's result.
    idempotency_wait: float = 120.0
    # A pending idempotency key older than this belonged to a process that died.
    idempotency_stale: float = 600.0
    memory_overcommit: float = 1.0
    default_memory_mib: int = 256
    default_disk_mib: int = 1024
    # A copy that only a node still receiving its template version could take waits
    # this long for the transfer before it gives up (below the SDK's 120 s timeout).
    replica_wait: float = 60.0
    # Template transfers this process runs at once (each streams one version from
    # one node to another); one per receiving node at a time.
    replication_concurrency: int = 4
    # A transfer whose operation saw no progress for this long belonged to a
    # process that died; its claim is dropped and the transfer starts again.
    replication_stale: float = 60.0
    # After a failed transfer, wait this long before trying that node again.
    replication_retry: float = 15.0
    # The control plane's state dir: Exec keeps its key (secrets, invocation tokens)
    # there. None: no Exec (tests of other areas).
    state_dir: Path | None = None
    # A local folder of <project>/<name>.ts served as Exec scripts (`hoody up
    # --scripts`): an edit takes effect on the next request.
    scripts_dir: Path | None = None
    # Exec keeps one started, warmed-up Deno process per active project, so the next
    # worker it needs skips the process start (exec/pool.py). Off: every new worker
    # is a new process started for its script.
    exec_spares: bool = True
    # The reconcile loop (reconcile.py) compares every node's tenants with the rows,
    # at start and this often. A row still `creating` this long after its reservation
    # belonged to a copy that died with its process: it is adopted if its node has the
    # tenant, else failed. A copy takes well under a second; this process's own copies
    # in flight are never touched, so the deadline only guards other processes' ones.
    reconcile_every: float = 10.0
    creating_deadline: float = 60.0
    # A tenant on a node with no live row is reported at once and removed only after
    # this long (None: reported, never removed).
    orphan_grace: float | None = 3600.0


def check_text(value: str, what: str, max_len: int = 200) -> str:
    """Refuse control characters (PostgreSQL text refuses NUL) and overlong strings."""
    if not isinstance(value, str) or len(value) > max_len or not _PRINTABLE.match(value):
        raise InvalidInput(
            f"{what} is invalid; give at most {max_len} printable characters "
            "(no control characters)"
        )
    return value


def check_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT_MAX:
        raise InvalidInput(f"{what} {value!r} is invalid; give a whole number from 1 to {INT_MAX}")
    return value


def num(value: Any) -> int:
    """An int from a JSON number; 0 for anything else (headroom fields are optional)."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def op_json(op: Operation) -> dict[str, Any]:
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


class FleetBase:
    """The state every area of the service works on. Thread-safe: share one per process."""

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
        # Template transfers this process runs, by receiving node id (replication.py).
        self._transfers: dict[int, threading.Thread] = {}
        self._transfers_lock = threading.Lock()
        self._closing = threading.Event()
        # Copies this process is making (container ids): the reconcile leaves their
        # `creating` rows alone however long the node takes.
        self._in_flight: set[str] = set()
        # Idempotency keys (project, key) this process holds for a copy it is making.
        self._keys_in_flight: set[tuple[int, str]] = set()
        # Tenants the last reconcile round saw on a node without a row: node → {id: when}.
        self._suspects: dict[str, dict[str, float]] = {}
        self._in_flight_lock = threading.Lock()

    def close(self) -> None:
        """Close agent clients; transfers still running stop at their next chunk."""
        self._closing.set()
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

    def public_error(self, exc: HoodyError, *, failures: bool = False) -> HoodyError:
        """`exc` as callers other than admins may read it: no node names, addresses or
        (unless `failures`) host failure details (redact.py)."""
        try:
            with self.store.read() as s:
                nodes = [(str(n), str(u)) for n, u in s.execute(select(Node.name, Node.url))]
        except Exception:  # without the node list nothing can be scrubbed: say less
            log.exception("reading the nodes to redact an error failed")
            return redact.for_project(HoodyError(exc.message), [])  # a reference only
        return redact.for_project(exc, nodes, failures=failures)

    # lookups shared by several areas

    def _node(self, s: Session, name: str, *, lock: bool = False) -> Node:
        if not isinstance(name, str) or not _NAME.match(name):
            raise NotFound(f"node {name!r} does not exist; `hoody nodes` lists them")
        q = select(Node).where(Node.name == name)
        node = s.scalar(q.with_for_update() if lock and self.store.is_postgres else q)
        if node is None:
            raise NotFound(f"node {name} does not exist; `hoody nodes` lists them")
        return node

    def _visible_template(self, s: Session, project: int | None, name: str) -> Template:
        if not isinstance(name, str) or not _NAME.match(name):
            raise NotFound(f"template {name!r} does not exist; GET /api/v1/templates lists them")
        tmpl = s.scalar(select(Template).where(Template.name == name))
        if tmpl is None or (project is not None and tmpl.project_id not in (None, project)):
            raise NotFound(f"template {name} does not exist; GET /api/v1/templates lists them")
        return tmpl

    def _find(self, s: Session, project: int | None, cid: str) -> Container:
        """The container `cid` (tombstones too), NotFound when another project's."""
        if not isinstance(cid, str) or not _NAME.match(cid):
            raise NotFound(f"container {cid!r} does not exist")
        row = s.scalar(select(Container).where(Container.id == cid))
        if row is None or (project is not None and row.project_id != project):
            raise NotFound(f"container {cid} does not exist; `hoody ls` lists yours")
        return row

    def _node_of(
        self, project: int | None, cid: str, verb: str, *, named: bool | None = None
    ) -> tuple[Container, Node]:
        """The container and its node, for an action that needs the node up. A down
        node is `named` in the error (default: for an admin, whose `project` is None)."""
        with self.store.read() as s:
            row = self._find(s, project, cid)
            if row.state in ("deleted", "deleting"):
                raise NotFound(f"container {cid} was deleted")
            if row.state == "creating":
                raise Conflict(f"container {cid} is still being created; {verb} it afterwards")
            node = self._node(s, row.node)
            if node.health != "up":
                # Project tokens hear about their own containers, not the fleet's nodes.
                shown = project is None if named is None else named
                where = f"node {node.name}" if shown else "a node"
                raise Conflict(
                    f"container {cid} is on {where}, which is down; {verb} it when it is back"
                )
            return row, node

    # operations: anything slow is a row a client can poll

    def _new_op(
        self,
        s: Session,
        project: int | None,
        kind: str,
        target: str,
        result: dict[str, Any] | None = None,
    ) -> Operation:
        now = self.clock()
        op = Operation(
            id=uuid.uuid4().hex,
            project_id=project,
            kind=kind,
            target=target,
            state="running",
            result=result or {},
            created_at=now,
            updated_at=now,
        )
        s.add(op)
        s.flush()
        return op

    def _refresh_drain(self, s: Session, op: Operation) -> None:
        # Moving tenants needs live migration; until then a drain finishes when the
        # node's tenants have been deleted.
        remaining = s.scalar(
            select(func.count()).where(Container.node == op.target, Container.state.in_(LIVE))
        )
        op.result = {"containers_remaining": int(remaining or 0)}
        if not remaining and op.state == "running":
            op.state = "succeeded"
        op.updated_at = self.clock()

    def get_operation(self, who: Principal, op_id: str) -> dict[str, Any]:
        """The operation `op_id`; NotFound when it is another project's."""
        project = who.project_filter()
        if not isinstance(op_id, str) or not re.match(r"^[0-9a-f]{32}$", op_id):
            raise NotFound(f"operation {op_id!r} does not exist")
        with self.store.write() as s:
            op = s.get(Operation, op_id)
            theirs = project is None or (op is not None and op.project_id == project)
            # A transfer of a project's template is the fleet's business: it is
            # between two nodes, which it names.
            if op is None or not theirs or (project is not None and op.kind == "replicate"):
                raise NotFound(f"operation {op_id} does not exist")
            if op.kind == "drain" and op.state == "running":
                self._refresh_drain(s, op)
            return op_json(op)
