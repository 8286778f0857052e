"""A real router on loopback in front of a real upstream socket (a tenant stand-in)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hoody import claims
from hoody.router.proxy import Router
from hoody.router.table import Route, RouteTable

_KID, _PRIVATE, _PUBLIC = claims.new_key()
RING = claims.KeyRing({_KID: _PUBLIC}, newest=_KID, signer=_PRIVATE)


class Upstream:
    """A tenant stand-in: /headers echoes the request head, /stream sends chunks,
    /echo returns the body, /ws is a WebSocket echo. Counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []  # every request
        self.canned: dict[str, bytes] = {}  # /canned/<name> answers these bytes as they are
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = dict(
                    (k.lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
                )
                self.seen.append((method, target, headers, b""))
                if target == "/ws":
                    await self.websocket(reader, writer, headers)
                    return
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        data = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += data[:-2]
                self.seen[-1] = (method, target, headers, body)
                if target.startswith("/canned/"):
                    writer.write(self.canned[target[len("/canned/") :]])
                    await writer.drain()
                    continue
                if target == "/stream":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for i in range(3):
                        part = f"part{i}\n".encode()
                        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.2)
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    continue
                if target == "/headers":
                    out = json.dumps({"method": method, "headers": headers}).encode()
                else:
                    out = body or b"hello"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def websocket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]
    ) -> None:
        import base64
        import hashlib

        accept = base64.b64encode(
            hashlib.sha1(
                (headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
            ).digest()
        ).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        await writer.drain()
        # Echo unmasked text frames back (client frames are masked; small ones only).
        while True:
            head = await reader.readexactly(2)
            length = head[1] & 0x7F
            mask = await reader.readexactly(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
            if head[0] & 0x0F == 8:  # close
                writer.write(b"\x88\x00")
                await writer.drain()
                return
            writer.write(bytes([0x81, len(data)]) + data)
            await writer.drain()


class Stack:
    def __init__(self, upstream: Upstream, router: Router, port: int) -> None:
        self.upstream, self.router, self.port = upstream, router, port
        self.exchanged: list[tuple[str, str]] = []

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def host(self, cid: str) -> dict[str, str]:
        return {"Host": f"{cid}.localhost:{self.port}"}

    def route(self, cid: str, **kw: Any) -> None:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.upstream.port,
            "state": "running",
            "public": True,
        }
        values.update(kw)
        self.router.table.routes[cid] = Route(cid=cid, **values)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    upstream = Upstream()
    await upstream.start()
    table = RouteTable(ring=RING, loaded=True)
    holder: list[Stack] = []

    async def exchange(cid: str, claim: str) -> tuple[int, dict[str, Any]]:
        holder[0].exchanged.append((cid, claim))
        if claim != "good":
            return 401, {"error": {"code": "unauthorized", "message": "the claim has expired"}}
        token, info = claims.mint_session(RING, cid, table.routes[cid].generation, 600)
        return 200, {"session": token, "expires_at": info.expires_at, "max_age": 600}

    router = Router(table, "localhost", exchange)
    server = await router.start("127.0.0.1", 0)
    s = Stack(upstream, router, server.sockets[0].getsockname()[1])
    holder.append(s)
    s.route("a")
    yield s
    router.close()
    server.close()
    assert upstream.server is not None
    upstream.server.close()
