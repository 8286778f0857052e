"""The HTTP/1.1 reverse proxy in front of every tenant: `<cid>.<domain>` → its node.

Built on asyncio protocols (callbacks, no coroutine per request) because that is
what keeps a Python proxy near nginx: the common request is parsed, routed and
written upstream inside one `data_received`, and its answer goes back to the client
inside one more. Coroutines are used only where the router waits on something else:
connecting to a tenant, spending a claim, refreshing the route table.

One client connection serves its requests in order (keep-alive; pipelined requests
wait in its buffer). Bodies stream both ways without being decoded (`http.Framer`
finds where they end), with back-pressure: a full send buffer on one side pauses
reading on the other. Upstream connections are pooled per tenant address. A 101
answer to an Upgrade request turns the pair into a two-way byte pipe (WebSockets).

Before a request reaches a tenant:

    host not <cid>.<domain>, or no such tenant      → 404 page
    GET /_hoody/claim?claim=…                       → spend the claim (control plane),
                                                      set the session cookie, 303 to /
    no valid session cookie, tenant not public      → 401 page
    tenant stopped / not answering / too slow       → 503 / 502 / 504 page

The session cookie is removed from what the tenant sees; X-Forwarded-For/Proto/Host
are set.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from hoody import claims
from hoody.errors import HoodyError
from hoody.router import pages
from hoody.router.http import (
    CLOSE,
    HOP_BY_HOP,
    MAX_HEAD,
    NONE,
    BadMessage,
    Framer,
    Head,
    cookie_value,
    parse_head,
    request_framing,
    response_framing,
)
from hoody.router.table import Route, RouteTable

__all__ = ["CLAIM_PATH", "COOKIE", "Router"]

log = logging.getLogger(__name__)

COOKIE = "hoody_session"
CLAIM_PATH = "/_hoody/claim"
# A client connection with no request in flight is closed after this long.
IDLE_TIMEOUT = 75.0
# A tenant must start its answer this long after the request (or its last byte).
UPSTREAM_TIMEOUT = 60.0
# Tenants are on this node or a neighbour: a connection that takes longer is not coming.
CONNECT_TIMEOUT = 2.0
POOL_PER_UPSTREAM = 64
# Idle pooled connections are dropped after this long (tenants may have gone).
POOL_IDLE = 30.0
SESSION_CACHE = 10_000

_COOKIE = COOKIE.encode()
_CLAIM_PATH = CLAIM_PATH.encode()
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_SKIP_UPSTREAM = HOP_BY_HOP | _FORWARDED | {b"cookie"}

Exchange = Callable[[str, str], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(slots=True)
class _Pending:
    """The request a client connection has sent (or will send) to its tenant."""

    out: bytes  # the head as the tenant gets it
    route: Route
    method: bytes
    upgrade: bool
    retry: bool  # bodiless: may be sent again on a fresh connection once
    retried: bool = False


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


class ClientConnection(asyncio.Protocol):
    """One client connection: its requests in order, each answered by the router itself
    (pages, claims) or by the tenant through an upstream connection."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = b""
        self.buffer = bytearray()  # bytes not yet taken: the next head(s), early body
        self.last = self.loop.time()
        self.keep = True
        self.version = b"HTTP/1.1"
        self.waiting = False  # a request is being answered
        self.req_kind = NONE
        self.req_length = 0
        self.expects_continue = False
        self.body: Framer | None = None  # the request body still arriving
        self.sink: UpstreamConnection | None = None  # where it goes (None: dropped)
        self.upstream: UpstreamConnection | None = None
        self.pending: _Pending | None = None
        self.tunnel: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.eof = False
        self.in_next = False
        self.paused = False  # reading paused
        self.sink_full = False  # the tenant's send buffer is full
        self.write_full = False  # our send buffer to the client is full

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode() if isinstance(peer, tuple) else b""
        self.router.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.router.connections.discard(self)
        if self.task is not None:
            self.task.cancel()
            self.task = None
        for up in (self.upstream, self.tunnel):
            if up is not None:
                up.client = None
                up.transport.close()
        self.upstream = self.tunnel = self.sink = None

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        tunnel = self.tunnel
        if tunnel is not None:
            _write(tunnel.transport, data)
            return
        if self.body is not None and not self.buffer:
            try:  # a streamed request body: straight through
                data = self._feed_body(data)
            except BadMessage as exc:
                self._bad(str(exc))
                return
            if not data:
                return
        self.buffer += data
        self._next()

    def eof_received(self) -> bool | None:
        self.eof = True
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.eof or not tunnel.transport.can_write_eof():
                tunnel.transport.close()
                return None
            tunnel.transport.write_eof()
            return True  # the tenant may still answer the half-closed pipe
        if self.waiting:
            self.keep = False  # answer the request in flight, then close
            return True
        return None

    def pause_writing(self) -> None:
        self.write_full = True
        source = self.upstream or self.tunnel
        if source is not None:
            source.pause()

    def resume_writing(self) -> None:
        self.write_full = False
        source = self.upstream or self.tunnel
        if source is not None:
            source.resume()

    # --- requests ----------------------------------------------------------------------

    def _next(self) -> None:
        """Take what the buffer holds: the body in flight, then the next request heads."""
        if self.in_next or self.closed:
            return
        self.in_next = True
        try:
            while not self.closed:
                if self.body is not None:
                    if not self.buffer:
                        break
                    rest = self._feed_body(bytes(self.buffer))
                    self.buffer = bytearray(rest)
                    if self.body is not None:
                        break
                    continue
                if self.waiting or not self.buffer:
                    break
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        raise BadMessage("request head too large")
                    break
                raw = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                self._request(raw)
        except BadMessage as exc:
            self._bad(str(exc))
        finally:
            self.in_next = False
        self._reading()

    def _request(self, raw: bytes) -> None:
        head = parse_head(raw)
        if len(head.start) != 3 or not head.start[2].startswith(b"HTTP/1."):
            raise BadMessage("not an HTTP/1.x request")
        self.version = version = head.start[2]
        tokens = head.tokens(b"connection")
        if version == b"HTTP/1.0":
            self.keep = self.keep and b"keep-alive" in tokens
        else:
            self.keep = self.keep and b"close" not in tokens
        self.req_kind, self.req_length = request_framing(head)
        self.expects_continue = self.req_kind != NONE and (
            (head.get(b"expect") or b"").lower() == b"100-continue"
        )
        self.waiting = True
        self._dispatch(head, may_refresh=True)

    def _dispatch(self, head: Head, may_refresh: bool) -> None:
        router = self.router
        cid = router.tenant_of(head.get(b"host"))
        route = router.table.routes.get(cid) if cid else None
        if route is None:
            if cid and may_refresh and router.refresh is not None:
                self._later(self._refreshed(head))
                return
            self._answer(404, "No tenant here", router.unknown(cid))
            return
        target = head.start[1]
        if target.split(b"?", 1)[0] == _CLAIM_PATH:
            self._start_body(None)
            self._later(self._claim(route, target))
            return
        cookie, others = (None, None)
        if b"cookie" in head.fields:
            cookie, others = cookie_value(head, _COOKIE)
        if not route.public:
            refusal = router.refusal(route, cookie)
            if refusal:
                self._answer(401, "Sign in through the app", refusal)
                return
        if route.state != "running" or not route.port:
            self._answer(
                503,
                "Tenant not running",
                f"{route.cid} is {route.state or 'not placed yet'}; it answers again once started.",
            )
            return
        upgrade = b"upgrade" in head.tokens(b"connection") and b"upgrade" in head.fields
        self.pending = _Pending(
            router.upstream_head(head, self.client_ip, others, upgrade),
            route,
            head.start[0],
            upgrade,
            retry=self.req_kind == NONE,
        )
        up = router.pool.take(route.upstream)
        if up is None:
            self._later(self._connect())
        else:
            self._attach(up)

    def _attach(self, up: UpstreamConnection) -> None:
        assert self.pending is not None
        self.upstream = up
        up.begin(self)
        up.transport.write(self.pending.out)
        self._start_body(up)

    def _start_body(self, sink: UpstreamConnection | None) -> None:
        if self.req_kind != NONE and self.body is None:
            self.body = Framer(self.req_kind, self.req_length)
            self.sink = sink

    def _feed_body(self, data: bytes) -> bytes:
        """Pass the body's part of `data` on; return what follows it."""
        body = self.body
        assert body is not None
        n = body.feed(data)
        sink = self.sink
        if sink is not None and n:
            _write(sink.transport, data if n == len(data) else data[:n])
        if body.done:
            self.body = None
            self.sink = None
        return data[n:] if n < len(data) else b""

    def _reading(self) -> None:
        """Pause reading while the tenant cannot take more, or while the buffer is full."""
        want = self.sink_full or len(self.buffer) > MAX_HEAD
        transport = self.transport
        if want != self.paused and transport is not None and not transport.is_closing():
            self.paused = want
            if want:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        self.task = self.loop.create_task(work)

    # --- waiting on others ---------------------------------------------------------------

    async def _connect(self) -> None:
        pending = self.pending
        assert pending is not None
        address = pending.route.upstream
        pool = self.router.pool
        try:
            _, up = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(pool, address), *address),
                timeout=CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError):
            self.task = None
            cid = pending.route.cid
            self._answer(502, "Tenant not answering", f"{cid} refused the connection.")
            self._next()
            return
        self.task = None
        if self.closed:
            pool.put(up)
            return
        self._attach(up)
        self._next()

    async def _refreshed(self, head: Head) -> None:
        refresh = self.router.refresh
        assert refresh is not None
        try:
            await refresh()
        except Exception as exc:  # the router keeps its last table; say why once here
            log.warning("route table refresh failed: %s", exc)
        self.task = None
        if self.closed:
            return
        self._dispatch(head, may_refresh=False)
        self._next()

    async def _claim(self, route: Route, target: bytes) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target.decode("latin-1")).query)
        token = (query.get("claim") or [""])[0]
        try:
            status, body = await self.router.exchange(route.cid, token)
        except Exception as exc:
            log.warning("claim exchange for %s failed: %s", route.cid, exc)
            status, body = 503, {"error": {"message": "the control plane did not answer"}}
        self.task = None
        if self.closed:
            return
        if status != 200 or "session" not in body:
            message = str(body.get("error", {}).get("message", "the claim was refused"))
            code = status if status in (401, 403, 404, 503) else 401
            self._answer(code, "This link does not work", message)
        else:
            secure = "; Secure" if self.router.secure else ""
            cookie = f"{COOKIE}={body['session']}; Path=/; Max-Age={int(body['max_age'])}"
            cookie += f"; HttpOnly; SameSite=Lax{secure}"
            keep = self.keep and not self.expects_continue
            assert self.transport is not None
            _write(
                self.transport,
                b"HTTP/1.1 303 See Other\r\nLocation: /\r\nSet-Cookie: "
                + cookie.encode()
                + b"\r\nCache-Control: no-store\r\nContent-Length: 0\r\n"
                + (b"Connection: keep-alive" if keep else b"Connection: close")
                + b"\r\n\r\n",
            )
            self._done(keep)
        self._next()

    # --- answers ---------------------------------------------------------------------------

    def _answer(self, status: int, title: str, message: str, keep: bool = True) -> None:
        """A page from the router itself; the request body, if any, is read and dropped
        (unless the client waits for a 100 Continue: then the connection closes)."""
        keep = keep and self.keep and not (self.expects_continue and self.body is None)
        assert self.transport is not None
        _write(self.transport, pages.response(status, title, message, close=not keep))
        if keep:
            self._start_body(None)
        self._done(keep)

    def _done(self, keep: bool) -> None:
        """The answer is written: close, or go on with the next request."""
        self.waiting = False
        self.upstream = None
        self.pending = None
        self.last = self.loop.time()
        if self.body is not None and self.sink is not None:
            keep = False  # the tenant answered before the whole body came: stop here
        if not keep:
            self._close()
        else:
            self._next()

    def _upstream_failed(self, up: UpstreamConnection) -> None:
        """The tenant's connection ended before it answered."""
        pending = self.pending
        self.upstream = None
        if pending is not None and up.reused and pending.retry and not pending.retried:
            # A pooled connection the tenant had just closed: once more on another.
            pending.retried = True
            nxt = self.router.pool.take(pending.route.upstream)
            if nxt is None:
                self._later(self._connect())
            else:
                self._attach(nxt)
            return
        cid = pending.route.cid if pending else "the tenant"
        log.info("tenant %s closed the connection before answering", cid)
        self._answer(502, "Tenant not answering", f"{cid} dropped the request.", keep=False)

    def _bad(self, why: str) -> None:
        if self.transport is not None:
            _write(self.transport, pages.response(400, "Bad request", why, close=True))
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def check(self, now: float) -> None:
        """Time limits, checked by the router's sweeper once a second."""
        if self.closed or self.tunnel is not None:
            return
        up = self.upstream
        if self.waiting:
            if (
                up is not None
                and not up.answered
                and now - max(up.since, self.last) > (UPSTREAM_TIMEOUT)
            ):
                up.client = None
                up.transport.close()
                self.upstream = None
                cid = self.pending.route.cid if self.pending else "the tenant"
                self._answer(504, "Tenant too slow", f"{cid} did not answer in time.", keep=False)
        elif now - self.last > IDLE_TIMEOUT:
            self._close()


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive connection to one tenant, lent to one client request at a time."""

    def __init__(self, pool: Pool, address: tuple[str, int]) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport
        self.client: ClientConnection | None = None
        self.buffer = bytearray()
        self.framer: Framer | None = None  # the response body still arriving
        self.answered = False  # the client got (part of) an answer to this request
        self.reusable = False
        self.reused = False
        self.uses = 0
        self.since = 0.0  # when the request was sent (loop time)
        self.idle_since = 0.0  # when it was pooled (monotonic)
        self.tunnel = False
        self.eof = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def begin(self, client: ClientConnection) -> None:
        self.client = client
        self.reused = self.uses > 0
        self.uses += 1
        self.answered = False
        self.framer = None
        self.since = client.loop.time()
        if client.write_full:
            self.pause()
        elif self.paused:
            self.resume()

    def pause(self) -> None:
        if not self.paused and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    # --- asyncio callbacks ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or client.transport is None:
            self.transport.close()  # a pooled connection speaking out of turn
            return
        if self.tunnel:
            _write(client.transport, data)
            return
        framer = self.framer
        if framer is not None:
            try:
                n = framer.feed(data)
            except BadMessage:
                self._truncated(client)
                return
            if n:
                _write(client.transport, data if n == len(data) else data[:n])
            if framer.done:
                self._finish(client, extra=n < len(data))
            return
        self.buffer += data
        self._heads(client)

    def eof_received(self) -> bool | None:
        self.eof = True
        client = self.client
        if self.tunnel and client is not None and client.transport is not None:
            if client.eof or not client.transport.can_write_eof():
                client.transport.close()
                return None
            client.transport.write_eof()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.discard(self)
        client, self.client = self.client, None
        if client is None:
            return
        if self.tunnel:
            client._close()
        elif self.framer is not None:
            if self.framer.kind == CLOSE:  # the body ends with the connection
                self.framer = None
                client._done(False)
            else:
                self._truncated(client)
        elif self.answered:
            client._close()
        else:
            client._upstream_failed(self)

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.sink_full = True
            client._reading()

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client.sink_full = False
            client._reading()

    # --- responses -----------------------------------------------------------------------

    def _heads(self, client: ClientConnection) -> None:
        assert client.transport is not None and client.pending is not None
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._bad_gateway(client, "answered with a head over 64 KiB")
                return
            raw = bytes(self.buffer[: end + 4])
            del self.buffer[: end + 4]
            try:
                head = parse_head(raw)
                if not head.start[0].startswith(b"HTTP/1.") or len(head.start[1]) != 3:
                    raise BadMessage("not an HTTP/1.x response")
                kind, length = response_framing(head, client.pending.method)
            except BadMessage as exc:
                self._bad_gateway(client, f"answered with something that is not HTTP/1.1 ({exc})")
                return
            status = head.start[1]
            if status == b"101" and client.pending.upgrade:
                self._tunnel(client, raw)
                return
            if status[:1] == b"1":
                # Interim answers (100 Continue, 103 Early Hints) go on as they are.
                if status == b"101":
                    self._bad_gateway(client, "switched protocols unasked")
                    return
                if client.version != b"HTTP/1.0":
                    self.answered = True
                    _write(client.transport, raw)
                continue
            self._respond(client, head, kind, length)
            return

    def _respond(self, client: ClientConnection, head: Head, kind: int, length: int) -> None:
        assert client.transport is not None
        self.answered = True
        keep = client.keep and kind != CLOSE and client.body is None
        client.keep = keep
        tokens = head.tokens(b"connection")
        if head.start[0] == b"HTTP/1.0":
            self.reusable = kind != CLOSE and b"keep-alive" in tokens
        else:
            self.reusable = kind != CLOSE and b"close" not in tokens
        out = client.router.client_head(head, keep)
        if kind == NONE:
            _write(client.transport, out)
            self._finish(client, extra=bool(self.buffer))
            return
        self.framer = framer = Framer(kind, length)
        if not self.buffer:
            _write(client.transport, out)
            return
        rest = bytes(self.buffer)
        self.buffer.clear()
        try:
            n = framer.feed(rest)
        except BadMessage:
            _write(client.transport, out)
            self._truncated(client)
            return
        _write(client.transport, out + (rest if n == len(rest) else rest[:n]))  # one write
        if framer.done:
            self._finish(client, extra=n < len(rest))

    def _finish(self, client: ClientConnection, extra: bool) -> None:
        """The whole answer went to the client: pool or close, then the client goes on."""
        self.client = None
        self.framer = None
        if self.reusable and not extra and not self.eof and client.body is None:
            self.pool.put(self)
        else:
            self.transport.close()
        client._done(client.keep)

    def _tunnel(self, client: ClientConnection, raw: bytes) -> None:
        assert client.transport is not None
        self.tunnel = True
        self.answered = True
        client.upstream = None
        client.tunnel = self
        client.waiting = False
        client.keep = False
        _write(client.transport, raw)
        if self.buffer:
            _write(client.transport, bytes(self.buffer))
            self.buffer.clear()
        if client.buffer:
            _write(self.transport, bytes(client.buffer))
            client.buffer.clear()
        client._reading()

    def _truncated(self, client: ClientConnection) -> None:
        """The answer broke off mid-body: the client can only be told by a close."""
        cid = client.pending.route.cid if client.pending else "?"
        log.info("tenant %s broke off an answer", cid)
        self.client = None
        self.transport.close()
        client._close()

    def _bad_gateway(self, client: ClientConnection, why: str) -> None:
        cid = client.pending.route.cid if client.pending else "the tenant"
        log.info("tenant %s %s", cid, why)
        self.client = None
        self.transport.close()
        if self.answered:
            client._close()
        else:
            client._answer(502, "Tenant not answering", f"{cid} {why}.", keep=False)


class Pool:
    """Idle keep-alive connections to tenants, per address; newest used first."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[UpstreamConnection]] = {}

    def take(self, address: tuple[str, int]) -> UpstreamConnection | None:
        conns = self.idle.get(address)
        while conns:
            up = conns.pop()
            if not up.transport.is_closing() and not up.eof:
                return up
        return None

    def put(self, up: UpstreamConnection) -> None:
        conns = self.idle.setdefault(up.address, [])
        if len(conns) < POOL_PER_UPSTREAM and not up.transport.is_closing():
            up.idle_since = time.monotonic()
            up.resume()  # so a tenant closing it is noticed
            conns.append(up)
        else:
            up.transport.close()

    def discard(self, up: UpstreamConnection) -> None:
        conns = self.idle.get(up.address)
        if conns and up in conns:
            conns.remove(up)

    def sweep(self, now: float) -> None:
        for address, conns in list(self.idle.items()):
            for up in [c for c in conns if now - c.idle_since > POOL_IDLE]:
                conns.remove(up)
                up.transport.close()
            if not conns:
                del self.idle[address]

    def close(self) -> None:
        for conns in self.idle.values():
            for up in conns:
                up.transport.close()
        self.idle.clear()


class Router:
    """Serves `<cid>.<domain>` from `table`; `exchange` spends claims (control plane);
    `refresh` reloads the table when a host is not in it (a tenant made a moment ago)."""

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
        self.refresh = refresh
        self.domain = domain.lower().strip(".")
        self.exchange = exchange
        self.secure = secure
        self.pool = Pool()
        self.connections: set[ClientConnection] = set()
        self._proto = b"https" if secure else b"http"
        self._hosts: dict[bytes, str | None] = {}  # Host header -> cid, parsed once
        # Verified session cookies: (ring, cid, generation, expiry) they were good for.
        self._sessions: dict[bytes, tuple[claims.KeyRing, str, int, float]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        """Listen on host:port (with SO_REUSEPORT, several router processes share it)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ClientConnection(self),
            host,
            port,
            ssl=tls,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return server

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = asyncio.get_running_loop().time()
            for conn in list(self.connections):
                conn.check(now)
            self.pool.sweep(time.monotonic())

    def close(self) -> None:
        """Stop the sweeper, close every client and pooled tenant connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn._close()
        self.pool.close()

    # --- decisions ---------------------------------------------------------------------

    def tenant_of(self, host: bytes | None) -> str | None:
        if not host:
            return None
        try:
            return self._hosts[host]
        except KeyError:
            pass
        cid = self._parse_host(host)
        if len(self._hosts) >= 65536:
            self._hosts.clear()
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

    def unknown(self, cid: str | None) -> str:
        if cid is None:
            return f"This router serves tenants at <cid>.{self.domain}."
        return f"There is no tenant {cid} (it may have been deleted)."

    def refusal(self, route: Route, cookie: bytes | None) -> str | None:
        """Why the request may not see the tenant, or None when its session is good."""
        if not cookie:
            return "Open this tenant through the link your app gives you."
        ring = self.table.ring
        hit = self._sessions.get(cookie)
        if (
            hit is not None
            and hit[0] is ring
            and hit[1] == route.cid
            and hit[2] == route.generation
            and hit[3] > time.time()
        ):
            return None
        try:
            session = claims.verify_session(
                ring, cookie.decode("latin-1"), route.cid, route.generation
            )
        except HoodyError as exc:
            return exc.message
        if len(self._sessions) >= SESSION_CACHE:
            self._sessions.clear()
        self._sessions[cookie] = (ring, route.cid, route.generation, session.expires_at)
        return None

    def upstream_head(
        self, head: Head, client_ip: bytes, cookies: bytes | None, upgrade: bool
    ) -> bytes:
        """The request head as the tenant gets it."""
        method, target, _ = head.start
        lines = [method + b" " + target + b" HTTP/1.1"]
        for key, value in head.headers:
            if key.lower() not in _SKIP_UPSTREAM:
                lines.append(key + b": " + value)
        if cookies:
            lines.append(b"Cookie: " + cookies)
        forwarded_for = head.fields.get(b"x-forwarded-for")
        lines.append(
            b"X-Forwarded-For: "
            + (forwarded_for + b", " + client_ip if forwarded_for else client_ip)
        )
        lines.append(b"X-Forwarded-Proto: " + self._proto)
        lines.append(b"X-Forwarded-Host: " + (head.fields.get(b"host") or b""))
        if upgrade:
            lines.append(b"Connection: Upgrade")
            lines.append(b"Upgrade: " + (head.fields.get(b"upgrade") or b""))
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    @staticmethod
    def client_head(response: Head, keep: bool) -> bytes:
        """The response head as the client gets it."""
        lines = [b" ".join(response.start)]
        for key, value in response.headers:
            if key.lower() not in HOP_BY_HOP:
                lines.append(key + b": " + value)
        lines.append(b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n")
        return b"\r\n".join(lines)
