"""A router that cannot reach the control plane drops its routes after a bounded time,
says so (503), and routes again once the control plane answers."""

from __future__ import annotations

import asyncio

import httpx

from hoody.router.proxy import Router
from hoody.router.table import ControlPlaneTable
from tests.unit.router.conftest import Stack
from tests.unit.router.test_hostile import ask


async def test_an_unreachable_control_plane_drops_the_routes_after_a_while(stack: Stack) -> None:
    up = {"ok": True}

    def control_plane(request: httpx.Request) -> httpx.Response:
        if not up["ok"]:
            return httpx.Response(503, json={"error": {"message": "down"}})
        upstream = f"127.0.0.1:{stack.upstream.port}"
        routes = {"a": {"upstream": upstream, "state": "running", "public": True}}
        return httpx.Response(200, json={"routes": routes, "keys": {}, "retired": []})

    source = ControlPlaneTable(
        "http://cp", "t", every=0.1, stale_after=0.6, transport=httpx.MockTransport(control_plane)
    )
    await source.start()
    router = Router(source.table, "localhost", stack.router.exchange)
    server = await router.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = f"GET / HTTP/1.1\r\nHost: a.localhost:{port}\r\n\r\n".encode()
    stack.port = port  # `ask` talks to this router
    try:
        assert (await ask(stack, request, 1))[0] == [200]
        up["ok"] = False
        await asyncio.sleep(0.3)  # out of reach for less than the bound: still routed
        assert not source.table.stale and (await ask(stack, request, 1))[0] == [200]
        await asyncio.sleep(0.8)
        assert source.table.stale and source.table.routes == {}
        statuses, _ = await ask(stack, request, 1)
        assert statuses == [503]
        up["ok"] = True
        await asyncio.sleep(0.4)
        assert not source.table.stale
        assert (await ask(stack, request, 1))[0] == [200]
    finally:
        router.close()
        server.close()
        await source.close()


async def test_an_unchanged_table_is_not_sent_again_until_one_was_dropped() -> None:
    asked: list[str | None] = []
    routes = {"a": {"upstream": "127.0.0.1:1", "state": "running", "public": True}}

    def control_plane(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("if-none-match"))
        if request.headers.get("if-none-match") == '"v1"':
            return httpx.Response(304, headers={"ETag": '"v1"'})
        body = {"routes": routes, "keys": {}, "retired": []}
        return httpx.Response(200, json=body, headers={"ETag": '"v1"'})

    source = ControlPlaneTable("http://cp", "t", transport=httpx.MockTransport(control_plane))
    try:
        await source.refresh()
        before = source.refreshed
        await source.refresh()
        assert asked == [None, '"v1"'] and set(source.table.routes) == {"a"}
        assert source.refreshed > before, "a 304 counts as reaching the control plane"
        source.table.drop()
        await source.refresh()  # a dropped table asks for the whole table again
        assert asked[-1] is None and set(source.table.routes) == {"a"}
    finally:
        await source.close()
