"""project quotas: at most this many tenants, MiB of memory limits, MiB of disk limits

Revision ID: 0700_project_quotas
Revises: 0500

NULL means no quota (every project made before this migration keeps none).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0700_project_quotas"
down_revision = "0500"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("max_tenants", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_memory_mib", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_disk_mib", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("max_disk_mib")
        batch.drop_column("max_memory_mib")
        batch.drop_column("max_tenants")
