"""Exec's part of /api/v1: scripts, their invocation log, per-project limits, allowed
hosts and secrets. Thin handlers over the Fleet's `Scripts` area, added to the
control plane's `ENDPOINTS` table (so they are in the OpenAPI document too).

    GET    /scripts/{project}                 list (current versions)
    PUT    /scripts/{project}/{name}          deploy {"source": "..."}
    GET    /scripts/{project}/{name}          show, with source (?version=N)
    DELETE /scripts/{project}/{name}
    GET    /scripts/{project}/{name}/logs     newest invocations (?limit=N)
    GET|PUT /projects/{project}/exec          limits and allowed hosts
    GET    /projects/{project}/secrets        names only, never values
    PUT|DELETE /projects/{project}/secrets/{name}
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from hoody.errors import InvalidInput, NotFound
from hoody.exec.limits import LimitsBody

if TYPE_CHECKING:
    from hoody.control.api import Call, Endpoint
    from hoody.control.service import Fleet

__all__ = ["endpoints"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ScriptBody(_Body):
    source: str = Field(description="The script's TypeScript source.")


class ExecSettingsBody(_Body):
    limits: LimitsBody | None = None
    allowed_hosts: list[str] | None = Field(
        None, description="host or host:port its scripts may fetch, besides the hoody API."
    )


class SecretBody(_Body):
    value: str = Field(description="Stored encrypted; never shown again.")


class ScriptOut(BaseModel):
    project: int
    name: str
    version: int
    sha256: str
    size: int
    created_at: float
    url: str = Field(description="Where it answers on the control plane: /exec/<project>/<name>.")
    changed: bool | None = Field(None, description="On deploy: false when the source was current.")
    source: str | None = None


class ScriptDeleteOut(BaseModel):
    project: int
    name: str
    deleted: bool
    existed: bool


class RunOut(BaseModel):
    id: int
    version: int
    method: str
    path: str
    status: int
    outcome: str = Field(description="ok, threw, timeout, cpu, memory, heap, crashed, load_error…")
    error: str
    started_at: float
    duration_ms: float
    cpu_ms: float
    peak_memory_bytes: int
    cold: bool = Field(description="A new worker process was started for it.")
    console: list[str]


class ExecSettingsOut(BaseModel):
    project: int
    limits: dict[str, int]
    allowed_hosts: list[str]


class SecretOut(BaseModel):
    project: int
    name: str
    updated_at: float | None = None
    existed: bool | None = None


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


def _project(c: Call) -> int:
    raw = c.path("project")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise NotFound(f"project {raw[:20]!r} does not exist; projects are numbered")
    return int(raw)


def _int(c: Call, name: str) -> int | None:
    raw = c.query(name)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise InvalidInput(f"query parameter {name} must be a whole number, got {raw[:20]!r}")
    return int(raw)


async def list_scripts(f: Fleet, c: Call) -> Any:
    return await _run(f.list_scripts, c.who, _project(c))


async def put_script(f: Fleet, c: Call) -> Any:
    body: ScriptBody = c.body
    return await _run(f.put_script, c.who, _project(c), c.path("name"), body.source)


async def get_script(f: Fleet, c: Call) -> Any:
    return await _run(f.get_script, c.who, _project(c), c.path("name"), _int(c, "version"))


async def delete_script(f: Fleet, c: Call) -> Any:
    return await _run(f.delete_script, c.who, _project(c), c.path("name"))


async def script_logs(f: Fleet, c: Call) -> Any:
    return await _run(f.script_runs, c.who, _project(c), c.path("name"), _int(c, "limit") or 50)


async def get_exec_settings(f: Fleet, c: Call) -> Any:
    return await _run(f.get_exec_settings, c.who, _project(c))


async def put_exec_settings(f: Fleet, c: Call) -> Any:
    body: ExecSettingsBody = c.body
    limits = body.limits.model_dump(exclude_none=True) if body.limits else None
    return await _run(f.put_exec_settings, c.who, _project(c), limits, body.allowed_hosts)


async def list_secrets(f: Fleet, c: Call) -> Any:
    return await _run(f.list_secrets, c.who, _project(c))


async def set_secret(f: Fleet, c: Call) -> Any:
    body: SecretBody = c.body
    return await _run(f.set_secret, c.who, _project(c), c.path("name"), body.value)


async def delete_secret(f: Fleet, c: Call) -> Any:
    return await _run(f.delete_secret, c.who, _project(c), c.path("name"))


def endpoints() -> tuple[Endpoint, ...]:
    """Exec's rows of the control plane's endpoint table."""
    from hoody.control.api import Endpoint, Param

    project = Param("project", "path", "Project id.", {"type": "integer"}, required=True)
    name = Param("name", "path", "Script name: /exec/<project>/<name>.", required=True)
    secret = Param("name", "path", "Secret name, e.g. STRIPE_WEBHOOK_SECRET.", required=True)
    number = {"type": "integer", "minimum": 1}
    return (
        Endpoint("GET", "/scripts/{project}", list_scripts, "List a project's scripts",
                 "exec", response=ScriptOut, many=True, params=(project,)),
        Endpoint("PUT", "/scripts/{project}/{name}", put_script,
                 "Deploy a script: a new version unless the source is unchanged",
                 "exec", body=ScriptBody, response=ScriptOut, params=(project, name)),
        Endpoint("GET", "/scripts/{project}/{name}", get_script,
                 "Show a script with its source (the current version, or ?version=N)",
                 "exec", response=ScriptOut,
                 params=(project, name, Param("version", "query", "A version.", number))),
        Endpoint("DELETE", "/scripts/{project}/{name}", delete_script,
                 "Delete a script: its URL answers 404 from now on",
                 "exec", response=ScriptDeleteOut, params=(project, name)),
        Endpoint("GET", "/scripts/{project}/{name}/logs", script_logs,
                 "The newest invocations: status, duration, CPU, peak memory, console",
                 "exec", response=RunOut, many=True,
                 params=(project, name, Param("limit", "query", "At most 500.", number))),
        Endpoint("GET", "/projects/{project}/exec", get_exec_settings,
                 "A project's Exec limits and allowed hosts", "exec",
                 response=ExecSettingsOut, params=(project,)),
        Endpoint("PUT", "/projects/{project}/exec", put_exec_settings,
                 "Change a project's Exec limits and allowed hosts", "exec",
                 body=ExecSettingsBody, response=ExecSettingsOut, params=(project,)),
        Endpoint("GET", "/projects/{project}/secrets", list_secrets,
                 "A project's secret names (values are never shown)", "exec",
                 response=SecretOut, many=True, params=(project,)),
        Endpoint("PUT", "/projects/{project}/secrets/{name}", set_secret,
                 "Set a secret, encrypted at rest; scripts see it as env.NAME", "exec",
                 body=SecretBody, response=SecretOut, params=(project, secret)),
        Endpoint("DELETE", "/projects/{project}/secrets/{name}", delete_secret,
                 "Delete a secret", "exec", response=SecretOut, params=(project, secret)),
    )  # fmt: skip
