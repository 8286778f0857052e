"""dashboard: node costs, fleet history, dashboard sessions, change counter

Revision ID: 0600
Revises: 0400

The change counter is moved by triggers, so every writer of containers and nodes
moves it, whichever code path it is (the dashboard's live feed polls it):
SQLite bumps the one row of `fleet_changes`; PostgreSQL advances the sequence
`fleet_change_seq` (non-transactional, never blocks a writer).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0600"
down_revision = "0400"
branch_labels = None
depends_on = None

# (table, events) whose writes move the counter. Heartbeats rewrite nodes.headroom
# every 2 s: that is not a change of state, so only these columns count.
_WATCHED = {
    "containers": ("INSERT", "DELETE", "UPDATE OF state, node"),
    "nodes": ("INSERT", "DELETE", "UPDATE OF health, cordon, monthly_cost, currency"),
}


def _trigger_name(table: str, event: str) -> str:
    return f"{table}_changed_{event.split()[0].lower()}"


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("monthly_cost", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("currency", sa.String(length=3), nullable=False, server_default="USD")
        )
        batch.add_column(sa.Column("tenant_usage", sa.JSON(), nullable=True))
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["tokens.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "fleet_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("tenants", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("nodes_up", sa.Integer(), nullable=False),
        sa.Column("monthly_cost", sa.Float(), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_total_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket"),
    )
    op.create_index("ix_fleet_samples_at", "fleet_samples", ["at"])
    op.create_table(
        "fleet_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO fleet_changes (id, n) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE fleet_change_seq")
        op.execute(
            "CREATE FUNCTION hoody_fleet_changed() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM nextval('fleet_change_seq'); RETURN NULL; END $$"
        )
        for table, events in _WATCHED.items():
            for event in events:
                op.execute(
                    f"CREATE TRIGGER {_trigger_name(table, event)} AFTER {event} ON {table} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION hoody_fleet_changed()"
                )
    else:
        for table, events in _WATCHED.items():
            for event in events:
                op.execute(
                    f"CREATE TRIGGER {_trigger_name(table, event)} AFTER {event} ON {table} "
                    "BEGIN UPDATE fleet_changes SET n = n + 1 WHERE id = 1; END"
                )


def downgrade() -> None:
    for table, events in _WATCHED.items():
        for event in events:
            op.execute(
                f"DROP TRIGGER IF EXISTS {_trigger_name(table, event)}"
                + (f" ON {table}" if op.get_bind().dialect.name == "postgresql" else "")
            )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS hoody_fleet_changed()")
        op.execute("DROP SEQUENCE IF EXISTS fleet_change_seq")
    op.drop_table("fleet_changes")
    op.drop_index("ix_fleet_samples_at", table_name="fleet_samples")
    op.drop_table("fleet_samples")
    op.drop_table("dashboard_sessions")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("tenant_usage")
        batch.drop_column("currency")
        batch.drop_column("monthly_cost")
