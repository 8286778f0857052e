"""Templates across the fleet: list with versions and which nodes hold each, delete
everywhere, and new versions made from a container (snapshot).

Version numbers are the fleet's: a snapshot gets the next number after every version
the fleet or its node knows, so a version number means the same files on every node
it reaches (replication.py copies it there).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hoody.agent.spec import check_name
from hoody.control.auth import Principal
from hoody.control.base import LIVE, FleetBase, op_json
from hoody.control.db import (
    Container,
    Node,
    Operation,
    Template,
    TemplateReplica,
    TemplateVersion,
)
from hoody.errors import Conflict, Forbidden, HoodyError, NotFound

__all__ = ["Templates"]

log = logging.getLogger(__name__)


class Templates(FleetBase):
    def _template_json(self, s: Session, tmpl: Template, up: set[str]) -> dict[str, Any]:
        """A template with its versions; `up`: the nodes replication sends versions to."""
        versions = []
        for ver in s.scalars(
            select(TemplateVersion)
            .where(TemplateVersion.template_id == tmpl.id)
            .order_by(TemplateVersion.version)
        ):
            replicas = s.execute(
                select(Node.name, TemplateReplica.state, TemplateReplica.progress)
                .join(Node, Node.id == TemplateReplica.node_id)
                .where(TemplateReplica.version_id == ver.id)
                .order_by(Node.name)
            ).all()
            versions.append(
                {
                    "version": ver.version,
                    "created_at": ver.created_at,
                    "limits": ver.limits,
                    "nodes": [{"node": n, "state": st, "progress": p} for n, st, p in replicas],
                    # What a project may know of the above (models.ProjectVersionOut).
                    "ready": any(st == "ready" for _, st, _ in replicas),
                    "replicating": bool(up - {n for n, st, _ in replicas if st == "ready"}),
                }
            )
        return {
            "name": tmpl.name,
            "project_id": tmpl.project_id,
            "shared": tmpl.project_id is None,
            "versions": versions,
        }

    def list_templates(self, who: Principal) -> list[dict[str, Any]]:
        project = who.project_filter()
        with self.store.read() as s:
            q = select(Template).order_by(Template.name)
            if project is not None:
                q = q.where((Template.project_id == project) | Template.project_id.is_(None))
            up = _receivers(s)
            return [self._template_json(s, t, up) for t in s.scalars(q)]

    def get_template(self, who: Principal, name: str) -> dict[str, Any]:
        with self.store.read() as s:
            tmpl = self._visible_template(s, who.project_filter(), name)
            return self._template_json(s, tmpl, _receivers(s))

    def delete_template(self, who: Principal, name: str) -> dict[str, Any]:
        """Delete every version on every node. Refused (Conflict) while tenants use it;
        shared templates only by an admin."""
        with self.store.read() as s:
            tmpl = self._visible_template(s, who.project_filter(), name)
            if tmpl.project_id is None and not who.is_admin:
                raise Forbidden(f"template {name} is shared; only an admin may delete it")
            users = s.execute(
                select(Container.id, Container.project_id)
                .where(Container.template == name, Container.state.in_(LIVE))
                .limit(4)
            ).all()
            if users:
                # Name only the caller's own containers: other projects' are theirs.
                own = [cid for cid, p in users if who.is_admin or p == who.project_id]
                which = f"container(s) {', '.join(own[:3])}" if own else "other projects"
                raise Conflict(f"template {name} is used by {which}; delete them first")
            holders = s.execute(
                select(Node.name, Node.url, Node.agent_token)
                .join(TemplateReplica, TemplateReplica.node_id == Node.id)
                .join(TemplateVersion, TemplateVersion.id == TemplateReplica.version_id)
                .where(TemplateVersion.template_id == tmpl.id)
                .distinct()
            ).all()
        for _node_name, url, token in holders:
            with contextlib.suppress(NotFound):
                self._agent(url, token).delete_template(name)
        with self.store.write() as s:
            s.execute(delete(Template).where(Template.name == name))
        return {"name": name, "deleted": True, "nodes": sorted(h[0] for h in holders)}

    def snapshot(self, who: Principal, cid: str, template: str | None = None) -> dict[str, Any]:
        """Make a new version of template `template` (default: the container's own, if
        its project owns it; an admin may also add versions to shared templates) from
        the container's files, on the container's node.

        Returns the finished operation; its result names the template version, which
        the replicator then copies to every other node.
        """
        row, node = self._node_of(who.project_filter(), cid, "snapshot")
        name = template or row.template
        check_name(name)
        with self.store.write() as s:
            tmpl = s.scalar(select(Template).where(Template.name == name))
            shared_by_admin = tmpl is not None and tmpl.project_id is None and who.is_admin
            if tmpl is not None and tmpl.project_id != row.project_id and not shared_by_admin:
                raise Conflict(
                    f"template {name} belongs to another project or is shared; "
                    "give a new name with `template`"
                )
            known = 0
            if tmpl is not None:
                known = int(
                    s.scalar(
                        select(func.max(TemplateVersion.version)).where(
                            TemplateVersion.template_id == tmpl.id
                        )
                    )
                    or 0
                )
            op = self._new_op(s, row.project_id, "snapshot", cid)
            op_id = op.id
        agent = self._agent(node.url, node.agent_token)
        try:
            on_node = [t["version"] for t in agent.templates() if t["name"] == name]
            version = max([known, *on_node]) + 1
            rec = agent.action(cid, "snapshot", {"template": name, "version": version})
        except HoodyError as exc:
            public = self._fail_op(op_id, exc)
            if who.is_admin:
                raise
            raise public from exc
        try:
            with self.store.write() as s:
                tmpl = s.scalar(select(Template).where(Template.name == name))
                if tmpl is None:
                    tmpl = Template(name=name, project_id=row.project_id, created_at=self.clock())
                    s.add(tmpl)
                    s.flush()
                ver = TemplateVersion(
                    template_id=tmpl.id,
                    version=int(rec.get("version", version)),
                    limits=rec.get("limits") if isinstance(rec.get("limits"), dict) else {},
                    created_at=self.clock(),
                )
                s.add(ver)
                s.flush()
                s.add(TemplateReplica(version_id=ver.id, node_id=node.id, state="ready"))
                done = s.get(Operation, op_id)
                assert done is not None
                done.state, done.updated_at = "succeeded", self.clock()
                done.result = {"template": name, "version": ver.version, "node": node.name}
                return op_json(done)
        except IntegrityError as exc:
            # Another snapshot of this template took the same number meanwhile.
            with contextlib.suppress(HoodyError):
                agent.delete_template(name, version)
            error = Conflict(
                f"another snapshot of template {name} took version {version} at the same "
                "time; retry the snapshot"
            )
            self._fail_op(op_id, error)
            raise error from exc

    def _fail_op(self, op_id: str, exc: HoodyError) -> HoodyError:
        """Record the operation failed with `exc` as its project may read it (its token
        polls it); returns that error."""
        public = self.public_error(exc)
        with self.store.write() as s:
            failed = s.get(Operation, op_id)
            if failed is not None:
                failed.state, failed.updated_at = "failed", self.clock()
                failed.error = public.to_json()["error"]
        return public


def _receivers(s: Session) -> set[str]:
    """The nodes replication sends every version to (as replication.py plans)."""
    return {
        name
        for name, health, cordon in s.execute(select(Node.name, Node.health, Node.cordon))
        if health == "up" and cordon != "draining"
    }
