"""The HTTP/1.1 reverse proxy in front of every tenant: `<cid>.<domain>` → its node.

One asyncio task per client connection, requests served in order (keep-alive);
bodies are streamed both ways (Content-Length, chunked, or until close); upstream
connections are pooled per tenant address; a 101 answer to an Upgrade request turns the
connection into a two-way byte pipe (WebSockets).

Before a request reaches a tenant:

    host not <cid>.<domain>, or no such tenant      → 404 page
    GET /_hoody/claim?claim=…                       → spend the claim (control plane),
                                                      set the session cookie, 303 to /
    no valid session cookie, tenant not public      → 401 page
    tenant stopped / not answering                  → 503 / 502 page

The session cookie is removed from what the tenant sees; X-Forwarded-For/Proto/Host
are set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hoody import claims
from hoody.errors import HoodyError
from hoody.router import pages
from hoody.router.table import Route, RouteTable

__all__ = ["COOKIE", "Router"]

log = logging.getLogger(__name__)

COOKIE = "hoody_session"
CLAIM_PATH = "/_hoody/claim"
MAX_HEAD = 64 * 1024
CHUNK = 64 * 1024
IDLE_TIMEOUT = 75.0
UPSTREAM_TIMEOUT = 60.0
# Tenants are on this node or a neighbour: a connection that takes longer is not coming.
CONNECT_TIMEOUT = 2.0
POOL_PER_UPSTREAM = 32
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each side.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

Exchange = Callable[[str, str], Awaitable[tuple[int, dict[str, Any]]]]


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.1; answered 400, then closed."""


@dataclass
class Head:
    """A parsed request or response head. `headers` keep their original spelling;
    `fields` maps each lower-cased name to its values joined with ", " (RFC 9110 5.3)."""

    start: list[bytes]  # method, target, version  |  version, status, reason
    headers: list[tuple[bytes, bytes]]
    fields: dict[bytes, bytes]

    def get(self, name: bytes) -> bytes | None:
        return self.fields.get(name)

    def tokens(self, name: bytes) -> set[bytes]:
        value = self.fields.get(name)
        if value is None:
            return set()
        return {t.strip().lower() for t in value.split(b",")}


def parse_head(raw: bytes) -> Head:
    lines = raw.split(b"\r\n")
    start = lines[0].split(b" ", 2)
    if len(start) < 2:
        raise BadRequest("malformed start line")
    headers = []
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        value = value.strip()
        headers.append((name, value))
        low = name.lower()
        fields[low] = fields[low] + b", " + value if low in fields else value
    return Head(start, headers, fields)


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The bytes up to and including the blank line; None on a clean EOF."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("connection closed inside a message head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("message head too large") from exc


def _framing(head: Head, *, response_to: bytes | None = None) -> tuple[str, int]:
    """("none" | "length" | "chunked" | "close", length) of a message body."""
    if response_to is not None:
        status = head.start[1]
        if response_to == b"HEAD" or status[:1] == b"1" or status in (b"204", b"304"):
            return "none", 0
    if b"chunked" in head.tokens(b"transfer-encoding"):
        return "chunked", 0
    length = head.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest("bad Content-Length")
        return "length", int(length)
    return ("close", 0) if response_to is not None else ("none", 0)


async def _copy_body(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, kind: str, length: int
) -> None:
    """Relay one message body as framed; chunked bodies are passed through as chunks."""
    if kind == "length":
        remaining = length
        while remaining:
            data = await src.read(min(CHUNK, remaining))
            if not data:
                raise ConnectionError("peer closed inside a body")
            dst.write(data)
            remaining -= len(data)
            if dst.transport.get_write_buffer_size() > CHUNK:
                await dst.drain()
    elif kind == "chunked":
        while True:
            line = await src.readuntil(b"\r\n")
            dst.write(line)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = await src.readuntil(b"\r\n")
                    dst.write(trailer)
                    if trailer == b"\r\n":
                        break
                break
            remaining = size + 2
            while remaining:
                data = await src.read(min(CHUNK, remaining))
                if not data:
                    raise ConnectionError("peer closed inside a chunk")
                dst.write(data)
                remaining -= len(data)
            if dst.transport.get_write_buffer_size() > CHUNK:
                await dst.drain()
    elif kind == "close":
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    await dst.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()


def _cookie_value(head: Head, name: str) -> tuple[str | None, bytes | None]:
    """(value of cookie `name`, the Cookie header without it)."""
    found, rest = None, []
    for key, value in head.headers:
        if key.lower() != b"cookie":
            continue
        for part in value.split(b";"):
            k, _, v = part.strip().partition(b"=")
            if k.decode("latin-1") == name:
                found = v.decode("latin-1")
            elif part.strip():
                rest.append(part.strip())
    return found, (b"; ".join(rest) if rest else None)


class _Pool:
    """Idle keep-alive connections to tenants, per address."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
        self.idle = {}

    async def get(
        self, address: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """(reader, writer, reused)."""
        conns = self.idle.get(address)
        while conns:
            reader, writer = conns.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*address, limit=MAX_HEAD), timeout=CONNECT_TIMEOUT
        )
        return reader, writer, False

    def put(
        self, address: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conns = self.idle.setdefault(address, [])
        if len(conns) < POOL_PER_UPSTREAM and not reader.at_eof():
            conns.append((reader, writer))
        else:
            writer.close()

    def close(self) -> None:
        for conns in self.idle.values():
            for _, writer in conns:
                writer.close()
        self.idle.clear()


class Router:
    """Serves `<cid>.<domain>` from `table`; `exchange` spends claims (control plane)."""

    def __init__(
        self,
        table: RouteTable,
        domain: str,
        exchange: Exchange,
        *,
        secure: bool = False,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.table = table
        self.refresh = refresh  # called once when a host is not in the table
        self.domain = domain.lower().strip(".")
        self.exchange = exchange
        self.secure = secure
        self.pool = _Pool()
        self._hosts: dict[bytes, str] = {}  # Host header -> cid, parsed once

    # --- serving ----------------------------------------------------------------------

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> asyncio.Server:
        return await asyncio.start_server(
            self.handle, host, port, ssl=tls, limit=MAX_HEAD, reuse_address=True, backlog=1024
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else ""
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    raw = await read_head(reader)
                if raw is None:
                    break
                head = parse_head(raw)
                if len(head.start) != 3 or not head.start[2].startswith(b"HTTP/1."):
                    raise BadRequest("not an HTTP/1.x request")
                if not await self.serve(head, reader, writer, client_ip):
                    break
        except BadRequest as exc:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(pages.response(400, "Bad request", str(exc), close=True))
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def serve(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_ip: str,
    ) -> bool:
        """Answer one request; return whether the client connection stays open."""
        _, target, version = head.start
        keep = self._client_keeps_alive(head, version)
        kind, length = _framing(head)
        cid = self._tenant_of(head.get(b"host"))
        route = self.table.get(cid) if cid else None
        if route is None and cid and self.refresh is not None:
            await self.refresh()
            route = self.table.get(cid)
        if route is None:
            await self._drain_body(reader, kind, length)
            return await self._page(writer, keep, 404, "No tenant here", self._unknown(cid))
        path = target.split(b"?", 1)[0]
        if path == CLAIM_PATH.encode():
            await self._drain_body(reader, kind, length)
            return await self._claim(writer, keep, route, target)
        cookie, other_cookies = _cookie_value(head, COOKIE)
        if not route.public:
            refusal = self._refusal(route, cookie)
            if refusal:
                await self._drain_body(reader, kind, length)
                return await self._page(writer, keep, 401, "Sign in through the app", refusal)
        if route.state != "running" or not route.port:
            await self._drain_body(reader, kind, length)
            return await self._page(
                writer,
                keep,
                503,
                "Tenant not running",
                f"{route.cid} is {route.state or 'not placed yet'}; it answers again once started.",
            )
        return await self._proxy(
            head, reader, writer, route, keep, kind, length, client_ip, other_cookies
        )

    # --- the proxy ----------------------------------------------------------------------

    async def _proxy(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        route: Route,
        keep: bool,
        kind: str,
        length: int,
        client_ip: str,
        cookies: bytes | None,
    ) -> bool:
        method = head.start[0]
        upgrade = b"upgrade" in head.tokens(b"connection") and head.get(b"upgrade") is not None
        out = self._upstream_head(head, client_ip, cookies, upgrade)
        raw: bytes | None = None
        for attempt in (1, 2):
            try:
                up_reader, up_writer, reused = await self.pool.get(route.upstream)
            except (OSError, TimeoutError):
                await self._drain_body(reader, kind, length)
                return await self._page(
                    writer,
                    keep,
                    502,
                    "Tenant not answering",
                    f"{route.cid} refused the connection.",
                )
            try:
                up_writer.write(out)
                if kind != "none":
                    await _copy_body(reader, up_writer, kind, length)
                elif up_writer.transport.get_write_buffer_size() > CHUNK:
                    await up_writer.drain()
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    raw = await read_head(up_reader)
                if raw is None:
                    raise ConnectionError("tenant closed the connection")
                break
            except (ConnectionError, OSError, BadRequest, asyncio.IncompleteReadError) as exc:
                up_writer.close()
                # A pooled connection the tenant had closed: retry once if nothing of
                # the request body was consumed.
                if attempt == 1 and reused and kind == "none":
                    continue
                log.info("tenant %s failed mid-request: %s", route.cid, exc)
                return await self._page(
                    writer, False, 502, "Tenant not answering", f"{route.cid} dropped the request."
                )
            except TimeoutError:
                up_writer.close()
                return await self._page(
                    writer, False, 504, "Tenant too slow", f"{route.cid} did not answer in time."
                )
        assert raw is not None  # the loop either broke with a head or returned
        response = parse_head(raw)
        status = response.start[1] if len(response.start) > 1 else b""
        if upgrade and status == b"101":
            writer.write(raw)
            await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            up_writer.close()
            return False
        rkind, rlength = _framing(response, response_to=method)
        upstream_keeps = b"close" not in response.tokens(b"connection") and rkind != "close"
        keep = keep and rkind != "close"
        try:
            if rkind == "length" and rlength <= CHUNK:
                # Small answers (most of them): head and body in one write.
                body = await up_reader.readexactly(rlength) if rlength else b""
                writer.write(self._client_head(response, keep) + body)
                if writer.transport.get_write_buffer_size() > CHUNK:
                    await writer.drain()
            else:
                writer.write(self._client_head(response, keep))
                await _copy_body(up_reader, writer, rkind, rlength)
        except (ConnectionError, asyncio.IncompleteReadError):
            up_writer.close()
            return False
        if upstream_keeps:
            self.pool.put(route.upstream, up_reader, up_writer)
        else:
            up_writer.close()
        return keep

    def _upstream_head(
        self, head: Head, client_ip: str, cookies: bytes | None, upgrade: bool
    ) -> bytes:
        method, target, _ = head.start
        lines = [method + b" " + target + b" HTTP/1.1"]
        forwarded_for = head.get(b"x-forwarded-for")
        for key, value in head.headers:
            low = key.lower()
            if low in _HOP or low in _FORWARDED or low == b"cookie":
                continue
            lines.append(key + b": " + value)
        if cookies:
            lines.append(b"Cookie: " + cookies)
        ip = client_ip.encode()
        lines.append(b"X-Forwarded-For: " + (forwarded_for + b", " + ip if forwarded_for else ip))
        lines.append(b"X-Forwarded-Proto: " + (b"https" if self.secure else b"http"))
        lines.append(b"X-Forwarded-Host: " + (head.get(b"host") or b""))
        if upgrade:
            lines.append(b"Connection: Upgrade")
            lines.append(b"Upgrade: " + (head.get(b"upgrade") or b""))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _client_head(self, response: Head, keep: bool) -> bytes:
        lines = [b" ".join(response.start)]
        for key, value in response.headers:
            if key.lower() not in _HOP:
                lines.append(key + b": " + value)
        lines.append(b"Connection: keep-alive" if keep else b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    # --- decisions ------------------------------------------------------------------------

    @staticmethod
    def _client_keeps_alive(head: Head, version: bytes) -> bool:
        tokens = head.tokens(b"connection")
        if version == b"HTTP/1.0":
            return b"keep-alive" in tokens
        return b"close" not in tokens

    def _tenant_of(self, host: bytes | None) -> str | None:
        if not host:
            return None
        known = self._hosts.get(host)
        if known is not None:
            return known
        cid = self._parse_host(host)
        if cid is not None and len(self._hosts) < 65536:
            self._hosts[host] = cid
        return cid

    def _parse_host(self, host: bytes) -> str | None:
        name = host.decode("latin-1").lower()
        if name.startswith("["):
            return None
        name = name.rsplit(":", 1)[0] if ":" in name else name
        suffix = "." + self.domain
        if not name.endswith(suffix):
            return None
        cid = name[: -len(suffix)]
        return cid if _LABEL.match(cid) else None

    def _unknown(self, cid: str | None) -> str:
        if cid is None:
            return f"This router serves tenants at <cid>.{self.domain}."
        return f"There is no tenant {cid} (it may have been deleted)."

    def _refusal(self, route: Route, cookie: str | None) -> str | None:
        """Why the request may not see the tenant, or None when its session is good."""
        if not cookie:
            return "Open this tenant through the link your app gives you."
        try:
            claims.verify_session(self.table.ring, cookie, route.cid, route.generation)
        except HoodyError as exc:
            return exc.message
        return None

    async def _claim(
        self, writer: asyncio.StreamWriter, keep: bool, route: Route, target: bytes
    ) -> bool:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target.decode("latin-1")).query)
        token = (query.get("claim") or [""])[0]
        status, body = await self.exchange(route.cid, token)
        if status != 200 or "session" not in body:
            message = str(body.get("error", {}).get("message", "the claim was refused"))
            code = status if status in (401, 403, 404) else 401
            return await self._page(writer, keep, code, "This link does not work", message)
        cookie = f"{COOKIE}={body['session']}; Path=/; Max-Age={int(body['max_age'])}"
        cookie += "; HttpOnly; SameSite=Lax" + ("; Secure" if self.secure else "")
        writer.write(
            b"HTTP/1.1 303 See Other\r\nLocation: /\r\nSet-Cookie: "
            + cookie.encode()
            + b"\r\nCache-Control: no-store\r\nContent-Length: 0\r\n"
            + (b"Connection: keep-alive" if keep else b"Connection: close")
            + b"\r\n\r\n"
        )
        await writer.drain()
        return keep

    async def _page(
        self, writer: asyncio.StreamWriter, keep: bool, status: int, title: str, message: str
    ) -> bool:
        writer.write(pages.response(status, title, message, close=not keep))
        await writer.drain()
        return keep

    @staticmethod
    async def _drain_body(reader: asyncio.StreamReader, kind: str, length: int) -> None:
        """Read and drop a request body we answer without, so keep-alive stays in step."""
        if kind == "length":
            await reader.readexactly(length)
        elif kind == "chunked":
            sink = _Sink()
            await _copy_body(reader, sink, kind, length)  # type: ignore[arg-type]

    def close(self) -> None:
        self.pool.close()


class _Sink:
    """A writer that drops what it is given (for draining chunked bodies)."""

    class _Transport:
        @staticmethod
        def get_write_buffer_size() -> int:
            return 0

    transport = _Transport()

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass
