"""The fleet control plane: /api/v1, SQL state, placement, node health, replication, the SDK.

api.py          Starlette app under /api/v1 (thin handlers, OpenAPI, docs page)
service.py      Fleet: every business rule, callable directly by tests, assembled from
  access.py       authentication, projects, tokens
  nodes.py        join, heartbeats, health, cordon and drain
  templates.py    templates across the fleet, snapshots
  containers.py   copy (idempotency, placement), list, get, start, stop, delete
  replication.py  template versions streamed node to node (btrfs send/receive)
  base.py         the state and lookups they share
placement.py    pure functions choosing a node for a new tenant
db.py           SQLAlchemy models and transactions; migrations/ holds Alembic DDL
models.py       request and response bodies (pydantic)
auth.py         token minting, hashing and scopes
client.py       hoody.Client, the Python SDK (httpx)
heartbeat.py    the agent-side loop that joins a node and sends headroom
"""
