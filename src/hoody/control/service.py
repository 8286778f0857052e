"""The fleet's business rules, in one object: `Fleet`.

`Fleet` is what the API calls and what tests call directly. It is assembled from one
class per area, each in its own module over the shared state of `FleetBase`:

    access.py        authentication, projects, API tokens
    nodes.py         join, heartbeats, health, cordon and drain
    templates.py     templates and versions across the fleet, snapshots
    containers.py    copy (idempotency, placement), list, get, start, stop, delete
    sleep.py         sleep and wake, idleness from the routers' reports
    reconcile.py     rows and nodes agree again after a crash; orphan tenants
    shell.py         exec and logs, relayed to the tenant's node
    replication.py   template versions streamed from node to node (btrfs send/receive)
    claims.py        container claims, tenant sessions, the router's route table
    exec/scripts.py  Exec scripts, their invocations, per-project limits and secrets
    base.py          settings, agent clients, shared lookups, operations

Every method validates its input (InvalidInput names the fix), checks the caller's
scope, and keeps its database transactions short: agents are never called while a
transaction is open.

Two rules hold across any number of control plane processes sharing one database:

- **Idempotency** is a row, `idempotency_keys(project, key) UNIQUE`, inserted before
  anything else. A duplicate request hits the constraint and waits for the first
  request's result (the same container); if the first request fails its row is
  removed and a waiting duplicate takes over.
- **Placement** reads the fleet and records the new container in one transaction that
  locks the candidate node rows (`SELECT … FOR UPDATE` on PostgreSQL; SQLite has a
  single writer). Containers still being created count as promised, so two copies
  never both take a node's last slot.

Template transfers are claimed the same way: a `receiving` row in
`template_replicas(version, node) UNIQUE`, so two processes never send one version to
one node twice.
"""

from __future__ import annotations

from hoody.control.access import Access
from hoody.control.base import AgentFactory, Settings
from hoody.control.claims import Claims
from hoody.control.containers import Containers, Reservation
from hoody.control.nodes import Nodes
from hoody.control.reconcile import Reconcile
from hoody.control.replication import Replication
from hoody.control.shell import Shell
from hoody.control.sleep import Sleep
from hoody.control.templates import Templates
from hoody.exec.scripts import Scripts

__all__ = ["AgentFactory", "Fleet", "Reservation", "Settings"]


class Fleet(
    Access, Nodes, Templates, Reconcile, Containers, Sleep, Replication, Claims, Scripts, Shell
):
    """The control plane's services over one Store. Thread-safe: share one per process.

    Fleet(store, agents=None, settings=None, clock=time.time): `agents` makes agent
    clients (tests pass clients over fake transports), `clock` is injectable for
    tests of timeouts.
    """
