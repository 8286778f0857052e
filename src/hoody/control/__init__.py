"""The fleet control plane: /api/v1, SQL state, placement, node health, the SDK.

api.py        Starlette app under /api/v1 (thin handlers, OpenAPI, docs page)
service.py    Fleet: every business rule, callable directly by tests
placement.py  pure functions choosing a node for a new tenant
db.py         SQLAlchemy models and transactions; migrations/ holds Alembic DDL
auth.py       token minting, hashing and scopes
client.py     hoody.control.client.Client, the Python SDK (httpx)
heartbeat.py  the agent-side loop that joins a node and sends headroom
"""
