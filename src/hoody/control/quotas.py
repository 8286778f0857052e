"""Per-project quotas: how many tenants, how much memory and disk a project may hold.

A quota counts what the project's live containers (every state but `deleted`, so
copies still being made count) are *allowed* to use, not what they use now:

    tenants   live containers
    memory    the sum of their memory limits (memory_mib)
    disk      the sum of their disk limits (disk_mib)

Limits, not requests or measured use: a request is a placement estimate that the
fleet learns and revises (and that a project could set low to slip more tenants in),
and measured use moves by the second; a limit is fixed when the tenant is made and is
the most the tenant can take from the fleet, so a project under its quota can never
grow past it. It is what Kubernetes' `limits.memory` ResourceQuota counts.

`check` runs inside the copy's reservation transaction after `lock` has taken the
project row (`SELECT … FOR UPDATE` on PostgreSQL; SQLite has one writer), so
concurrent copies of one project, from any number of control plane processes, are
counted one after another and cannot overshoot together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hoody.control.base import LIVE
from hoody.control.db import Container, Project
from hoody.errors import NotFound, QuotaExceeded

__all__ = ["Usage", "check", "lock", "project_json", "usage"]


@dataclass(frozen=True)
class Usage:
    """What a project's live containers count against its quotas."""

    tenants: int = 0
    memory_mib: int = 0
    disk_mib: int = 0


def lock(s: Session, project: int, *, for_update: bool) -> Project:
    """The project row, locked until the transaction ends when `for_update`;
    NotFound when there is none."""
    q = select(Project).where(Project.id == project)
    if for_update:
        q = q.with_for_update()
    row = s.scalar(q)
    if row is None:
        raise NotFound(f"project {project} does not exist; create it first")
    return row


def usage(s: Session, projects: list[int] | None = None) -> dict[int, Usage]:
    """Usage per project id (only projects with live containers are keys)."""
    q = select(
        Container.project_id,
        func.count(),
        func.coalesce(func.sum(Container.memory_mib), 0),
        func.coalesce(func.sum(Container.disk_mib), 0),
    ).where(Container.state.in_(LIVE))
    if projects is not None:
        q = q.where(Container.project_id.in_(projects))
    rows = s.execute(q.group_by(Container.project_id)).all()
    return {pid: Usage(int(n), int(mem), int(disk)) for pid, n, mem, disk in rows}


def check(project: Project, used: Usage, memory_mib: int, disk_mib: int) -> None:
    """Refuse (QuotaExceeded) one more tenant of `memory_mib` and `disk_mib` limits
    when it would take `project` past a quota; the message names the quota, the use
    and the ways out."""
    if project.max_tenants is not None and used.tenants + 1 > project.max_tenants:
        raise QuotaExceeded(
            f"project {project.name} is at its tenant quota: {used.tenants} of "
            f"{project.max_tenants} containers; "
            + _fix(project, f"--max-tenants {used.tenants + 1}")
        )
    for what, have, asked, limit in (
        ("memory", used.memory_mib, memory_mib, project.max_memory_mib),
        ("disk", used.disk_mib, disk_mib, project.max_disk_mib),
    ):
        if limit is not None and have + asked > limit:
            raise QuotaExceeded(
                f"project {project.name}'s {what} quota is {limit} MiB (the sum of its "
                f"containers' {what} limits): they hold {have} MiB and this copy asks "
                f"{asked} MiB; ask for less (limits.{what}_mib), "
                + _fix(project, f"--max-{what} {_size(have + asked)}")
            )


def _fix(project: Project, flag: str) -> str:
    return (
        "delete containers of this project, or ask the fleet's operator to raise it "
        f"(`hoody project set {project.id} {flag}`)"
    )


def _size(mib: int) -> str:
    return f"{-(-mib // 1024)}G" if mib >= 1024 else f"{mib}M"


def project_json(row: Project, used: Usage | None = None) -> dict[str, Any]:
    used = used or Usage()
    return {
        "id": row.id,
        "name": row.name,
        "created_at": row.created_at,
        "quota": {
            "max_tenants": row.max_tenants,
            "max_memory_mib": row.max_memory_mib,
            "max_disk_mib": row.max_disk_mib,
        },
        "usage": {
            "tenants": used.tenants,
            "memory_mib": used.memory_mib,
            "disk_mib": used.disk_mib,
        },
    }
