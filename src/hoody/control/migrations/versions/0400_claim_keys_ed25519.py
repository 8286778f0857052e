"""claim keys become Ed25519 pairs; HMAC keys are retired; tokens may expire

Routers verified sessions with the HMAC secrets the route table handed them, so any
router could mint sessions. Keys are now Ed25519 pairs: `secret` holds the private
half (control plane only), `public_key` what routers get. A key made before this
revision has no public key and cannot be verified without its secret, so it is
retired here: claims and sessions it signed are refused, and customers open a new
link from their app (claims last an hour at most).

`tokens.expires_at`: join tokens expire (None: never, as before).

Revision ID: 0400
Revises: 0200
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0400"
down_revision = "0200"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("claim_keys") as batch:
        batch.add_column(sa.Column("public_key", sa.String(length=64), nullable=True))
    keys = sa.table("claim_keys", sa.column("retired_at", sa.Float()))
    op.execute(keys.update().where(keys.c.retired_at.is_(None)).values(retired_at=time.time()))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("claim_keys") as batch:
        batch.drop_column("public_key")
