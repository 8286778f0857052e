"""The router counts its answers by status, and /metrics shows them."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from hoody import claims
from hoody.router.metrics import RouterCollector
from hoody.router.proxy import Router
from hoody.router.table import Route, RouteTable


async def _tenant(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_answers_are_counted_by_status() -> None:
    tenant = await asyncio.start_server(_tenant, "127.0.0.1", 0)
    ring = claims.KeyRing({"k1": "s" * 43}, newest="k1")
    table = RouteTable(ring=ring, loaded=True)
    table.routes["a"] = Route(
        cid="a",
        host="127.0.0.1",
        port=tenant.sockets[0].getsockname()[1],
        state="running",
        public=True,
    )

    async def exchange(cid: str, claim: str) -> tuple[int, dict[str, Any]]:
        return 401, {"error": {"code": "unauthorized", "message": "no"}}

    router = Router(table, "localhost", exchange)
    server = await router.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(3):
                r = await http.get(f"http://127.0.0.1:{port}/", headers={"Host": "a.localhost"})
                assert r.status_code == 201
            r = await http.get(f"http://127.0.0.1:{port}/", headers={"Host": "zz.localhost"})
            assert r.status_code == 404
        assert router.statuses == {b"201": 3, 404: 1}
        # The collector sums every router of this process (others of earlier tests too).
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RouterCollector())
        text = generate_latest(registry).decode()
        assert 'hoody_router_requests_total{status="201"}' in text
        assert 'hoody_router_requests_total{status="404"}' in text
    finally:
        router.close()
        server.close()
        tenant.close()
