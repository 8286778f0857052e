"""The Fleet's Exec area: scripts (versioned), their invocation log, per-project
limits, allowed hosts and secrets. What the API and the gateway call.

Every method takes the caller (`Principal`) and the project from the URL: a project
token works on its own project only, an admin token on any. `resolve()` is the
gateway's: /exec URLs are public (a webhook has no hoody token), so it checks
nothing but existence.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select

from hoody.control.auth import Principal
from hoody.control.base import FleetBase
from hoody.control.db import Project
from hoody.errors import HostError, InvalidInput, NotFound
from hoody.exec import tokens
from hoody.exec.limits import Limits, check_hosts
from hoody.exec.secrets import MAX_VALUE, SecretBox, check_secret_name
from hoody.exec.tables import ProjectExec, ProjectSecret, Script, ScriptRun

__all__ = ["MAX_SOURCE", "Resolved", "Scripts", "check_script_name"]

MAX_SOURCE = 512 * 1024
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Invocation rows kept per script; older ones are pruned as new ones arrive.
KEEP_RUNS = 1000


def check_script_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"script name {str(name)[:70]!r} is invalid; use lower-case letters, digits, "
            "- and _ (it becomes the URL /exec/<project>/<name>)"
        )
    return name


@dataclass(frozen=True)
class Resolved:
    """What the gateway needs to run the current version of a script."""

    project: int
    name: str
    version: int
    source: str
    limits: Limits
    allowed_hosts: tuple[str, ...]
    secrets: dict[str, str]


# How long the gateway may serve a script, its limits and secrets from memory. A
# change made through this process is seen at once (its cache entries are dropped);
# one made through another control plane process sharing the database, within this.
RESOLVE_TTL = 1.0


class Scripts(FleetBase):
    _box: SecretBox | None = None
    _box_lock = threading.Lock()
    _resolved: dict[tuple[int, str], tuple[float, Resolved]]

    def cached(self, project: int, name: str) -> Resolved | None:
        """`resolve()`'s answer if it is fresh, without touching the database: the
        warm path of an invocation then costs no thread hop and no query."""
        cache: dict[tuple[int, str], tuple[float, Resolved]] = self.__dict__.get("_resolved", {})
        hit = cache.get((project, name))
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        return None

    def _forget(self, project: int) -> None:
        cache = self.__dict__.setdefault("_resolved", {})
        for key in [k for k in cache if k[0] == project]:
            cache.pop(key, None)

    @property
    def secret_box(self) -> SecretBox:
        """The exec key's box; HostError when this control plane has no state dir."""
        if self._box is None:
            with self._box_lock:
                if self._box is None:
                    state_dir = self.settings.state_dir
                    if state_dir is None:
                        raise HostError(
                            "Exec needs the control plane's state dir (for its key); "
                            "start it with `hoody server` or `hoody up`"
                        )
                    self._box = SecretBox.open(state_dir)
        return self._box

    def _project(self, who: Principal, project: int) -> int:
        project = who.project_for(project)
        with self.store.read() as s:
            if s.get(Project, project) is None:
                raise NotFound(f"project {project} does not exist; GET /api/v1/projects")
        return project

    # scripts

    def put_script(self, who: Principal, project: int, name: str, source: str) -> dict[str, Any]:
        """Deploy `source` as the newest version of `name`; the same source as the
        current version makes no new version (`changed` false)."""
        project = self._project(who, project)
        self._forget(project)
        check_script_name(name)
        if not isinstance(source, str) or not source.strip():
            raise InvalidInput("the script is empty; send its TypeScript source")
        if len(source.encode()) > MAX_SOURCE:
            raise InvalidInput(f"the script is over {MAX_SOURCE} bytes; make it smaller")
        if "\x00" in source:
            raise InvalidInput("the script contains a NUL character; send UTF-8 text")
        sha = hashlib.sha256(source.encode()).hexdigest()
        with self.store.write() as s:
            current = self._current(s, project, name)
            if current is not None and current.sha256 == sha:
                return {**_script_json(current), "changed": False}
            top = s.scalar(
                select(func.max(Script.version)).where(
                    Script.project_id == project, Script.name == name
                )
            )
            row = Script(
                project_id=project,
                name=name,
                version=int(top or 0) + 1,
                source=source,
                sha256=sha,
                created_at=self.clock(),
            )
            s.add(row)
            s.flush()
            return {**_script_json(row), "changed": True}

    def _current(self, s: Any, project: int, name: str) -> Script | None:
        return s.scalar(  # type: ignore[no-any-return]
            select(Script)
            .where(Script.project_id == project, Script.name == name, Script.deleted_at.is_(None))
            .order_by(Script.version.desc())
            .limit(1)
        )

    def get_script(
        self, who: Principal, project: int, name: str, version: int | None = None
    ) -> dict[str, Any]:
        project = self._project(who, project)
        check_script_name(name)
        with self.store.read() as s:
            if version is None:
                row = self._current(s, project, name)
            else:
                row = s.scalar(
                    select(Script).where(
                        Script.project_id == project,
                        Script.name == name,
                        Script.version == version,
                    )
                )
            if row is None:
                raise NotFound(
                    f"script {project}/{name} does not exist; `hoody scripts ls` lists them"
                )
            return {**_script_json(row), "source": row.source}

    def list_scripts(self, who: Principal, project: int) -> list[dict[str, Any]]:
        project = self._project(who, project)
        with self.store.read() as s:
            rows = s.scalars(
                select(Script)
                .where(Script.project_id == project, Script.deleted_at.is_(None))
                .order_by(Script.name, Script.version.desc())
            )
            seen: dict[str, dict[str, Any]] = {}
            for row in rows:
                seen.setdefault(row.name, _script_json(row))
            return list(seen.values())

    def delete_script(self, who: Principal, project: int, name: str) -> dict[str, Any]:
        project = self._project(who, project)
        self._forget(project)
        check_script_name(name)
        with self.store.write() as s:
            rows = list(
                s.scalars(
                    select(Script).where(
                        Script.project_id == project,
                        Script.name == name,
                        Script.deleted_at.is_(None),
                    )
                )
            )
            for row in rows:
                row.deleted_at = self.clock()
        return {"project": project, "name": name, "deleted": True, "existed": bool(rows)}

    # the invocation log

    def record_run(self, project: int, name: str, version: int, **run: Any) -> None:
        self.record_runs([{"project": project, "name": name, "version": version, **run}])

    def record_runs(self, runs: list[dict[str, Any]]) -> None:
        """Log invocations (each a dict of ScriptRun's fields, `project` for project_id)
        in one transaction; keeps the newest KEEP_RUNS per script."""
        with self.store.write() as s:
            for run in runs:
                fields = {k: v for k, v in run.items() if k != "project"}
                row = ScriptRun(project_id=run["project"], **fields)
                s.add(row)
                s.flush()
                if row.id % 100 == 0:  # prune now and then, not on every run
                    s.execute(
                        delete(ScriptRun).where(
                            ScriptRun.project_id == row.project_id,
                            ScriptRun.name == row.name,
                            ScriptRun.id <= row.id - KEEP_RUNS,
                        )
                    )

    def script_runs(
        self, who: Principal, project: int, name: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The newest invocations of a script, newest first."""
        project = self._project(who, project)
        check_script_name(name)
        limit = max(1, min(int(limit), 500))
        with self.store.read() as s:
            rows = s.scalars(
                select(ScriptRun)
                .where(ScriptRun.project_id == project, ScriptRun.name == name)
                .order_by(ScriptRun.id.desc())
                .limit(limit)
            )
            return [_run_json(r) for r in rows]

    # settings: limits and allowed hosts

    def get_exec_settings(self, who: Principal, project: int) -> dict[str, Any]:
        project = self._project(who, project)
        with self.store.read() as s:
            row = s.get(ProjectExec, project)
            return _settings_json(project, row)

    def put_exec_settings(
        self,
        who: Principal,
        project: int,
        limits: dict[str, int] | None,
        allowed_hosts: list[str] | None,
    ) -> dict[str, Any]:
        """Change what is given; omitted parts stay. Limits apply to workers started
        from now on (warm workers with the old limits are retired on next use)."""
        project = self._project(who, project)
        self._forget(project)
        hosts = check_hosts(allowed_hosts) if allowed_hosts is not None else None
        with self.store.write() as s:
            row = s.get(ProjectExec, project)
            if row is None:
                row = ProjectExec(project_id=project, limits={}, allowed_hosts=[])
                s.add(row)
            if limits is not None:
                row.limits = {**row.limits, **{k: v for k, v in limits.items() if v is not None}}
            if hosts is not None:
                row.allowed_hosts = hosts
            row.updated_at = self.clock()
            s.flush()
            return _settings_json(project, row)

    # secrets

    def set_secret(self, who: Principal, project: int, name: str, value: str) -> dict[str, Any]:
        project = self._project(who, project)
        self._forget(project)
        check_secret_name(name)
        if not isinstance(value, str) or len(value) > MAX_VALUE or "\x00" in value:
            raise InvalidInput(f"secret {name}: give a text value of at most {MAX_VALUE} bytes")
        sealed = self.secret_box.seal(value)
        with self.store.write() as s:
            row = s.scalar(
                select(ProjectSecret).where(
                    ProjectSecret.project_id == project, ProjectSecret.name == name
                )
            )
            if row is None:
                row = ProjectSecret(project_id=project, name=name, ciphertext=sealed)
                s.add(row)
            row.ciphertext = sealed
            row.updated_at = self.clock()
            s.flush()
            return {"project": project, "name": name, "updated_at": row.updated_at}

    def list_secrets(self, who: Principal, project: int) -> list[dict[str, Any]]:
        """Names and dates only: values are never given back."""
        project = self._project(who, project)
        with self.store.read() as s:
            rows = s.scalars(
                select(ProjectSecret)
                .where(ProjectSecret.project_id == project)
                .order_by(ProjectSecret.name)
            )
            return [{"project": project, "name": r.name, "updated_at": r.updated_at} for r in rows]

    def delete_secret(self, who: Principal, project: int, name: str) -> dict[str, Any]:
        project = self._project(who, project)
        self._forget(project)
        check_secret_name(name)
        with self.store.write() as s:
            gone = s.execute(
                delete(ProjectSecret).where(
                    ProjectSecret.project_id == project, ProjectSecret.name == name
                )
            )
        return {"project": project, "name": name, "existed": bool(gone.rowcount)}  # type: ignore[attr-defined]

    # the gateway's side

    def resolve(self, project: int, name: str) -> Resolved:
        """The current version of a script with its project's limits, allowed hosts
        and decrypted secrets; NotFound when there is none."""
        check_script_name(name)
        with self.store.read() as s:
            row = self._current(s, project, name)
            if row is None:
                raise NotFound(f"no script {project}/{name} is deployed")
            settings = s.get(ProjectExec, project)
            secrets = list(
                s.execute(
                    select(ProjectSecret.name, ProjectSecret.ciphertext).where(
                        ProjectSecret.project_id == project
                    )
                )
            )
        box = self.secret_box
        resolved = Resolved(
            project,
            name,
            row.version,
            row.source,
            Limits().merged(settings.limits if settings else {}),
            tuple(settings.allowed_hosts if settings else ()),
            {n: box.open_value(c) for n, c in secrets},
        )
        self.__dict__.setdefault("_resolved", {})[(project, name)] = (
            self.clock() + RESOLVE_TTL,
            resolved,
        )
        return resolved

    def mint_invocation_token(self, project: int, script: str, ttl: float) -> str:
        return tokens.mint(self.secret_box.token_key, project, script, self.clock() + ttl)

    def invocation_project(self, token: str) -> int:
        return tokens.verify(self.secret_box.token_key, token, self.clock())


def _script_json(row: Script) -> dict[str, Any]:
    return {
        "project": row.project_id,
        "name": row.name,
        "version": row.version,
        "sha256": row.sha256,
        "size": len(row.source.encode()),
        "created_at": row.created_at,
        "url": f"/exec/{row.project_id}/{row.name}",
    }


def _run_json(r: ScriptRun) -> dict[str, Any]:
    return {
        "id": r.id,
        "version": r.version,
        "method": r.method,
        "path": r.path,
        "status": r.status,
        "outcome": r.outcome,
        "error": r.error,
        "started_at": r.started_at,
        "duration_ms": r.duration_ms,
        "cpu_ms": r.cpu_ms,
        "peak_memory_bytes": r.peak_memory_bytes,
        "cold": r.cold,
        "console": r.console,
    }


def _settings_json(project: int, row: ProjectExec | None) -> dict[str, Any]:
    return {
        "project": project,
        "limits": Limits().merged(row.limits if row else {}).to_json(),
        "allowed_hosts": list(row.allowed_hosts) if row else [],
    }
