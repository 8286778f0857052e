"""Template versions reach every node: streamed from a node that holds a version to
each up node that lacks it, through the control plane.

    node A ── GET /v1/templates/T/V/send?parent=P ──► control plane
    control plane ── POST /v1/templates/T/V/receive (the same bytes) ──► node B

On btrfs that is `btrfs send -p` on A and `btrfs receive` on B: with a parent version
both nodes hold, only the difference travels. The stream passes through the control
plane rather than from agent to agent so that no node ever holds another node's
token; the control plane already holds them all.

`replicate_once` (run twice a second by the API app) plans and starts transfers:

- Each transfer is claimed by inserting a `receiving` replica row, unique per
  (version, node), together with an operation (kind `replicate`) that records the
  source, parent, bytes and errors. Several control plane processes never send one
  version to one node twice; a claim whose operation saw no progress for
  `Settings.replication_stale` seconds belonged to a dead process and is dropped.
- A node receives one transfer at a time, versions of a template in ascending order,
  so each version can be sent as the difference from the one before.
- The parent is chosen from what both agents actually hold (asked at transfer time);
  if the receiver cannot use it (a version of the same number built separately on
  that node), the version is sent whole.
- Progress (bytes received / the sender's size estimate, at most 99% until done) is
  written to the replica row, which `hoody templates` shows. Placement only uses
  `ready` replicas, and a copy that finds only `receiving` ones waits (containers.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from hoody.agent.client import AgentClient, TemplateStream
from hoody.control.base import FleetBase
from hoody.control.db import Node, Operation, Template, TemplateReplica, TemplateVersion
from hoody.errors import Conflict, HoodyError, HostError

__all__ = ["Replication", "Transfer"]

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 0.5


@dataclass(frozen=True)
class Transfer:
    """One version on its way from `source` to `target` (node names and ids)."""

    op_id: str
    version_id: int
    template: str
    version: int
    project: int | None
    source: str
    source_url: str
    source_token: str
    target: str
    target_id: int
    target_url: str
    target_token: str


class _SourceFailed(Exception):
    """The sending node's stream broke; carries its HoodyError past httpx."""

    def __init__(self, error: HoodyError) -> None:
        super().__init__(error.message)
        self.error = error


class _Aborted(HostError):
    """This process stopped the transfer itself (shutting down): not worth a retry."""


class Replication(FleetBase):
    def replicate_once(self, *, wait: bool = False) -> list[Transfer]:
        """Drop stale claims, then start the transfers the fleet needs now.

        Returns the transfers started. They run in threads; with `wait` this call
        returns only when they are done (tests).
        """
        if self._closing.is_set():
            return []
        self._drop_stale_claims()
        started = []
        for planned in self._plan():
            transfer = self._claim(planned)
            if transfer is None:
                continue
            thread = threading.Thread(
                target=self._run, args=(transfer,), name=f"replicate-{transfer.target}"
            )
            with self._transfers_lock:
                self._transfers[transfer.target_id] = thread
            thread.start()
            started.append((transfer, thread))
        if wait:
            for _, thread in started:
                thread.join()
        return [t for t, _ in started]

    def _plan(self) -> list[Transfer]:
        """Up to the free transfer slots: for each up node that is not receiving, the
        lowest version it lacks that an up node holds ready."""
        with self._transfers_lock:
            busy = set(self._transfers)
        free = self.settings.replication_concurrency - len(busy)
        if free <= 0:
            return []
        now = self.clock()
        with self.store.read() as s:
            up = [
                n
                for n in s.scalars(select(Node).order_by(Node.name))
                if n.health == "up" and n.cordon != "draining"
            ]
            versions = s.execute(
                select(
                    TemplateVersion.id, Template.name, TemplateVersion.version, Template.project_id
                )
                .join(Template, Template.id == TemplateVersion.template_id)
                .order_by(Template.name, TemplateVersion.version)
            ).all()
            held: dict[int, dict[int, str]] = {}
            for version_id, node_id, state in s.execute(
                select(TemplateReplica.version_id, TemplateReplica.node_id, TemplateReplica.state)
            ):
                held.setdefault(version_id, {})[node_id] = state
            failed = {
                (op.result.get("version_id"), op.target)
                for op in s.scalars(
                    select(Operation).where(
                        Operation.kind == "replicate",
                        Operation.state == "failed",
                        Operation.updated_at > now - self.settings.replication_retry,
                    )
                )
                if not op.result.get("abandoned")
            }
        receiving = {n for h in held.values() for n, state in h.items() if state != "ready"}
        ids = {(name, version): vid for vid, name, version, _ in versions}
        plan: list[Transfer] = []
        for target in up:
            if len(plan) >= free:
                break
            if target.id in busy or target.id in receiving:
                continue
            for version_id, name, version, project in versions:
                holders = held.get(version_id, {})
                sources = [n for n in up if holders.get(n.id) == "ready"]
                if target.id in holders or not sources or (version_id, target.name) in failed:
                    continue
                # Prefer a source that also holds the newest earlier version the target
                # has: then this one can travel as the difference from it.
                earlier = [
                    v
                    for (n, v), vid in ids.items()
                    if n == name and v < version and held.get(vid, {}).get(target.id) == "ready"
                ]
                if earlier:
                    parent_holders = held.get(ids[(name, max(earlier))], {})
                    sources.sort(key=lambda n: parent_holders.get(n.id) != "ready")
                source = sources[0]
                plan.append(
                    Transfer(
                        op_id="",
                        version_id=version_id,
                        template=name,
                        version=version,
                        project=project,
                        source=source.name,
                        source_url=source.url,
                        source_token=source.agent_token,
                        target=target.name,
                        target_id=target.id,
                        target_url=target.url,
                        target_token=target.agent_token,
                    )
                )
                break  # one transfer per node at a time, lowest version first
        return plan

    def _claim(self, t: Transfer) -> Transfer | None:
        """Insert the receiving replica and its operation; None if already claimed."""
        try:
            with self.store.write() as s:
                s.add(
                    TemplateReplica(
                        version_id=t.version_id, node_id=t.target_id, state="receiving", progress=0
                    )
                )
                op = self._new_op(
                    s,
                    t.project,
                    "replicate",
                    t.target,
                    {
                        "template": t.template,
                        "version": t.version,
                        "version_id": t.version_id,
                        "source": t.source,
                        "node": t.target,
                        "parent": None,
                        "bytes": 0,
                        "size": 0,
                    },
                )
                return replace(t, op_id=op.id)
        except IntegrityError:
            return None

    def _drop_stale_claims(self) -> None:
        """Forget transfers of processes that died, and replica claims without one."""
        with self._transfers_lock:
            mine = set(self._transfers)
        cutoff = self.clock() - self.settings.replication_stale
        with self.store.read() as s:
            # Replicas before operations: a claim inserts both in one transaction, so
            # every claimed replica read here has its operation in the next read.
            claims = {
                (r.version_id, r.node_id): r.id
                for r in s.scalars(
                    select(TemplateReplica).where(TemplateReplica.state == "receiving")
                )
            }
            nodes = {n.name: n.id for n in s.scalars(select(Node))}
            live: set[tuple[int, int]] = set()
            stale: list[str] = []
            for op in s.scalars(
                select(Operation).where(Operation.kind == "replicate", Operation.state == "running")
            ):
                key = (int(op.result.get("version_id") or 0), nodes.get(op.target, 0))
                if op.updated_at >= cutoff or key[1] in mine:
                    live.add(key)
                else:
                    stale.append(op.id)
        orphans = [rid for key, rid in claims.items() if key not in live]
        if not (stale or orphans):
            return  # the usual case: no write transaction every round
        with self.store.write() as s:
            for op_id in stale:
                row = s.get(Operation, op_id)
                if row is None or row.state != "running" or row.updated_at >= cutoff:
                    continue  # it moved on meanwhile
                row.state, row.updated_at = "failed", self.clock()
                row.result = {**row.result, "abandoned": True}  # retried at once, no backoff
                row.error = {
                    "code": "host_error",
                    "message": "the control plane process sending it stopped; it is sent again",
                }
            if orphans:
                s.execute(
                    delete(TemplateReplica).where(
                        TemplateReplica.id.in_(orphans), TemplateReplica.state == "receiving"
                    )
                )

    def _run(self, t: Transfer) -> None:
        started = time.monotonic()
        try:
            result = self._send(t)
        except Exception as exc:
            error = exc if isinstance(exc, HoodyError) else HostError(str(exc))
            log.warning(
                "sending template %s v%d from %s to %s failed: %s",
                t.template,
                t.version,
                t.source,
                t.target,
                error.message,
            )
            self._finish(t, None, error)
        else:
            result["seconds"] = round(time.monotonic() - started, 3)
            log.info(
                "template %s v%d reached %s from %s (%s bytes, parent %s, %.1f s)",
                t.template,
                t.version,
                t.target,
                t.source,
                result["bytes"],
                result["parent"],
                result["seconds"],
            )
            self._finish(t, result, None)
        finally:
            with self._transfers_lock:
                self._transfers.pop(t.target_id, None)

    def _send(self, t: Transfer) -> dict[str, Any]:
        src = self._agent(t.source_url, t.source_token)
        dst = self._agent(t.target_url, t.target_token)
        have = {x["version"] for x in dst.templates() if x["name"] == t.template}
        if t.version in have:
            return {"bytes": 0, "parent": None, "already": True}
        offered = {x["version"] for x in src.templates() if x["name"] == t.template}
        common = sorted(v for v in have & offered if v < t.version)
        parent = common[-1] if common else None
        try:
            return self._stream(t, src, dst, parent)
        except Conflict:
            raise
        except HoodyError as exc:
            if parent is None or isinstance(exc, _Aborted):
                raise
            # The receiver's parent is not the sender's (built separately there):
            # send the version whole.
            log.info(
                "%s cannot take template %s v%d as a difference from v%d (%s); sending it whole",
                t.target,
                t.template,
                t.version,
                parent,
                exc.message,
            )
            return self._stream(t, src, dst, None)

    def _stream(
        self, t: Transfer, src: AgentClient, dst: AgentClient, parent: int | None
    ) -> dict[str, Any]:
        sent = 0
        with src.send_template(t.template, t.version, parent) as stream:
            self._progress(t, 0, stream.size, parent)
            last = time.monotonic()

            def counted(s: TemplateStream) -> Iterator[bytes]:
                nonlocal sent, last
                try:
                    for chunk in s.chunks:
                        if self._closing.is_set():
                            raise _SourceFailed(_Aborted("the control plane is shutting down"))
                        sent += len(chunk)
                        if time.monotonic() - last > _PROGRESS_EVERY:
                            last = time.monotonic()
                            self._progress(t, sent, s.size, parent)
                        yield chunk
                except HoodyError as exc:
                    raise _SourceFailed(exc) from exc

            try:
                dst.receive_template(t.template, t.version, stream, counted(stream))
            except _SourceFailed as exc:
                raise exc.error from exc
        return {"bytes": sent, "parent": parent, "size": stream.size}

    def _progress(self, t: Transfer, sent: int, size: int, parent: int | None) -> None:
        fraction = min(0.99, sent / size) if size > 0 else 0.0
        with self.store.write() as s:
            s.execute(
                update(TemplateReplica)
                .where(
                    TemplateReplica.version_id == t.version_id,
                    TemplateReplica.node_id == t.target_id,
                    TemplateReplica.state == "receiving",
                )
                .values(progress=fraction)
            )
            op = s.get(Operation, t.op_id)
            if op is not None:
                op.result = {**op.result, "bytes": sent, "size": size, "parent": parent}
                op.updated_at = self.clock()

    def _finish(self, t: Transfer, result: dict[str, Any] | None, error: HoodyError | None) -> None:
        with self.store.write() as s:
            op = s.get(Operation, t.op_id)
            replica = s.scalar(
                select(TemplateReplica).where(
                    TemplateReplica.version_id == t.version_id,
                    TemplateReplica.node_id == t.target_id,
                )
            )
            version_gone = s.get(TemplateVersion, t.version_id) is None
            if error is None and not version_gone:
                if replica is None:
                    s.add(
                        TemplateReplica(version_id=t.version_id, node_id=t.target_id, state="ready")
                    )
                else:
                    replica.state, replica.progress = "ready", 1.0
            elif replica is not None and replica.state == "receiving":
                s.execute(delete(TemplateReplica).where(TemplateReplica.id == replica.id))
            if op is not None:
                op.updated_at = self.clock()
                if error is None:
                    op.state = "succeeded"
                    op.result = {**op.result, **(result or {})}
                else:
                    op.state, op.error = "failed", error.to_json()["error"]
        if error is None and version_gone:
            # The template was deleted while it travelled: do not leave it on the node.
            try:
                self._agent(t.target_url, t.target_token).delete_template(t.template, t.version)
            except HoodyError as exc:
                log.warning("could not remove deleted %s v%d: %s", t.template, t.version, exc)
