"""Exec's tables in the control plane's database (same Base, same migrations).

scripts          one row per deployed version; the newest live row is current
script_runs      one row per invocation: status, duration, CPU, peak memory, console
project_exec     per-project limits and the hosts its scripts may reach
project_secrets  per-project secrets, encrypted (hoody.exec.secrets)
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from hoody.control.db import Base

__all__ = ["ProjectExec", "ProjectSecret", "Script", "ScriptRun"]


def _now() -> float:
    return time.time()


class Script(Base):
    """A version of a script. Deleting a script marks its rows deleted; a later deploy
    of the same name continues the numbering, so a version number always means one
    source (warm workers are keyed by it)."""

    __tablename__ = "scripts"
    __table_args__ = (UniqueConstraint("project_id", "name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=_now)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ScriptRun(Base):
    __tablename__ = "script_runs"
    __table_args__ = (Index("ix_script_runs_script", "project_id", "name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(500))
    status: Mapped[int] = mapped_column(Integer)
    # ok | threw | timeout | cpu | memory | heap | crashed | load_error | too_large
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float)
    cpu_ms: Mapped[float] = mapped_column(Float)
    peak_memory_bytes: Mapped[int] = mapped_column(BigInteger)
    cold: Mapped[bool] = mapped_column(default=False)
    console: Mapped[list[str]] = mapped_column(JSON, default=list)


class ProjectExec(Base):
    __tablename__ = "project_exec"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    allowed_hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[float] = mapped_column(Float, default=_now)


class ProjectSecret(Base):
    __tablename__ = "project_secrets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[float] = mapped_column(Float, default=_now)
