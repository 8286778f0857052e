"""The node agent's HTTP API (`hoody node serve`), driven by the CLI and the fleet.

Every route needs `Authorization: Bearer <token>`. Handlers only parse, call the
engine in a worker thread (its steps block on syscalls and subprocesses) and render;
errors are rendered once, as `{"error": {"code", "message"}}` with their status.

    GET    /v1/node                         node facts, headroom, KSM
    GET    /v1/templates                    template versions
    POST   /v1/templates                    {name, source, args, env, port, limits, firewall, ksm}
    DELETE /v1/templates/{name}[/{version}]
    POST   /v1/templates/{name}/copy        {name, version, limits, env, firewall, metadata, mode}
    GET    /v1/tenants | /v1/tenants/{id}
    POST   /v1/tenants/{id}/start|stop|restart|exec|copy|snapshot
    GET    /v1/tenants/{id}/logs?tail=N
    DELETE /v1/tenants/{id}
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hoody.agent import templates
from hoody.agent.engine import Node, TemplateSource
from hoody.agent.node_info import node_info
from hoody.errors import HoodyError, InvalidInput, Unauthorized

__all__ = ["create_app"]

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    return data


def _opt(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidInput(f"field {key!r} must be {names}")
    return value


def _source(spec: Any) -> TemplateSource:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise InvalidInput(
            'source must be one of {"rootfs": DIR}, {"tar": FILE}, '
            '{"debootstrap": {"suite": "bookworm", "include": [...]}}, {"demo": true}'
        )
    ((kind, value),) = spec.items()
    if kind == "rootfs" and isinstance(value, str):
        return templates.dir_source(value)
    if kind == "tar" and isinstance(value, str):
        return templates.tar_source(value)
    if kind == "debootstrap" and isinstance(value, dict):
        include = value.get("include", [])
        if not isinstance(include, list):
            raise InvalidInput("debootstrap include must be a list of package names")
        return templates.debootstrap_source(str(value.get("suite", "bookworm")), tuple(include))
    if kind == "demo":
        return templates.demo_source()
    raise InvalidInput(f"unknown template source {kind!r}; use rootfs, tar, debootstrap or demo")


def create_app(node: Node, token: str, *, supervise_every: float = 0.5) -> Starlette:
    """The agent app. Runs `reconcile` on startup and the restart supervisor while up."""

    def guarded(
        handler: Callable[[Request], Awaitable[Any]], status: int = 200
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    raise Unauthorized(
                        "missing or wrong agent token; pass `Authorization: Bearer <token>` "
                        "(the token is in the node's agent.token file)"
                    )
                result = await handler(request)
            except HoodyError as exc:
                return JSONResponse(exc.to_json(), status_code=exc.status)
            if isinstance(result, Response):
                return result
            return JSONResponse(result, status_code=status)

        return endpoint

    def tid(request: Request) -> str:
        return str(request.path_params["tid"])

    async def get_node(request: Request) -> Any:
        return await _call(node_info, node)

    async def list_templates(request: Request) -> Any:
        return [t.to_json() for t in await _call(node.store.templates)]

    async def create_template(request: Request) -> Any:
        data = await _body(request)
        name = _opt(data, "name", str)
        if not name:
            raise InvalidInput("field 'name' is required")
        source = _source(data.get("source"))
        rec = await _call(
            node.create_template,
            name,
            source,
            args=_opt(data, "args", list),
            env=_opt(data, "env", dict),
            port=_opt(data, "port", int) or 8080,
            limits=_opt(data, "limits", dict),
            firewall=_opt(data, "firewall", dict),
            ksm=bool(_opt(data, "ksm", bool)),
        )
        return rec.to_json()

    async def delete_template(request: Request) -> Any:
        version = request.path_params.get("version")
        gone = await _call(node.delete_template, request.path_params["name"], version)
        return {"deleted": [f"{t.name}/{t.version}" for t in gone]}

    async def copy(request: Request) -> Any:
        data = await _body(request)
        rec = await _call(
            node.copy,
            request.path_params["name"],
            name=_opt(data, "name", str),
            version=_opt(data, "version", int),
            limits=_opt(data, "limits", dict),
            env=_opt(data, "env", dict),
            firewall=_opt(data, "firewall", dict),
            metadata=_opt(data, "metadata", dict),
            mode=_opt(data, "mode", str),
            start=data.get("start", True) is not False,
        )
        return rec.to_json()

    async def list_tenants(request: Request) -> Any:
        return [t.to_json() for t in await _call(node.tenants)]

    async def get_tenant(request: Request) -> Any:
        rec = await _call(node.tenant, tid(request))
        return {**rec.to_json(), "usage": await _call(node.usage, rec.id)}

    async def start(request: Request) -> Any:
        return (await _call(node.start, tid(request))).to_json()

    async def stop(request: Request) -> Any:
        return (await _call(node.stop, tid(request))).to_json()

    async def restart(request: Request) -> Any:
        return (await _call(node.restart, tid(request))).to_json()

    async def delete(request: Request) -> Any:
        existed = await _call(node.delete, tid(request))
        return {"id": tid(request), "deleted": True, "existed": existed}

    async def exec_(request: Request) -> Any:
        data = await _body(request)
        argv = _opt(data, "argv", list)
        timeout = float(_opt(data, "timeout", (int, float)) or 60)
        result = await _call(node.exec, tid(request), argv or [], timeout)
        return {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}

    async def logs(request: Request) -> Any:
        try:
            tail = int(request.query_params.get("tail", "200"))
        except ValueError as exc:
            raise InvalidInput("tail must be a whole number of lines") from exc
        text = await _call(node.logs, tid(request), tail)
        return Response(text, media_type="text/plain")

    async def copy_tenant(request: Request) -> Any:
        data = await _body(request)
        return (await _call(node.copy_tenant, tid(request), name=_opt(data, "name", str))).to_json()

    async def snapshot(request: Request) -> Any:
        data = await _body(request)
        rec = await _call(node.template_from_tenant, tid(request), _opt(data, "template", str))
        return rec.to_json()

    async def supervise() -> None:
        while True:
            await asyncio.sleep(supervise_every)
            try:
                await _call(node.supervise_once)
            except Exception:
                log.exception("supervisor round failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        report = await _call(node.reconcile)
        log.info("reconciled: %s", report)
        task = asyncio.create_task(supervise())
        try:
            yield
        finally:
            task.cancel()

    routes = [
        Route("/v1/node", guarded(get_node)),
        Route("/v1/templates", guarded(list_templates)),
        Route("/v1/templates", guarded(create_template, 201), methods=["POST"]),
        Route("/v1/templates/{name}", guarded(delete_template), methods=["DELETE"]),
        Route("/v1/templates/{name}/{version:int}", guarded(delete_template), methods=["DELETE"]),
        Route("/v1/templates/{name}/copy", guarded(copy, 201), methods=["POST"]),
        Route("/v1/tenants", guarded(list_tenants)),
        Route("/v1/tenants/{tid}", guarded(get_tenant)),
        Route("/v1/tenants/{tid}", guarded(delete), methods=["DELETE"]),
        Route("/v1/tenants/{tid}/start", guarded(start), methods=["POST"]),
        Route("/v1/tenants/{tid}/stop", guarded(stop), methods=["POST"]),
        Route("/v1/tenants/{tid}/restart", guarded(restart), methods=["POST"]),
        Route("/v1/tenants/{tid}/exec", guarded(exec_), methods=["POST"]),
        Route("/v1/tenants/{tid}/logs", guarded(logs)),
        Route("/v1/tenants/{tid}/copy", guarded(copy_tenant, 201), methods=["POST"]),
        Route("/v1/tenants/{tid}/snapshot", guarded(snapshot, 201), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
