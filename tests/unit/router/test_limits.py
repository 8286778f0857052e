"""Slow and greedy clients against a real router on loopback: the head deadline, idle
limits on connections, bodies, tunnels and tenant answers, connection caps, and
tunnels closed when their session stops holding. Limits are shortened to a second;
the router checks them once a second."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from hoody import claims
from hoody.router.proxy import COOKIE, Limits
from tests.unit.router.conftest import RING, Stack
from tests.unit.router.test_hostile import read_response


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """Everything the router sent until it closed, and how long that took."""
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), seconds)
    return data, time.monotonic() - start


async def test_a_head_must_arrive_whole_in_time(stack: Stack) -> None:
    stack.router.limits = Limits(head=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(f"GET / HTTP/1.1\r\nHost: a.localhost:{stack.port}\r\n".encode())

    async def trickle() -> None:  # one more header byte every 0.2 s: never done
        for _ in range(40):
            await asyncio.sleep(0.2)
            writer.write(b"X")

    task = asyncio.create_task(trickle())
    try:
        data, took = await closed_within(reader, 6)
    finally:
        task.cancel()
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and took < 4
    assert not stack.upstream.seen


async def test_empty_lines_do_not_keep_a_connection_open(stack: Stack) -> None:
    # Bytes that begin no request still count as a head that must end in time.
    stack.router.limits = Limits(head=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)

    async def trickle() -> None:
        for _ in range(40):
            writer.write(b"\r\n")
            await asyncio.sleep(0.2)

    task = asyncio.create_task(trickle())
    try:
        data, took = await closed_within(reader, 6)
    finally:
        task.cancel()
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and took < 4


async def test_an_idle_connection_is_closed(stack: Stack) -> None:
    stack.router.limits = Limits(idle=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(f"GET / HTTP/1.1\r\nHost: a.localhost:{stack.port}\r\n\r\n".encode())
    try:
        assert (await read_response(reader))[0] == 200
        data, took = await closed_within(reader, 6)
    finally:
        writer.close()
    assert data == b"" and took < 4


async def test_a_stalled_body_ends_the_request(stack: Stack) -> None:
    stack.router.limits = Limits(body_idle=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    head = f"POST /echo HTTP/1.1\r\nHost: a.localhost:{stack.port}\r\nContent-Length: 10\r\n\r\n"
    writer.write(head.encode() + b"abc")
    try:
        data, took = await closed_within(reader, 6)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and took < 4


async def test_a_tenant_that_stops_mid_answer_is_cut_off(stack: Stack) -> None:
    stack.router.limits = Limits(upstream=1.0)
    stack.upstream.canned["slow"] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(f"GET /canned/slow HTTP/1.1\r\nHost: a.localhost:{stack.port}\r\n\r\n".encode())
    try:
        data, took = await closed_within(reader, 6)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ab") and took < 4


async def test_a_silent_tunnel_is_closed(stack: Stack) -> None:
    stack.router.limits = Limits(tunnel_idle=1.0)
    uri = f"ws://a.localhost:{stack.port}/ws"
    async with websockets.connect(uri, host="127.0.0.1", port=stack.port, ping_interval=None) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        start = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 6)
        assert time.monotonic() - start < 4


async def test_revoking_sessions_closes_the_tenants_websockets(stack: Stack) -> None:
    stack.route("p", public=False)
    token, _ = claims.mint_session(RING, "p", 0, 600)
    uri = f"ws://p.localhost:{stack.port}/ws"
    headers = {"Cookie": f"{COOKIE}={token}"}
    async with websockets.connect(
        uri, host="127.0.0.1", port=stack.port, additional_headers=headers, ping_interval=None
    ) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        await asyncio.sleep(1.5)
        await ws.send("still")  # a swept tunnel with a good session stays
        assert await ws.recv() == "still"
        stack.route("p", public=False, generation=1)  # what a revoke does to the table
        start = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 6)
        assert time.monotonic() - start < 3


async def test_connection_caps_per_client_and_in_all(stack: Stack) -> None:
    stack.router.limits = Limits(per_client=3, connections=5)
    request = f"GET / HTTP/1.1\r\nHost: a.localhost:{stack.port}\r\n\r\n".encode()
    held = []

    async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        conn = await asyncio.open_connection("127.0.0.1", stack.port, local_addr=(source, 0))
        held.append(conn[1])
        conn[1].write(request)
        return conn

    try:
        for _ in range(3):
            reader, _ = await connect("127.0.0.1")
            assert (await asyncio.wait_for(read_response(reader), 5))[0] == 200
        reader, _ = await connect("127.0.0.1")
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 503 ") and b"this address" in data
        for _ in range(2):  # another address still gets in, up to the router's cap
            reader, _ = await connect("127.0.0.2")
            assert (await asyncio.wait_for(read_response(reader), 5))[0] == 200
        reader, _ = await connect("127.0.0.3")
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 503 ") and b"the router" in data
        held.pop(0).close()  # one leaves: a place frees up
        await asyncio.sleep(0.2)
        reader, _ = await connect("127.0.0.3")
        assert (await asyncio.wait_for(read_response(reader), 5))[0] == 200
    finally:
        for writer in held:
            writer.close()
    await asyncio.sleep(0.2)
    assert stack.router.per_client == {}
