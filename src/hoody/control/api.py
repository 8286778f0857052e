"""The fleet API, /api/v1: thin handlers over `Fleet`, one table of endpoints.

The `ENDPOINTS` table drives both the routes and the OpenAPI 3.1 document, so the
document cannot drift from what is served. Each handler parses (pydantic), calls one
Fleet method in a worker thread (the store and agent clients block) and returns JSON.

Every error is `{"error": {"code", "message"}}` with its status. Bad JSON, unknown
fields, out-of-range numbers, odd path parameters and unknown routes are all 4xx;
a 500 only means a bug, and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import html
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import anyio
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from hoody import jsonbody
from hoody.agent.client import WOKE_HEADER
from hoody.control import models as m
from hoody.control.auth import Principal
from hoody.control.service import Fleet
from hoody.control.shell import exec_endpoint, logs_endpoint
from hoody.dashboard.figures import FleetFigures
from hoody.dashboard.metrics import ApiMetrics
from hoody.dashboard.metrics import registry as metrics_registry
from hoody.dashboard.web import Dashboard
from hoody.errors import Exhausted, HoodyError, InvalidInput, NotFound
from hoody.exec import api as exec_api
from hoody.exec.gateway import Gateway

__all__ = ["ENDPOINTS", "create_app", "openapi"]

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Answer:
    """A handler's answer with headers of its own (the body is serialised as any)."""

    body: Any
    headers: dict[str, str]


@dataclass
class Call:
    """What a handler gets: the caller, the parsed body and the raw request."""

    request: Request
    who: Principal
    body: Any

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)


Handler = Callable[[Fleet, Call], Awaitable[Any]]
# A handler that is one blocking service call, run in a worker thread (see `threaded`).
Blocking = Callable[[Fleet, Call], Any]


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query | header
    description: str = ""
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler | Blocking
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    many: bool = False
    status: int = 200
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = (400, 401, 403, 404)
    # With a project view, the answer is serialised through `response` for admin
    # tokens and through this model for every other caller (project, Exec, router).
    project_response: type[BaseModel] | None = None
    # `handler` is Blocking: it runs in the worker thread that authenticated the caller,
    # one thread hop instead of two (for a router's wake, on a customer's first request).
    threaded: bool = False
    # The answer carries an ETag of its content, and a caller that sends it back
    # (If-None-Match) gets 304 while nothing changed: nothing is serialised or sent.
    conditional: bool = False

    def serialise(self, who: Principal, result: Any) -> Any:
        """`result` built into the caller's response model and dumped, so that what the
        API returns is what the OpenAPI document says: a field the model does not name
        is not sent, and one it needs that the service did not give is a 500 (a bug),
        never a silent difference from the document."""
        model = self.response
        if self.project_response is not None and not who.is_admin:
            model = self.project_response
        if model is None:
            return result
        adapter = _adapter(model, self.many)
        return adapter.dump_python(adapter.validate_python(result), mode="json")


def _etag(result: Any) -> str:
    """A strong ETag of an answer's content. Hashing the JSON (C code) costs a
    fraction of building the response model: the router asks for 2,000 routes twice
    a second, and validating them was a quarter of the control plane's CPU at rest."""
    raw = json.dumps(result, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.blake2b(raw.encode(), digest_size=16).hexdigest() + '"'


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


def _int_query(call: Call, name: str, default: int | None = None) -> int | None:
    raw = call.query(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10:
        raise InvalidInput(f"query parameter {name} must be a whole number, got {raw[:20]!r}")
    return int(raw)


def _metadata_query(call: Call) -> dict[str, str]:
    out = {}
    for item in call.request.query_params.getlist("metadata"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"metadata filter {item[:40]!r} is invalid; write key=value")
        out[key] = value
    return out


# handlers: parse → service → response


async def copy(f: Fleet, c: Call) -> Any:
    body: m.CopyBody = c.body
    project = c.who.project_for(body.project)
    try:
        return await _copy(f, c, body, project)
    except Exhausted as exc:
        if c.who.is_admin:
            raise
        # Which nodes exist and how much memory each has free is the operator's to
        # know, not every project's.
        raise Exhausted(
            "the fleet has no room for this tenant right now (memory, disk or tenant "
            "count); retry later, or ask the fleet's operator to add capacity"
        ) from exc


async def _copy(f: Fleet, c: Call, body: m.CopyBody, project: int) -> Any:
    return await run(
        f.copy,
        project,
        c.path("template"),
        body.spec(),
        idempotency_key=c.request.headers.get("idempotency-key"),
        strategy=body.strategy,
    )


async def list_containers(f: Fleet, c: Call) -> Any:
    return await run(
        f.list_containers,
        c.who,
        project=_int_query(c, "project"),
        template=c.query("template"),
        node=c.query("node"),
        state=c.query("state"),
        metadata=_metadata_query(c),
        limit=_int_query(c, "limit", 50) or 0,
        cursor=c.query("cursor"),
    )


async def get_container(f: Fleet, c: Call) -> Any:
    return await run(f.get_container, c.who, c.path("cid"))


async def delete_container(f: Fleet, c: Call) -> Any:
    return await run(f.delete_container, c.who, c.path("cid"))


async def start(f: Fleet, c: Call) -> Any:
    return await run(f.start, c.who, c.path("cid"))


async def stop(f: Fleet, c: Call) -> Any:
    return await run(f.stop, c.who, c.path("cid"))


async def sleep(f: Fleet, c: Call) -> Any:
    body: m.SleepBody | None = c.body
    return await run(f.sleep, c.who, c.path("cid"), body.mode if body else None)


def wake(f: Fleet, c: Call) -> Any:
    # Routers read what the wake did (a started tenant's port takes a moment to open)
    # and where its time went; `_endpoint` adds the control plane's own total.
    rec, woken = f.wake_traced(c.who, c.path("cid"))
    headers = {
        WOKE_HEADER: woken.was or "no",
        "Server-Timing": f"agent;dur={woken.agent_ms:.2f}, node;dur={woken.node_ms:.2f}",
    }
    return Answer(rec, headers)


async def report_activity(f: Fleet, c: Call) -> Any:
    body: m.ActivityBody = c.body
    return await run(f.report_activity, c.who, body.seen, body.woken)


async def snapshot(f: Fleet, c: Call) -> Any:
    body: m.SnapshotBody = c.body
    return await run(f.snapshot, c.who, c.path("cid"), body.template)


async def list_templates(f: Fleet, c: Call) -> Any:
    return await run(f.list_templates, c.who)


async def get_template(f: Fleet, c: Call) -> Any:
    return await run(f.get_template, c.who, c.path("name"))


async def delete_template(f: Fleet, c: Call) -> Any:
    return await run(f.delete_template, c.who, c.path("name"))


async def join(f: Fleet, c: Call) -> Any:
    body: m.JoinBody = c.body
    return await run(f.join, c.who, body.name, body.url, body.agent_token)


async def list_nodes(f: Fleet, c: Call) -> Any:
    return await run(f.list_nodes, c.who)


def _cordon(state: str) -> Handler:
    async def handler(f: Fleet, c: Call) -> Any:
        return await run(f.set_cordon, c.who, c.path("name"), state)

    return handler


async def heartbeat(f: Fleet, c: Call) -> Any:
    body: m.HeartbeatBody = c.body
    templates = [t.model_dump(exclude_none=True) for t in body.templates or []]
    out = await run(
        f.heartbeat,
        c.who,
        c.path("name"),
        body.headroom,
        templates if body.templates is not None else None,
        [u.model_dump() for u in body.usage] if body.usage is not None else None,
        tenant_usage={k: list(v) for k, v in body.tenant_usage.items()}
        if body.tenant_usage is not None
        else None,
    )
    if body.sleeping:  # the heartbeat was accepted: the caller is that node
        sleeping = {cid: ref.model_dump() for cid, ref in body.sleeping.items()}
        await run(f.sync_sleepers, c.path("name"), sleeping)
    return out


async def set_node(f: Fleet, c: Call) -> Any:
    body: m.NodeSettingsBody = c.body
    return await run(
        f.set_node,
        c.who,
        c.path("name"),
        body.overcommit,
        body.reserve,
        monthly_cost=body.monthly_cost,
        currency=body.currency,
    )


async def list_projects(f: Fleet, c: Call) -> Any:
    return await run(f.list_projects, c.who)


async def create_project(f: Fleet, c: Call) -> Any:
    body: m.ProjectBody = c.body
    return await run(f.create_project, c.who, body.name)


def _project_id(c: Call) -> int:
    raw = c.path("project")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise NotFound(f"project {raw[:20]!r} does not exist; projects are numbered")
    return int(raw)


async def get_project(f: Fleet, c: Call) -> Any:
    return await run(f.get_project, c.who, _project_id(c))


async def set_project(f: Fleet, c: Call) -> Any:
    body: m.ProjectSettingsBody = c.body
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    return await run(f.set_project, c.who, _project_id(c), changes)


async def list_tokens(f: Fleet, c: Call) -> Any:
    return await run(f.list_tokens, c.who)


async def create_token(f: Fleet, c: Call) -> Any:
    body: m.TokenBody = c.body
    return await run(
        f.create_token,
        c.who,
        body.scope,
        project_id=body.project_id,
        description=body.description,
        ttl=body.ttl_seconds,
    )


async def revoke_token(f: Fleet, c: Call) -> Any:
    raw = c.path("token_id")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10:
        raise NotFound(f"token {raw[:20]!r} does not exist; GET /api/v1/tokens lists them")
    return await run(f.revoke_token, c.who, int(raw))


async def get_operation(f: Fleet, c: Call) -> Any:
    return await run(f.get_operation, c.who, c.path("op_id"))


async def authorize(f: Fleet, c: Call) -> Any:
    body: m.AuthorizeBody | None = c.body
    return await run(f.authorize, c.who, c.path("cid"), body.ttl_seconds if body else None)


async def revoke_claims(f: Fleet, c: Call) -> Any:
    return await run(f.revoke_claims, c.who, c.path("cid"))


async def exchange_claim(f: Fleet, c: Call) -> Any:
    body: m.ExchangeBody = c.body
    return await run(f.exchange, c.who, body.container, body.claim)


async def route_table(f: Fleet, c: Call) -> Any:
    return await run(f.route_table, c.who)


async def list_claim_keys(f: Fleet, c: Call) -> Any:
    return await run(f.list_keys, c.who)


async def rotate_claim_key(f: Fleet, c: Call) -> Any:
    return await run(f.rotate_key, c.who)


async def retire_claim_key(f: Fleet, c: Call) -> Any:
    return await run(f.retire_key, c.who, c.path("kid"))


async def list_orphans(f: Fleet, c: Call) -> Any:
    return await run(f.list_orphans, c.who)


async def reconcile(f: Fleet, c: Call) -> Any:
    return await run(f.reconcile, c.who)


async def whoami(f: Fleet, c: Call) -> Any:
    return {"scope": c.who.scope, "project_id": c.who.project_id, "node": c.who.node}


_CID = Param("cid", "path", "Container id.", required=True)
_TEMPLATE = Param("template", "path", "Template name.", required=True)
_NAME = Param("name", "path", required=True)
_PROJECT = Param("project", "path", "Project id.", {"type": "integer", "minimum": 1}, True)
_LIST_PARAMS = (
    Param("project", "query", "Project id (admin tokens).", {"type": "integer", "minimum": 1}),
    Param("template", "query", "Only this template."),
    Param("node", "query", "Only this node."),
    Param("state", "query", "creating, running, sleeping, stopped, failed, deleting or deleted."),
    Param(
        "metadata",
        "query",
        "key=value; repeat to require several.",
        {"type": "array", "items": {"type": "string"}},
    ),
    Param(
        "limit", "query", "Page size (1-500).", {"type": "integer", "minimum": 1, "maximum": 500}
    ),
    Param("cursor", "query", "`next_cursor` of the previous page."),
)
_IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    "Same key, same container: retries never make a second one.",
    {"type": "string", "minLength": 1, "maxLength": 255},
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/containers/{template}/copy",
        copy,
        "Create a container from a template on the node with headroom",
        "containers",
        body=m.CopyBody,
        response=m.ContainerOut,
        project_response=m.ProjectContainerOut,
        status=201,
        params=(_TEMPLATE, _IDEMPOTENCY),
        errors=(400, 401, 403, 404, 409, 507),
    ),
    Endpoint(
        "GET",
        "/containers",
        list_containers,
        "List containers, oldest first, one page at a time",
        "containers",
        response=m.ContainerPage,
        project_response=m.ProjectContainerPage,
        params=_LIST_PARAMS,
    ),
    Endpoint(
        "GET",
        "/containers/{cid}",
        get_container,
        "Show a container",
        "containers",
        response=m.ContainerOut,
        project_response=m.ProjectContainerOut,
        params=(_CID,),
    ),
    Endpoint(
        "DELETE",
        "/containers/{cid}",
        delete_container,
        "Delete a container and everything it had; deleting again answers existed=false",
        "containers",
        response=m.DeleteOut,
        params=(_CID,),
        errors=(400, 401, 403, 404, 409),
    ),
    Endpoint(
        "POST",
        "/containers/{cid}/start",
        start,
        "Start a stopped container",
        "containers",
        response=m.ContainerOut,
        project_response=m.ProjectContainerOut,
        params=(_CID,),
        errors=(400, 401, 403, 404, 409),
    ),
    Endpoint(
        "POST",
        "/containers/{cid}/stop",
        stop,
        "Stop a container; its files stay",
        "containers",
        response=m.ContainerOut,
        project_response=m.ProjectContainerOut,
        params=(_CID,),
        errors=(400, 401, 403, 404, 409),
    ),
    Endpoint(
        "POST",
        "/containers/{cid}/sleep",
        sleep,
        "Put a container to sleep: stopped (memory freed) or frozen (memory kept)",
        "containers",
        body=m.SleepBody,
        response=m.ContainerOut,
        project_response=m.ProjectContainerOut,
        params=(_CID,),
        errors=(400, 401, 403, 404, 409),
    ),
    Endpoint(
        "POST",
        "/containers/{cid}/wake",
        wake,
        "Wake a sleeping container (routers do this for its next request)",
        "containers",
        response=m.ContainerOut,
        project_response=m.ProjectContainerOut,
        params=(_CID,),
        errors=(400, 401, 403, 404, 409),
        threaded=True,
    ),
    Endpoint(
        "POST",
        "/router/activity",
        report_activity,
        "Which containers got requests and how long ago (routers report; idle ones sleep)",
        "claims",
        body=m.ActivityBody,
        response=m.ActivityOut,
    ),
    Endpoint(
        "POST",
        "/containers/{cid}/snapshot",
        snapshot,
        "Make a new template version from a container's files",
        "containers",
        body=m.SnapshotBody,
        response=m.OperationOut,
        project_response=m.ProjectOperationOut,
        status=201,
        params=(_CID,),
        errors=(400, 401, 403, 404, 409),
    ),
    Endpoint(
        "GET",
        "/templates",
        list_templates,
        "List templates with versions (and, for admins, the nodes holding each)",
        "templates",
        response=m.TemplateOut,
        project_response=m.ProjectTemplateOut,
        many=True,
    ),
    Endpoint(
        "GET",
        "/templates/{name}",
        get_template,
        "Show a template",
        "templates",
        response=m.TemplateOut,
        project_response=m.ProjectTemplateOut,
        params=(_NAME,),
    ),
    Endpoint(
        "DELETE",
        "/templates/{name}",
        delete_template,
        "Delete a template everywhere; refused (409) while containers use it",
        "templates",
        response=m.TemplateDeleteOut,
        project_response=m.ProjectTemplateDeleteOut,
        params=(_NAME,),
        errors=(400, 401, 403, 404, 409),
    ),
    Endpoint(
        "POST",
        "/nodes/join",
        join,
        "Join a node (join token); returns its node token",
        "nodes",
        body=m.JoinBody,
        response=m.JoinOut,
        status=201,
        errors=(400, 401, 403, 404, 409),
    ),
    Endpoint(
        "GET",
        "/nodes",
        list_nodes,
        "List nodes with headroom (admin)",
        "nodes",
        response=m.NodeOut,
        many=True,
    ),
    Endpoint(
        "PATCH",
        "/nodes/{name}",
        set_node,
        "Set a node's overcommit ratio, host memory reserve, monthly cost and currency (admin)",
        "nodes",
        body=m.NodeSettingsBody,
        response=m.NodeOut,
        params=(_NAME,),
        errors=(400, 401, 403, 404, 500),
    ),
    Endpoint(
        "POST",
        "/nodes/{name}/cordon",
        _cordon("cordoned"),
        "No new containers here (admin)",
        "nodes",
        response=m.NodeOut,
        params=(_NAME,),
    ),
    Endpoint(
        "POST",
        "/nodes/{name}/uncordon",
        _cordon("none"),
        "Take new containers again (admin)",
        "nodes",
        response=m.NodeOut,
        params=(_NAME,),
    ),
    Endpoint(
        "POST",
        "/nodes/{name}/drain",
        _cordon("draining"),
        "Cordon and start a drain operation (admin)",
        "nodes",
        params=(_NAME,),
    ),
    Endpoint(
        "POST",
        "/nodes/{name}/heartbeat",
        heartbeat,
        "A node agent reports it is alive, with headroom and templates",
        "nodes",
        body=m.HeartbeatBody,
        response=m.NodeOut,
        params=(_NAME,),
    ),
    Endpoint(
        "GET",
        "/projects",
        list_projects,
        "List projects (admin)",
        "admin",
        response=m.ProjectOut,
        many=True,
    ),
    Endpoint(
        "POST",
        "/projects",
        create_project,
        "Create a project (admin)",
        "admin",
        body=m.ProjectBody,
        response=m.ProjectOut,
        status=201,
        errors=(400, 401, 403, 409),
    ),
    Endpoint(
        "GET",
        "/projects/{project}",
        get_project,
        "Show a project, its quotas and what counts against them (admin, or its own token)",
        "admin",
        response=m.ProjectOut,
        params=(_PROJECT,),
    ),
    Endpoint(
        "PATCH",
        "/projects/{project}",
        set_project,
        "Set a project's quotas: tenants, memory and disk (admin; null removes one)",
        "admin",
        body=m.ProjectSettingsBody,
        response=m.ProjectOut,
        params=(_PROJECT,),
    ),
    Endpoint(
        "GET",
        "/tokens",
        list_tokens,
        "List tokens, without secrets (admin)",
        "admin",
        response=m.TokenOut,
        many=True,
    ),
    Endpoint(
        "POST",
        "/tokens",
        create_token,
        "Create a token; its secret is shown once (admin)",
        "admin",
        body=m.TokenBody,
        response=m.TokenOut,
        status=201,
    ),
    Endpoint(
        "DELETE",
        "/tokens/{token_id}",
        revoke_token,
        "Revoke a token (admin)",
        "admin",
        response=m.TokenOut,
        params=(Param("token_id", "path", required=True),),
    ),
    Endpoint(
        "GET",
        "/operations/{op_id}",
        get_operation,
        "Poll an operation",
        "operations",
        response=m.OperationOut,
        project_response=m.ProjectOperationOut,
        params=(Param("op_id", "path", required=True),),
    ),
    Endpoint(
        "POST",
        "/containers/{cid}/authorize",
        authorize,
        "Mint a one-hour claim that lets one customer into this container",
        "claims",
        body=m.AuthorizeBody,
        response=m.ClaimOut,
        params=(_CID,),
    ),
    Endpoint(
        "POST",
        "/containers/{cid}/claims/revoke",
        revoke_claims,
        "End every session of this container",
        "claims",
        response=m.RevokeOut,
        params=(_CID,),
    ),
    Endpoint(
        "POST",
        "/claims/exchange",
        exchange_claim,
        "Spend a claim once for a session (the router calls this; admin token)",
        "claims",
        body=m.ExchangeBody,
        response=m.SessionOut,
    ),
    Endpoint(
        "GET",
        "/claims/keys",
        list_claim_keys,
        "List claim signing keys",
        "claims",
        response=m.ClaimKeyOut,
        many=True,
    ),
    Endpoint(
        "POST",
        "/claims/keys",
        rotate_claim_key,
        "Add a new signing key; it signs from now on, older keys still verify",
        "claims",
        response=m.ClaimKeyOut,
        status=201,
    ),
    Endpoint(
        "DELETE",
        "/claims/keys/{kid}",
        retire_claim_key,
        "Retire a key: what it signed is refused from now on",
        "claims",
        response=m.ClaimKeyOut,
        params=(Param("kid", "path", required=True),),
    ),
    Endpoint(
        "GET",
        "/router/table",
        route_table,
        "Where every tenant lives and who may see it (the router polls this; admin token)",
        "claims",
        response=m.RouteTableOut,
        conditional=True,
    ),
    Endpoint(
        "GET",
        "/orphans",
        list_orphans,
        "Tenants nodes have that no container accounts for, and when each is removed (admin)",
        "admin",
        response=m.OrphanOut,
        many=True,
    ),
    Endpoint(
        "POST",
        "/reconcile",
        reconcile,
        "Reconcile rows with every node now, as the loop does periodically (admin)",
        "admin",
        response=m.ReconcileOut,
    ),
    Endpoint(
        "GET",
        "/whoami",
        whoami,
        "The scope of the calling token",
        "admin",
        response=m.WhoamiOut,
    ),
)


ENDPOINTS += exec_api.endpoints()


def _error(exc: HoodyError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def _parse_body(request: Request, model: type[BaseModel] | None) -> Any:
    if model is None:
        return None
    # At most jsonbody.MAX_BODY bytes (413), finite numbers only (400), as the agent.
    data = await jsonbody.read_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(
            f"field {where}: {first['msg']} ({exc.error_count()} problem(s) in the body)"
        ) from exc


def _endpoint(
    fleet: Fleet, ep: Endpoint, metrics: ApiMetrics
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        callers: list[Principal] = []  # who called, once authenticated
        try:
            header = request.headers.get("authorization")
            if ep.threaded:
                body = await _parse_body(request, ep.body)
                who, result = await run(
                    _blocking, fleet, ep.handler, header, request, body, callers
                )
            else:
                who = await run(fleet.authenticate, header)
                callers.append(who)
                body = await _parse_body(request, ep.body)
                result = await cast(Handler, ep.handler)(fleet, Call(request, who, body))
            headers = None
            if isinstance(result, Answer):
                result, headers = result.body, dict(result.headers)
            tag = _etag(result) if ep.conditional else None
            response: Response
            if tag is not None and request.headers.get("if-none-match") == tag:
                response = Response(status_code=304, headers={"ETag": tag})
            else:
                response = JSONResponse(
                    ep.serialise(who, result), status_code=ep.status, headers=headers
                )
                if tag is not None:
                    response.headers["ETag"] = tag
            if headers and "Server-Timing" in headers:
                took = (time.perf_counter() - start) * 1000
                response.headers["Server-Timing"] = (
                    f"control;dur={took:.2f}, {headers['Server-Timing']}"
                )
            code = None
        except HoodyError as exc:
            if not (callers and callers[0].is_admin):
                exc = await run(fleet.public_error, exc)
            response, code = _error(exc), exc.code
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            internal = {"code": "internal", "message": "internal error; see the server log"}
            response, code = JSONResponse({"error": internal}, status_code=500), "internal"
        metrics.observe(
            ep.method,
            ep.path,
            response.status_code,
            time.perf_counter() - start,
            code=code,
            template=request.path_params.get("template"),
        )
        return response

    return endpoint


def _blocking(
    fleet: Fleet,
    handler: Handler | Blocking,
    header: str | None,
    request: Request,
    body: Any,
    callers: list[Principal],
) -> tuple[Principal, Any]:
    """A threaded endpoint's work in its worker thread: authenticate, then handle; the
    caller (its answer is serialised for it, and added to `callers` for its errors)
    and the answer."""
    who = fleet.authenticate(header)
    callers.append(who)
    return who, handler(fleet, Call(request, who, body))


@functools.cache
def _adapter(model: type[BaseModel], many: bool) -> TypeAdapter[Any]:
    return TypeAdapter(list[model] if many else model)  # type: ignore[valid-type]


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of /api/v1, built from `ENDPOINTS` and the models."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"content": {"application/json": {"schema": ref(m.ErrorOut)}}}
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": f"{ep.method.lower()}_{ep.handler.__name__}_{ep.path}".replace("/", "_")
            .replace("{", "")
            .replace("}", ""),
            "tags": [ep.tag],
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "description": p.description,
                    "schema": p.schema,
                    **(
                        {"style": "form", "explode": True}
                        if p.schema.get("type") == "array"
                        else {}
                    ),
                }
                for p in ep.params
            ],
            "responses": {
                str(code): {"description": _REASONS.get(code, "error"), **error}
                for code in ep.errors
            },
        }
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(ep.body)}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if ep.response is not None:
            schema = ref(ep.response)
            if ep.project_response is not None:
                # Admin tokens get the first, every other token the second.
                schema = {"anyOf": [schema, ref(ep.project_response)]}
            ok["content"] = {
                "application/json": {
                    "schema": {"type": "array", "items": schema} if ep.many else schema
                }
            }
        else:
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        op["responses"][str(ep.status)] = ok
        if ep.conditional:
            op["parameters"].append(
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "description": "The ETag of the answer the caller holds",
                    "schema": {"type": "string"},
                }
            )
            op["responses"]["304"] = {"description": "not modified: the answer with that ETag"}
        paths.setdefault(PREFIX + ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hoody fleet API",
            "version": "1",
            "description": "One isolated Linux container per customer, across a fleet.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


_REASONS = {
    400: "malformed request",
    401: "no or wrong token",
    403: "token may not do this, or a project quota is reached",
    404: "no such resource",
    409: "conflict",
    413: "body too large",
    507: "no node has headroom",
}


def docs_page(spec: dict[str, Any]) -> str:
    """A self-contained HTML page listing every endpoint (nothing loaded from a CDN)."""
    rows = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            rows.append(
                "<tr>"
                f"<td class=m>{html.escape(method.upper())}</td>"
                f"<td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td>"
                f"<td>{html.escape(params)}</td>"
                f"<td>{f'<a href=#{html.escape(ref)}>{html.escape(ref)}</a>' if ref else ''}</td>"
                "</tr>"
            )
    schemas = "".join(
        f"<h3 id={html.escape(name)}>{html.escape(name)}</h3>"
        f"<pre>{html.escape(json.dumps(schema, indent=2))}</pre>"
        for name, schema in spec["components"]["schemas"].items()
    )
    return f"""<!doctype html>
<html><head><meta charset=utf-8><title>hoody API</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;
padding:4px 8px;text-align:left;vertical-align:top}}.m{{font-weight:bold}}
pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head>
<body><h1>hoody fleet API</h1>
<p>Send <code>Authorization: Bearer &lt;token&gt;</code>. Errors are
<code>{{"error": {{"code", "message"}}}}</code>. Machine-readable:
<a href=openapi.json>openapi.json</a>.</p>
<table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th><th>body</th></tr>
{"".join(rows)}</table><h2>Schemas</h2>{schemas}</body></html>"""


def create_app(
    fleet: Fleet,
    *,
    monitor: bool = True,
    check_every: float = 0.5,
    history_every: float = 60.0,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """The control plane app: /api/v1, the dashboard at / and /metrics.

    With `monitor`, background tasks mark nodes down once their heartbeats stop
    (`fleet.settings.heartbeat_timeout`), send template versions to the nodes that
    lack them (`fleet.replicate_once`), every `check_every` s, and record a point of
    the fleet's history every `history_every` s; rows are reconciled with every node
    (`fleet.reconcile_once`) at start and every `fleet.settings.reconcile_every` s.
    `registry` is where /metrics reads
    (a new one by default; `hoody up` passes one its router also counts in)."""
    spec = openapi()
    page = docs_page(spec)
    figures = FleetFigures(fleet.store, fleet.clock)
    registry, api_metrics = metrics_registry(figures, registry)
    dashboard = Dashboard(fleet, registry, history_every=history_every)
    gateway = Gateway(fleet)  # /exec/<project>/<name>: Exec scripts, on this port

    async def spec_endpoint(request: Request) -> Response:
        return JSONResponse(spec)

    async def docs_endpoint(request: Request) -> Response:
        return HTMLResponse(page)

    async def every(what: str, fn: Callable[[], Any], period: float | None = None) -> None:
        while True:
            await asyncio.sleep(period or check_every)
            try:
                await run(fn)
            except Exception:
                log.exception("%s failed", what)

    async def reconciling() -> None:
        # At start (what a crash left is settled before long), then periodically.
        try:
            await run(fleet.reconcile_once)
        except Exception:
            log.exception("reconcile failed")
        await every("reconcile", fleet.reconcile_once, fleet.settings.reconcile_every)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = (
            [
                asyncio.create_task(every("node health check", fleet.mark_down_stale)),
                asyncio.create_task(every("template replication", fleet.replicate_once)),
                asyncio.create_task(dashboard.sample_forever()),
                # Idle timeouts are whole seconds: once a second is soon enough.
                asyncio.create_task(
                    every("idle sleep", fleet.sleep_idle_once, max(1.0, check_every))
                ),
                asyncio.create_task(reconciling()),
            ]
            if monitor
            else []
        )
        if gateway.folder is not None:
            tasks.append(asyncio.create_task(gateway.watch()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            dashboard.live.stop()
            await gateway.aclose()

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_input")
        message = {
            404: f"no such endpoint {request.url.path}; see {PREFIX}/docs",
            405: f"{request.method} is not allowed on {request.url.path}; see {PREFIX}/docs",
        }.get(status, "bad request")
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    async def exec_session(ws: WebSocket) -> None:
        await exec_endpoint(fleet, ws)

    async def logs(request: Request) -> Response:
        return await logs_endpoint(fleet, request)

    routes = [
        Route(f"{PREFIX}/openapi.json", spec_endpoint),
        Route(f"{PREFIX}/docs", docs_endpoint),
        # Streams, outside the JSON table (shell.py has their contract).
        WebSocketRoute(f"{PREFIX}/containers/{{cid}}/exec", exec_session),
        Route(f"{PREFIX}/containers/{{cid}}/logs", logs),
        *(
            Route(PREFIX + ep.path, _endpoint(fleet, ep, api_metrics), methods=[ep.method])
            for ep in ENDPOINTS
        ),
        *gateway.routes(),
        *dashboard.routes(),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
