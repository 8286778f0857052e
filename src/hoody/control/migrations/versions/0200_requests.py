"""requests: the memory placement counts for each container, beside its limit

Revision ID: 0200
Revises: 0100
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0200"
down_revision = "0100"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.add_column(
            sa.Column("memory_request_mib", sa.Integer(), nullable=False, server_default="0")
        )
    # 0: no explicit request; placement counts what the template's tenants are
    # learned to use (or the limit) for containers placed before requests existed.


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("memory_request_mib")
