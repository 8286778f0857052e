"""exec and logs through the control plane, to whichever node holds the tenant.

    WS   /api/v1/containers/{cid}/exec             an exec session (hoody.execwire)
    GET  /api/v1/containers/{cid}/logs?tail=N&follow=1

`Shell` (part of `Fleet`) decides who may and where to: project tokens reach only
their own project's tenants, admin tokens any; every exec is logged with who asked,
the tenant, its node and the command, and again with how it ended. `exec_endpoint`
and `logs_endpoint` relay bytes between the caller and the node's agent: the
control plane adds no buffering, so output arrives as the command writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from hoody.agent.client import error_from, raise_for_error
from hoody.control.auth import Principal
from hoody.control.base import FleetBase
from hoody.errors import HoodyError, HostError, InvalidInput
from hoody.execwire import ExecExit, ExecStart, parse_start, ws_url

if TYPE_CHECKING:
    from hoody.control.service import Fleet

__all__ = ["Shell", "TenantEndpoint", "exec_endpoint", "logs_endpoint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantEndpoint:
    """Where a tenant's agent answers, and with which token."""

    cid: str
    node: str
    url: str
    token: str


class Shell(FleetBase):
    def tenant_endpoint(self, who: Principal, cid: str, verb: str) -> TenantEndpoint:
        """The agent of `cid`'s node, for `who`. NotFound for another project's tenant
        (as for every read), Conflict while it is being created or its node is down."""
        row, node = self._node_of(who.project_filter(), cid, verb)
        return TenantEndpoint(row.id, node.name, node.url, node.agent_token)

    def open_exec(self, who: Principal, cid: str, start: ExecStart) -> TenantEndpoint:
        """Check and log an exec: every one is logged, with its caller."""
        target = self.tenant_endpoint(who, cid, "exec")
        log.info(
            "exec by %s into %s on %s: %s (tty=%s, timeout=%s)",
            _caller(who),
            cid,
            target.node,
            json.dumps(start.argv),
            start.tty,
            start.timeout,
        )
        return target


def _caller(who: Principal) -> str:
    if who.scope == "project":
        return f"project {who.project_id} token"
    return f"{who.scope} token"


async def _run(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


async def exec_endpoint(fleet: Fleet, ws: WebSocket) -> None:
    """Accept, check the caller and the start message, then relay to the agent."""
    await ws.accept()
    cid = str(ws.path_params["cid"])
    who: Principal | None = None
    try:
        who = await _run(fleet.authenticate, ws.headers.get("authorization"))
        raw = await ws.receive_text()
        start = parse_start(raw)
        target: TenantEndpoint = await _run(fleet.open_exec, who, cid, start)
        agent = await _connect(target)
    except HoodyError as exc:
        await _close(ws, ExecExit.failed(await _for(fleet, who, exc)))
        return
    except (WebSocketDisconnect, RuntimeError, KeyError):
        return
    code: Any = "gone"
    try:
        await agent.send(start.model_dump_json())
        # How the command ended is the project's, failures included; not the node.
        code = await _relay(ws, agent, lambda exc: _for(fleet, who, exc, failures=True))
    finally:
        await agent.close()
        with contextlib.suppress(Exception):
            await ws.close()
        log.info("exec into %s on %s ended: %s", cid, target.node, code)


async def _for(
    fleet: Fleet, who: Principal | None, exc: HoodyError, *, failures: bool = False
) -> HoodyError:
    """`exc` as `who` may read it: admins all of it, others nothing of the nodes."""
    if who is not None and who.is_admin:
        return exc
    public = partial(fleet.public_error, failures=failures)
    return await _run(public, exc)  # type: ignore[no-any-return]


def _error(exc: HoodyError) -> Response:
    return Response(
        json.dumps(exc.to_json()), status_code=exc.status, media_type="application/json"
    )


async def _connect(target: TenantEndpoint) -> ClientConnection:
    url = ws_url(target.url, f"/v1/tenants/{target.cid}/exec")
    try:
        return await connect(
            url,
            additional_headers={"Authorization": f"Bearer {target.token}"},
            max_size=None,
            compression=None,
            proxy=None,
            ping_interval=20,
            ping_timeout=60,
        )
    except InvalidStatus as exc:
        raise HostError(
            f"node {target.node} refused the exec session ({exc.response.status_code}); "
            "is its agent this hoody version?"
        ) from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise HostError(f"cannot reach node {target.node} for exec: {exc}; retry") from exc


async def _relay(
    client: WebSocket,
    agent: ClientConnection,
    public: Callable[[HoodyError], Awaitable[HoodyError]],
) -> Any:
    """Frames both ways until either side ends; returns the exit code (or why none).
    An exit frame's error is passed on as `public` words it for the caller."""
    outcome: dict[str, Any] = {"code": "client went away"}

    async def upstream() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await agent.send(message["bytes"])
            elif message.get("text") is not None:
                await agent.send(message["text"])

    async def downstream() -> None:
        try:
            async for message in agent:
                if isinstance(message, bytes):
                    await client.send_bytes(message)
                    continue
                with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
                    data = json.loads(message)
                    if data.get("type") == "exit":
                        outcome["code"] = data.get("exit_code")
                        if data.get("error"):
                            outcome["code"] = data["error"].get("message")
                            said = error_from(data["error"]["code"], data["error"]["message"])
                            message = ExecExit.failed(await public(said)).model_dump_json()
                await client.send_text(message)
        except ConnectionClosed:
            pass

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return outcome["code"]


async def _close(ws: WebSocket, result: ExecExit) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(result.model_dump_json())
        await ws.close()


async def logs_endpoint(fleet: Fleet, request: Request) -> Response:
    """The tenant's log: the last `tail` lines; with follow=1, then what comes next,
    streamed until the tenant is deleted or the caller goes away."""
    who: Principal | None = None
    try:
        who = await _run(fleet.authenticate, request.headers.get("authorization"))
        cid = str(request.path_params["cid"])
        raw_tail = request.query_params.get("tail", "200")
        if not (raw_tail.isascii() and raw_tail.isdigit()) or not 0 <= int(raw_tail) <= 100000:
            raise InvalidInput("tail must be a whole number of lines from 0 to 100000")
        follow = request.query_params.get("follow") in ("1", "true")
        target: TenantEndpoint = await _run(fleet.tenant_endpoint, who, cid, "read the logs of")
    except HoodyError as exc:
        return _error(await _for(fleet, who, exc))
    params = {"tail": raw_tail, **({"follow": "1"} if follow else {})}
    http = httpx.AsyncClient(
        base_url=target.url,
        headers={"Authorization": f"Bearer {target.token}"},
        timeout=httpx.Timeout(10, read=None if follow else 60),
    )
    try:
        upstream = await http.send(
            http.build_request("GET", f"/v1/tenants/{cid}/logs", params=params), stream=True
        )
    except httpx.TransportError as exc:
        await http.aclose()
        err = HostError(f"cannot reach node {target.node} for the logs: {exc}; retry")
        return _error(await _for(fleet, who, err))
    if upstream.status_code >= 400:
        await upstream.aread()
        await http.aclose()
        try:
            raise_for_error(upstream)
        except HoodyError as exc:
            return _error(await _for(fleet, who, exc))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            log.info("log stream of %s broke off: %s", cid, exc)
        finally:
            await upstream.aclose()
            await http.aclose()

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8")
