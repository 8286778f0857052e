"""The node agent's HTTP API (`hoody node serve`), driven by the CLI and the fleet.

Every route needs `Authorization: Bearer <token>`; the wake route also takes the
node's wake-only token (client.wake_token, routers hold it). Handlers only parse, call the
engine in a worker thread (its steps block on syscalls and subprocesses) and render;
errors are rendered once, as `{"error": {"code", "message"}}` with their status.

    GET    /v1/node                         node facts, headroom, KSM
    GET    /v1/templates                    template versions
    POST   /v1/templates                    {name, source, args, env, port, limits, firewall,
                                             ksm, init, sleep}
    DELETE /v1/templates/{name}[/{version}]
    GET    /v1/templates/{name}/{version}/send?parent=P   the version as a stream
    POST   /v1/templates/{name}/{version}/receive         body: such a stream; header
                                                          X-Hoody-Template: its record
    POST   /v1/templates/{name}/copy        a TenantSpec (name, version, limits, env, firewall,
                                             metadata, sleep), and mode, start
    GET    /v1/tenants | /v1/tenants/{id}
    POST   /v1/tenants/{id}/start|stop|restart|exec|copy|snapshot
    POST   /v1/tenants/{id}/sleep           {mode: stopped|frozen} (default: its policy's)
    POST   /v1/tenants/{id}/wake            header Hoody-Woke: frozen|stopped|no (was awake)
    GET    /v1/tenants/{id}/logs?tail=N[&follow=1]   follow: streams what comes next
    WS     /v1/tenants/{id}/exec            an exec session (hoody.execwire)
    DELETE /v1/tenants/{id}
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import anyio
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from hoody import jsonbody
from hoody.agent import templates
from hoody.agent.client import WOKE_HEADER, wake_token
from hoody.agent.engine import Node, TemplateSource
from hoody.agent.exec_ws import serve_exec
from hoody.agent.ids import TEMPLATE_ID_SHIFT
from hoody.agent.node_info import configure, node_info
from hoody.agent.pressure import PressureRelief
from hoody.agent.runtime import ExecSession
from hoody.agent.spec import FirewallPolicy, Limits, SleepPolicy, TenantSpec
from hoody.agent.state import TemplateRecord
from hoody.errors import Forbidden, HoodyError, HostError, InvalidInput, NotFound, Unauthorized
from hoody.execwire import ExecStart

__all__ = ["create_app"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_DRAIN_LIMIT = 64 << 20


class NodeCopyBody(TenantSpec):
    """A copy asked of this node: the tenant's spec, and how the node makes it."""

    mode: str | None = Field(None, description="Storage mode: overlay or snapshot.")
    start: bool = Field(True, description="False: made stopped.")


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def _body(request: Request) -> dict[str, Any]:
    # At most jsonbody.MAX_BODY bytes (413), finite numbers only (400).
    return await jsonbody.read_object(request)


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


def _record(name: str, version: int, raw: str | None) -> TemplateRecord:
    """The template record a sending node put in the X-Hoody-Template header."""
    try:
        data = jsonbody.loads(raw or "")
        if not isinstance(data, dict):
            raise ValueError("not an object")
        created = float(data.get("created_at", time.time()))  # "nan" is a str JSON allows
        if not math.isfinite(created):
            raise ValueError(f"created_at {created} is not a time")
        return TemplateRecord(
            name=name,
            version=version,
            created_at=created,
            args=tuple(str(a) for a in data.get("args", ["/bin/sh"])),
            env={str(k): str(v) for k, v in dict(data.get("env", {})).items()},
            port=int(data.get("port", 8080)),
            limits=Limits.from_json(data.get("limits")),
            firewall=FirewallPolicy.from_json(data.get("firewall")),
            ksm=bool(data.get("ksm", False)),
            init=bool(data.get("init", True)),
            sleep=SleepPolicy.from_json(data.get("sleep")),
        )
    except (ValueError, TypeError, AttributeError, InvalidInput) as exc:
        raise InvalidInput(
            "header X-Hoody-Template must hold the version's record as JSON, as "
            f"GET /v1/templates/{name}/{version}/send gives it ({exc})"
        ) from exc


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking chunk iterator read in worker threads; closed (its process killed)
    however the response ends."""
    try:
        while (chunk := await _call(next, chunks, None)) is not None:
            yield chunk
    except HoodyError as exc:
        # The status line is out already: cutting the connection short is how the
        # receiver learns that the stream is not whole.
        log.warning("stream cut short: %s", exc.message)
        raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await _call(close)


_FOLLOW_EVERY = 0.2


async def _follow(node: Node, tid: str, tail: int) -> AsyncIterator[bytes]:
    """The last `tail` lines, then what the tenant writes, as it writes it; ends when
    the tenant is deleted. A copytruncate rotation (the file shrank) reads on from
    its start."""
    yield (await _call(node.logs, tid, tail)).encode()
    path = node.log_path(tid)
    try:
        offset = path.stat().st_size
    except FileNotFoundError:
        offset = 0
    while True:
        await asyncio.sleep(_FOLLOW_EVERY)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:
            offset = 0
        if size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read(min(size - offset, 1 << 20))
            offset += len(chunk)
            yield chunk
            continue
        try:
            await _call(node.tenant, tid)
        except NotFound:
            return


def create_app(node: Node, token: str, *, supervise_every: float = 0.5) -> Starlette:
    """The agent app. Runs `reconcile` on startup, and while up the restart supervisor
    and (when the node watches memory pressure) the pressure relief, once a second."""

    full = f"Bearer {token}".encode()
    waking = f"Bearer {wake_token(token)}".encode()

    def guarded(
        handler: Callable[[Request], Awaitable[Any]], status: int = 200, *, by_waker: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """`handler` behind the agent token (and, `by_waker`, the wake token too)."""

        async def endpoint(request: Request) -> Response:
            try:
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, full):
                    if not hmac.compare_digest(given, waking):
                        raise Unauthorized(
                            "missing or wrong agent token; pass `Authorization: Bearer "
                            "<token>` (the token is in the node's agent.token file)"
                        )
                    if not by_waker:
                        raise Forbidden(
                            "this is the node's wake-only token: it wakes tenants "
                            "(POST /v1/tenants/{id}/wake) and nothing else; use the agent token"
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

    async def set_node(request: Request) -> Any:
        data = await _body(request)
        unknown = set(data) - {"overcommit", "memory_reserve"}
        if unknown:
            raise InvalidInput(
                f"unknown node setting {sorted(unknown)[0]!r}; use overcommit, memory_reserve"
            )
        return await _call(
            configure,
            node,
            overcommit=_opt(data, "overcommit", (int, float)),
            memory_reserve=_opt(data, "memory_reserve", str),
        )

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
            init=_opt(data, "init", bool) is not False,
            sleep=_opt(data, "sleep", dict),
        )
        return rec.to_json()

    def parent(request: Request) -> int | None:
        raw = request.query_params.get("parent")
        if not raw:
            return None
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
            raise InvalidInput(f"parent must be a version number, got {raw[:20]!r}")
        return int(raw)

    async def send_template(request: Request) -> Any:
        rec, size, chunks = await _call(
            node.send_template,
            request.path_params["name"],
            int(request.path_params["version"]),
            parent(request),
        )
        headers = {
            "X-Hoody-Template": json.dumps(rec.to_json()),
            "X-Hoody-Size": str(size),
            "X-Hoody-Uid-Base": str(TEMPLATE_ID_SHIFT),
        }
        return StreamingResponse(
            _stream(chunks), media_type="application/octet-stream", headers=headers
        )

    async def receive_template(request: Request) -> Any:
        rec = _record(
            request.path_params["name"],
            int(request.path_params["version"]),
            request.headers.get("x-hoody-template"),
        )
        uid_base = request.headers.get("x-hoody-uid-base", str(TEMPLATE_ID_SHIFT))
        if uid_base != str(TEMPLATE_ID_SHIFT):
            raise InvalidInput(
                f"the sending node stores template files shifted to uid {uid_base}, this "
                f"node by {TEMPLATE_ID_SHIFT} (tenants see them through idmapped mounts); "
                "upgrade the sending node so both run the same hoody"
            )
        body = request.stream()

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    chunk = anyio.from_thread.run(body.__anext__)
                except StopAsyncIteration:
                    return
                except ClientDisconnect as exc:
                    raise HostError(
                        f"the stream of template {rec.name} version {rec.version} was cut "
                        "off by the sender; nothing was kept, send it again"
                    ) from exc
                if chunk:
                    yield chunk

        try:
            return (await _call(node.receive_template, rec, chunks())).to_json()
        except HoodyError:
            # Read what the sender still sends (up to a limit) so that it gets this
            # error as the answer rather than a connection closed under its upload.
            with contextlib.suppress(ClientDisconnect):
                drained = 0
                async for chunk in body:
                    drained += len(chunk)
                    if drained > _DRAIN_LIMIT:
                        break
            raise

    async def delete_template(request: Request) -> Any:
        version = request.path_params.get("version")
        gone = await _call(node.delete_template, request.path_params["name"], version)
        return {"deleted": [f"{t.name}/{t.version}" for t in gone]}

    async def copy(request: Request) -> Any:
        body = NodeCopyBody.parse(await _body(request))
        rec = await _call(
            node.copy, request.path_params["name"], body, mode=body.mode, start=body.start
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

    async def sleep(request: Request) -> Any:
        data = await _body(request)
        return (await _call(node.sleep, tid(request), _opt(data, "mode", str))).to_json()

    async def wake(request: Request) -> Any:
        # What it was woken from (a router waits for a started tenant's port, not for
        # one that was awake) and how long the node took, for the wake's breakdown.
        start = time.perf_counter()
        rec, woke = await _call(node.wake_from, tid(request))
        took = (time.perf_counter() - start) * 1000
        headers = {WOKE_HEADER: woke or "no", "Server-Timing": f"node;dur={took:.2f}"}
        return JSONResponse(rec.to_json(), headers=headers)

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
        if request.query_params.get("follow") in ("1", "true"):
            await _call(node.tenant, tid(request))  # NotFound before the stream starts
            return await logs_stream(request, tid(request), tail)
        text = await _call(node.logs, tid(request), tail)
        return Response(text, media_type="text/plain")

    async def exec_session(ws: WebSocket) -> None:
        given = ws.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            await ws.close(code=1008)  # refuses the handshake: 403
            return
        await ws.accept()
        tenant = str(ws.path_params["tid"])

        def open_session(start: ExecStart) -> ExecSession:
            return node.open_exec(
                tenant, start.argv, tty=start.tty, env=start.env, cols=start.cols, rows=start.rows
            )

        await serve_exec(ws, open_session, f"tenant {tenant}")

    async def logs_stream(request: Request, tenant: str, tail: int) -> Response:
        return StreamingResponse(_follow(node, tenant, tail), media_type="text/plain")

    async def copy_tenant(request: Request) -> Any:
        data = await _body(request)
        return (await _call(node.copy_tenant, tid(request), name=_opt(data, "name", str))).to_json()

    async def snapshot(request: Request) -> Any:
        data = await _body(request)
        rec = await _call(
            node.template_from_tenant,
            tid(request),
            _opt(data, "template", str),
            _opt(data, "version", int),
        )
        return rec.to_json()

    async def supervise() -> None:
        while True:
            await asyncio.sleep(supervise_every)
            try:
                await _call(node.supervise_once)
            except Exception:
                log.exception("supervisor round failed")

    async def relieve(relief: PressureRelief) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await _call(relief.once)
            except Exception:
                log.exception("memory pressure round failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        report = await _call(node.reconcile)
        log.info("reconciled: %s", report)
        tasks = [asyncio.create_task(supervise())]
        if node.pressure is not None:
            relief = PressureRelief(node, node.pressure, node.config.pressure_idle_seconds)
            tasks.append(asyncio.create_task(relieve(relief)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    routes = [
        Route("/v1/node", guarded(get_node)),
        Route("/v1/node", guarded(set_node), methods=["PATCH"]),
        Route("/v1/templates", guarded(list_templates)),
        Route("/v1/templates", guarded(create_template, 201), methods=["POST"]),
        Route("/v1/templates/{name}", guarded(delete_template), methods=["DELETE"]),
        Route("/v1/templates/{name}/{version:int}", guarded(delete_template), methods=["DELETE"]),
        Route("/v1/templates/{name}/copy", guarded(copy, 201), methods=["POST"]),
        Route("/v1/templates/{name}/{version:int}/send", guarded(send_template)),
        Route(
            "/v1/templates/{name}/{version:int}/receive",
            guarded(receive_template, 201),
            methods=["POST"],
        ),
        Route("/v1/tenants", guarded(list_tenants)),
        Route("/v1/tenants/{tid}", guarded(get_tenant)),
        Route("/v1/tenants/{tid}", guarded(delete), methods=["DELETE"]),
        Route("/v1/tenants/{tid}/start", guarded(start), methods=["POST"]),
        Route("/v1/tenants/{tid}/stop", guarded(stop), methods=["POST"]),
        Route("/v1/tenants/{tid}/restart", guarded(restart), methods=["POST"]),
        Route("/v1/tenants/{tid}/sleep", guarded(sleep), methods=["POST"]),
        Route("/v1/tenants/{tid}/wake", guarded(wake, by_waker=True), methods=["POST"]),
        Route("/v1/tenants/{tid}/exec", guarded(exec_), methods=["POST"]),
        Route("/v1/tenants/{tid}/logs", guarded(logs)),
        WebSocketRoute("/v1/tenants/{tid}/exec", exec_session),
        Route("/v1/tenants/{tid}/copy", guarded(copy_tenant, 201), methods=["POST"]),
        Route("/v1/tenants/{tid}/snapshot", guarded(snapshot, 201), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
