"""claims: signing keys, used claims, container port and claim generation

Revision ID: 0100
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claim_keys",
        sa.Column("kid", sa.String(length=32), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("retired_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("kid"),
    )
    op.create_table(
        "claim_uses",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("container_id", sa.String(length=63), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("jti"),
    )
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("port", sa.Integer(), nullable=False, server_default="8080"))
        batch.add_column(sa.Column("claims_gen", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("claims_gen")
        batch.drop_column("port")
    op.drop_table("claim_uses")
    op.drop_table("claim_keys")
