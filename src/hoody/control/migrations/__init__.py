"""Alembic migrations, run in code on start: no alembic.ini is needed.

`upgrade(engine)` brings the schema to head. On PostgreSQL it holds an advisory lock
meanwhile, so several control plane processes starting at once migrate one at a time.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

__all__ = ["alembic_config", "upgrade"]

_HERE = Path(__file__).parent
# Any constant shared by every hoody control plane: "hoody" in ASCII.
_LOCK_ID = 0x686F6F6479


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config built in code; `connection` is handed to env.py."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        command.upgrade(alembic_config(conn), revision)
