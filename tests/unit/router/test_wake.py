"""Requests to sleeping tenants: woken once, held until the tenant answers, counted;
and a refused connection to a tenant the table still has running (the control plane
put it to sleep since the last refresh) wakes it too.

The tenant stand-in starts listening only some time after the wake (as a stopped
tenant's app does); tests/integration/test_sleep.py does the same with real tenants,
the real control plane and both sleep modes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from hoody.router.proxy import Router
from hoody.router.table import Route, RouteTable, Woken


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sleeper:
    """A tenant that starts answering `delay` s after it is woken."""

    def __init__(self, delay: float = 0.2, fail: str | None = None, was: str = "stopped") -> None:
        self.port = _free_port()
        self.delay = delay
        self.fail = fail
        self.was = was  # what the control plane says it woke it from ("": it was awake)
        self.wakes: list[str] = []
        self.server: asyncio.Server | None = None
        self.starting: asyncio.Future[None] | None = None

    async def wake(self, cid: str) -> Woken:
        self.wakes.append(cid)
        await asyncio.sleep(0.02)  # the control plane's round trip
        if self.fail:
            raise RuntimeError(self.fail)
        if self.was:
            asyncio.get_running_loop().call_later(self.delay, self._listen)
        return Woken(self.was, {"control_plane": 0.02, "agent": 0.015, "node": 0.01})

    def _listen(self) -> None:
        self.starting = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nawake")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _router(sleeper: Sleeper, state: str = "sleeping") -> tuple[Router, asyncio.Server, int]:
    table = RouteTable(loaded=True)
    table.routes["s"] = Route("s", "127.0.0.1", sleeper.port, state, public=True)

    async def exchange(cid: str, claim: str) -> tuple[int, dict[str, str]]:
        return 401, {}

    router = Router(table, "localhost", exchange, wake=sleeper.wake)
    server = await router.start("127.0.0.1", 0)
    return router, server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def sleeper() -> AsyncIterator[Sleeper]:
    s = Sleeper()
    yield s
    if s.server is not None:
        s.server.close()


async def test_requests_to_a_sleeper_wake_it_once_and_are_answered(sleeper: Sleeper) -> None:
    router, server, port = await _router(sleeper)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            url, host = f"http://127.0.0.1:{port}/", {"Host": f"s.localhost:{port}"}
            answers = await asyncio.gather(*(http.get(url, headers=host) for _ in range(5)))
            assert [r.status_code for r in answers] == [200] * 5
            assert {r.text for r in answers} == {"awake"}
            assert sleeper.wakes == ["s"], "one wake for all the held requests"
            assert router.table.routes["s"].state == "running"
            again = await http.get(url, headers=host)
            assert again.status_code == 200 and sleeper.wakes == ["s"]
            metrics = await http.get(url + "metrics", headers={"Host": f"localhost:{port}"})
        assert 'hoody_router_wakes_total{result="ok"} 1' in metrics.text
        assert "hoody_router_wake_held_requests_total 5" in metrics.text
        assert set(router.take_seen()) == {"s"}
        assert router.take_seen() == {}, "each sighting is reported once"
    finally:
        router.close()
        server.close()


async def test_a_wake_that_fails_is_a_503_that_says_why() -> None:
    sleeper = Sleeper(fail="container s is on node n1, which is down")
    router, server, port = await _router(sleeper)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"http://127.0.0.1:{port}/", headers={"Host": f"s.localhost:{port}"})
        assert r.status_code == 503 and "which is down" in r.text
        assert router.wakes.failed == 1 and router.table.routes["s"].state == "sleeping"
    finally:
        router.close()
        server.close()


async def test_a_refused_connection_to_a_running_route_wakes_the_tenant(sleeper: Sleeper) -> None:
    """The router's table is a refresh behind: it still says running while the
    control plane has stopped the tenant. The refusal wakes it and the request waits."""
    router, server, port = await _router(sleeper, state="running")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            url, host = f"http://127.0.0.1:{port}/", {"Host": f"s.localhost:{port}"}
            answers = await asyncio.gather(*(http.get(url, headers=host) for _ in range(3)))
            assert [r.status_code for r in answers] == [200] * 3
            assert sleeper.wakes == ["s"], "one wake for all the refused requests"
            metrics = await http.get(url + "metrics", headers={"Host": f"localhost:{port}"})
        assert "hoody_router_wake_refused_total 3" in metrics.text
        assert 'hoody_router_wakes_total{result="ok"} 1' in metrics.text
        # Where the wake's time went: the control plane's phases, and the port's.
        phases = {
            line.split('"')[1]: float(line.split()[-1])
            for line in metrics.text.splitlines()
            if line.startswith("hoody_router_wake_phase_seconds_total{")
        }
        assert phases["control_plane"] == pytest.approx(0.02) and phases["node"] > 0
        assert phases["port"] >= sleeper.delay * 0.5, "the port opened after the delay"
    finally:
        router.close()
        server.close()


async def test_a_tenant_awake_yet_refusing_is_a_502_and_not_woken_again_at_once() -> None:
    sleeper = Sleeper(was="")  # the control plane finds it awake: its app does not listen
    router, server, port = await _router(sleeper, state="running")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            url, host = f"http://127.0.0.1:{port}/", {"Host": f"s.localhost:{port}"}
            first = await http.get(url, headers=host)
            second = await http.get(url, headers=host)
        assert first.status_code == second.status_code == 502
        assert "refused the connection" in first.text
        assert sleeper.wakes == ["s"], "no wake per request for a tenant that refuses"
        assert router.wakes.wakes == 0, "nothing was woken"
    finally:
        router.close()
        server.close()


async def test_a_refused_tenant_that_cannot_be_woken_is_a_502_that_says_why() -> None:
    sleeper = Sleeper(fail="container s is on node n1, which is down")
    router, server, port = await _router(sleeper, state="running")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"http://127.0.0.1:{port}/", headers={"Host": f"s.localhost:{port}"})
        assert r.status_code == 502 and "which is down" in r.text
        assert router.wakes.failed == 1
    finally:
        router.close()
        server.close()


async def test_a_request_to_a_tenant_frozen_under_it_is_answered_once_woken() -> None:
    """The table still said running, so the request went out; the tenant froze (its
    kernel took the connection, the app reads nothing). When the table says it sleeps,
    the router wakes it and the request is answered."""
    thawed = asyncio.Event()
    wakes: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await thawed.wait()  # frozen: the request waits in the socket
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nthawed")
        await writer.drain()
        writer.close()

    async def wake(cid: str) -> Woken:
        wakes.append(cid)
        thawed.set()
        return Woken("frozen")

    tenant = await asyncio.start_server(handle, "127.0.0.1", 0)
    tport = tenant.sockets[0].getsockname()[1]
    table = RouteTable(loaded=True)
    table.routes["f"] = Route("f", "127.0.0.1", tport, "running", public=True)

    async def exchange(cid: str, claim: str) -> tuple[int, dict[str, str]]:
        return 401, {}

    router = Router(table, "localhost", exchange, wake=wake)
    server = await router.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            asking = asyncio.ensure_future(
                http.get(f"http://127.0.0.1:{port}/", headers={"Host": f"f.localhost:{port}"})
            )
            await asyncio.sleep(0.2)
            assert not asking.done() and wakes == []
            # The next refresh: it sleeps (frozen) since the last one.
            table.load({"routes": {"f": {"upstream": f"127.0.0.1:{tport}", "state": "sleeping"}}})
            r = await asking
        assert r.status_code == 200 and r.text == "thawed"
        assert wakes == ["f"]
    finally:
        router.close()
        server.close()
        tenant.close()
