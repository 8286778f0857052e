"""sleep: containers' sleep policy, how they sleep, and when they were last active

Revision ID: 0210
Revises: 0300
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0210"
down_revision = "0300"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("sleep_after", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("sleep_mode", sa.String(length=16), nullable=False, server_default="stopped")
        )
        batch.add_column(
            sa.Column("asleep", sa.String(length=16), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("active_at", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("active_at")
        batch.drop_column("asleep")
        batch.drop_column("sleep_mode")
        batch.drop_column("sleep_after")
