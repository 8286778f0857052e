"""The HTTP/1.1 reverse proxy in front of every tenant: `<cid>.<domain>` → its node.

Built on asyncio protocols (callbacks, no coroutine per request) because that is
what keeps a Python proxy near nginx: the common request is parsed, routed and
written upstream inside one `data_received`, and its answer goes back to the client
inside one more. Coroutines are used only where the router waits on something else:
connecting to a tenant, spending a claim, refreshing the route table.

Requests are parsed by llhttp (`http.RequestReader`), which calls back here with each
head, body piece and end. One client connection answers its requests in order
(keep-alive; pipelined requests wait in `queue`, with reading paused). Bodies stream
both ways with back-pressure: a full send buffer on one side pauses reading on the
other. Request bodies are re-framed for the tenant (chunked stays chunked with plain
chunk lines); response bodies pass through byte for byte (`upstream.py`). A 101
answer to an Upgrade request turns the pair into a two-way byte pipe (WebSockets).

Before a request reaches a tenant:

    malformed (http.py), Host not name[:port], two session cookies,
    absolute target naming another host                → 400 (431: head too large)
    host not <cid>.<domain>, or no such tenant      → 404 page (after one table refresh:
                                                      a tenant made a moment ago)
    tenant still creating in the table              → one table refresh, then as it says
    GET /_hoody/claim?claim=…                       → spend the claim (control plane),
                                                      set the session cookie, 303 to /
    no valid session cookie, tenant not public      → 401 page
    tenant sleeping                                 → woken (control plane), the request
                                                      held until it answers (WAKE_TIMEOUT)
    tenant refuses the connection                   → woken too, then tried once more: the
                                                      table may be a refresh behind a sleep
    tenant falls asleep with a request unanswered   → woken (a frozen tenant took the
                                                      connection, then froze)
    tenant stopped / not answering / too slow       → 503 / 502 / 504 page

What the tenant and the client see of each other's heads is in `headers.py`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, cast

from hoody import claims
from hoody.errors import HoodyError
from hoody.router import pages
from hoody.router.headers import Hosts, forwarded, origin_target, split_cookies, tenant_request
from hoody.router.http import CHUNKED, MAX_HEAD, NONE, BadMessage, Head, RequestReader
from hoody.router.metrics import ROUTERS
from hoody.router.table import Route, RouteTable, Woken
from hoody.router.upstream import Pool, UpstreamConnection

__all__ = ["CLAIM_PATH", "COOKIE", "SECURE_COOKIE", "Limits", "Router"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """How long a router waits and how many connections it takes; the defaults suit
    the internet. Times are seconds, checked once a second."""

    head: float = 10.0  # a request head arrives whole within this, from its first byte
    idle: float = 75.0  # a keep-alive connection with nothing asked is closed
    body_idle: float = 30.0  # a request body that stops for this long ends the request
    upstream: float = 60.0  # a tenant starts its answer (or goes on with it) within this
    tunnel_idle: float = 600.0  # a WebSocket (any upgraded pipe) silent both ways
    connections: int = 10_000  # client connections in all
    per_client: int = 256  # client connections from one address


COOKIE = "hoody_session"
# Under TLS: browsers accept a `__Host-` cookie only if it is Secure, host-only and
# for Path=/, so no sibling tenant or parent domain can set one in its place.
SECURE_COOKIE = "__Host-" + COOKIE
CLAIM_PATH = "/_hoody/claim"
# Tenants are on this node or a neighbour: a connection that takes longer is not coming.
CONNECT_TIMEOUT = 2.0
SESSION_CACHE = 10_000
# Requests one connection may have parsed and waiting behind the one being answered.
MAX_PIPELINED = 64
# A request to a sleeping tenant waits this long for the wake and the tenant's port.
WAKE_TIMEOUT = 30.0
# While a woken tenant's port refuses (its app is starting), try again this often.
WAKE_RETRY = 0.003
# A tenant found awake yet refusing connections is not asked to wake again this soon.
REFUSED_AWAKE_PAUSE = 1.0

_CLAIM_PATH = CLAIM_PATH.encode()

Exchange = Callable[[str, str], Awaitable[tuple[int, dict[str, Any]]]]
Wake = Callable[[str], Awaitable[Woken | None]]


@dataclass(slots=True)
class _Request:
    """A request as the reader reported it, and where its body goes."""

    head: Head
    kind: int  # NONE, LENGTH or CHUNKED
    keep: bool
    upgrade: bool
    expects_continue: bool
    body: list[bytes] = field(default_factory=list)  # arrived before it could go on
    buffered: int = 0
    complete: bool = False  # its last body byte was read
    sink: UpstreamConnection | None = None  # the body streams to this tenant connection
    drop: bool = False  # the router answered itself: the body is read and dropped


@dataclass(slots=True)
class _Pending:
    """The request a client connection has sent (or will send) to its tenant."""

    out: bytes  # the head as the tenant gets it
    route: Route
    method: bytes
    upgrade: bool
    retry: bool  # bodiless: may be sent again on a fresh connection once
    retried: bool = False
    woken: bool = False  # its tenant was woken for it (asleep, or its connection refused)


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class ClientConnection(asyncio.Protocol):
    """One client connection: its requests in order, each answered by the router itself
    (pages, claims) or by the tenant through an upstream connection."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = b""
        self.reader = RequestReader(self)
        self.queue: deque[_Request] = deque()  # parsed, waiting for `current` to finish
        self.current: _Request | None = None  # being answered
        self.parsing: _Request | None = None  # the one whose bytes the reader is on
        self.failure: BadMessage | None = None  # answered once the queue is done
        self.early = bytearray()  # bytes after an Upgrade request's head
        self.last = self.loop.time()  # the last answer ended (or the connection began)
        self.active = self.last  # the last byte from the client (either way in a tunnel)
        self.head_since: float | None = None  # a sweep saw a request head arriving
        self.tunnel_route: Route | None = None
        self.session: bytes | None = None  # the session cookie the request came with
        self.counted = False
        self.forwarding = (b"", b"")  # (host, forwarding header lines for it)
        # The Host of this connection's last routed request and what it routed to: a
        # browser asks one host many times per connection (one entry, bounded memory).
        self.routed: tuple[bytes | None, str, bytes] = (None, "", b"")
        self.keep = True
        self.version = b"HTTP/1.1"
        self.upstream: UpstreamConnection | None = None
        self.pending: _Pending | None = None
        self.tunnel: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.eof = False
        self.advancing = False
        self.paused = False  # reading paused
        self.sink_full = False  # the tenant's send buffer is full
        self.write_full = False  # our send buffer to the client is full

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.client_ip = ip = peer[0].encode() if isinstance(peer, tuple) else b""
        router = self.router
        limits = router.limits
        held = router.per_client.get(ip, 0)
        if len(router.connections) >= limits.connections or held >= limits.per_client:
            why = "this address has" if held >= limits.per_client else "the router has"
            log.warning("refused a connection from %s: %s too many open", ip.decode(), why)
            self.closed = True
            _write(
                self.transport,
                pages.response(503, "Too many connections", f"{why} too many open.", close=True),
            )
            self.transport.close()
            return
        router.per_client[ip] = held + 1
        router.connections.add(self)
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        router = self.router
        if self.counted:
            self.counted = False
            router.connections.discard(self)
            held = router.per_client.pop(self.client_ip, 1) - 1
            if held > 0:
                router.per_client[self.client_ip] = held
        if self.task is not None:
            self.task.cancel()
            self.task = None
        for up in (self.upstream, self.tunnel):
            if up is not None:
                up.client = None
                up.transport.close()
        self.upstream = self.tunnel = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.active = self.loop.time()
        tunnel = self.tunnel
        if tunnel is not None:
            _write(tunnel.transport, data)
            return
        reader = self.reader
        if reader.stopped:
            if self.current is not None and self.current.upgrade:
                self.early += data  # the tunnel's first bytes, if the tenant says 101
                self._reading()
            return
        try:
            rest = reader.feed(data)
        except BadMessage as exc:
            reader.stopped = True
            current = self.current
            if current is None and not self.queue:
                self._bad(exc)
            elif current is not None and not current.complete and not self.queue:
                self._abort(exc)  # in the body of the request being answered
            else:
                self.failure = exc  # answer what came before it first
                self._reading()
            return
        if rest:
            self.early += rest
        self._reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.eof or not tunnel.transport.can_write_eof():
                tunnel.transport.close()
                return None
            tunnel.transport.write_eof()
            return True  # the tenant may still answer the half-closed pipe
        if self.current is not None or self.queue:
            return True  # answer what was asked, then close
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

    # --- the reader's events (http.RequestEvents) ----------------------------------------

    def on_request(self, head: Head, kind: int, keep: bool, upgrade: bool) -> None:
        self.head_since = None
        expects = kind != NONE and (head.get(b"expect") or b"").lower() == b"100-continue"
        req = _Request(head, kind, keep, upgrade, expects)
        self.parsing = req
        if self.closed:
            req.drop = True
            return
        if self.current is None and not self.queue:
            self.current = req  # self._start(req), without the call on the fast path
            self.version = head.start[2]
            self.keep = keep
            try:
                self._dispatch(req, may_refresh=True)
            except BadMessage as exc:
                self._answer(exc.status, "Bad request", str(exc), keep=False)
        else:
            if len(self.queue) >= MAX_PIPELINED:
                raise BadMessage("too many pipelined requests")
            self.queue.append(req)

    def on_body(self, data: bytes) -> None:
        req = self.parsing
        assert req is not None
        if req.drop:
            return
        sink = req.sink
        if sink is not None:
            _write(sink.transport, _chunk(data) if req.kind == CHUNKED else data)
        else:
            req.body.append(data)
            req.buffered += len(data)

    def on_end(self) -> None:
        req = self.parsing
        assert req is not None
        self.parsing = None
        req.complete = True
        if req.sink is not None and req.kind == CHUNKED:
            _write(req.sink.transport, b"0\r\n\r\n")

    # --- requests ----------------------------------------------------------------------

    def request_sent(self) -> bool:
        """Whether the request being answered has been read to its end."""
        return self.current is None or self.current.complete

    def _start(self, req: _Request) -> None:
        self.current = req
        self.version = req.head.start[2]
        self.keep = req.keep
        try:
            self._dispatch(req, may_refresh=True)
        except BadMessage as exc:
            self._answer(exc.status, "Bad request", str(exc), keep=False)

    def _dispatch(self, req: _Request, may_refresh: bool) -> None:
        router = self.router
        head = req.head
        raw_host = head.fields[b"host"]
        routed = self.routed
        if raw_host == routed[0]:
            cid: str | None = routed[1]
            host = routed[2]
        else:
            cid, host = router.tenant_of(raw_host)
        target = head.start[1]
        if target[:1] != b"/":
            target = origin_target(head.start[0], target, raw_host)
        route = router.table.routes.get(cid) if cid else None
        if route is None:
            if (
                cid is None
                and target == b"/metrics"
                and self.client_ip.startswith((b"127.", b"::1"))
            ):
                self._metrics()  # the router's own counters, to this machine only
                return
            if router.table.stale:
                self._answer(
                    503,
                    "Router out of touch",
                    "This router has not reached the fleet's control plane for a while and "
                    "dropped its routes; tenants answer again once it does.",
                )
                return
            if cid and may_refresh and router.refresh is not None:
                self._later(self._refreshed(req))
                return
            self._answer(404, "No tenant here", router.unknown(cid))
            return
        if routed[0] != raw_host:
            router.hosts.remember(raw_host, route.cid, host)
            self.routed = (raw_host, route.cid, host)
        cookie = None
        if b"cookie" in head.fields:
            sessions, others = split_cookies(head, router.cookie)
            if len(sessions) > 1:
                raise BadMessage("two session cookies; clear this site's cookies and sign in again")
            cookie = sessions[0] if sessions else None
        else:
            others = None
        self.session = cookie
        if target.startswith(_CLAIM_PATH) and target.split(b"?", 1)[0] == _CLAIM_PATH:
            req.drop = True
            self._later(self._claim(route, target))
            return
        if not route.public:
            refusal = router.refusal(route, cookie)
            if refusal:
                self._answer(401, "Sign in through the app", refusal)
                return
        router.seen[route.cid] = self.loop.time()  # what idleness is measured from
        sleeping = False
        if route.state != "running" or not route.port:
            sleeping = route.state == "sleeping" and router.wake is not None and route.port > 0
            if route.state == "creating" and may_refresh and router.refresh is not None:
                # The app redirects its customer as soon as the copy returns, which can
                # be before this router's next poll: ask once whether it is running now.
                self._later(self._refreshed(req))
                return
            if not sleeping:
                self._answer(
                    503,
                    "Tenant not running",
                    f"{route.cid} is {route.state or 'not placed yet'}; it answers again once "
                    "started.",
                )
                return
        if self.forwarding[0] != host:
            self.forwarding = (host, forwarded(host, self.client_ip, router.proto))
        out = tenant_request(head, target, host, self.forwarding[1], others, req.upgrade)
        self.pending = _Pending(out, route, head.start[0], req.upgrade, req.kind == NONE)
        if sleeping:
            self._later(self._woken())
            return
        up = router.pool.take(route.upstream)
        if up is None:
            self._later(self._connect())
        else:
            self._attach(up)

    def _attach(self, up: UpstreamConnection) -> None:
        assert self.pending is not None and self.current is not None
        self.upstream = up
        up.begin(self)
        up.transport.write(self.pending.out)
        req = self.current
        if req.kind == NONE or req.sink is not None:
            return
        req.sink = up
        if req.body:
            body = req.body if req.kind != CHUNKED else [_chunk(b) for b in req.body]
            up.transport.write(b"".join(body))
            req.body.clear()
            req.buffered = 0
        if req.complete and req.kind == CHUNKED:
            up.transport.write(b"0\r\n\r\n")

    def _reading(self) -> None:
        """Pause reading while the tenant cannot take more, while requests wait their
        turn, or while bytes pile up that have nowhere to go yet."""
        parsing = self.parsing
        want = (
            self.sink_full
            or bool(self.queue)
            or self.failure is not None
            or len(self.early) > MAX_HEAD
            or (parsing is not None and parsing.buffered > MAX_HEAD)
        )
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

    async def _woken(self) -> None:
        """The tenant sleeps: have it woken (one wake per tenant however many requests
        wait), then send the request once its port takes connections."""
        pending = self.pending
        assert pending is not None
        deadline = self.loop.time() + WAKE_TIMEOUT
        pending.woken = True
        woken = await self.router.wake_tenant(pending.route.cid)
        if isinstance(woken, str):
            self.task = None
            if not self.closed:
                self._answer(503, "Tenant asleep", f"{pending.route.cid} could not wake: {woken}")
            return
        pending.route = replace(pending.route, state="running")
        await self._connect(until=deadline, woke_at=self.loop.time())

    async def _connect(self, until: float = 0.0, woke_at: float = 0.0) -> None:
        """Connect to the pending request's tenant and send it. `until`: a woken
        tenant's app may still be starting, so a refused connection is tried again
        until then (`woke_at`: when its wake was answered).

        A refused connection to a tenant the table says runs may mean the control
        plane put it to sleep a moment ago (the table is up to a refresh behind): the
        tenant is woken and, once it was asleep, tried again until its port opens; if
        it was awake, tried once more."""
        pending = self.pending
        assert pending is not None
        address = pending.route.upstream
        pool = self.router.pool
        why = "refused the connection"
        while True:
            try:
                _, up = await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: UpstreamConnection(pool, address), *address
                    ),
                    timeout=CONNECT_TIMEOUT,
                )
                break
            except ConnectionRefusedError:
                if self.loop.time() + WAKE_RETRY < until and not self.closed:
                    await asyncio.sleep(WAKE_RETRY)
                    continue
                cid = pending.route.cid
                if not pending.woken and not self.closed and self.router.may_sleep(cid):
                    pending.woken = True
                    woken = await self.router.wake_tenant(cid, refused=True)
                    if isinstance(woken, Woken):
                        if woken.was:
                            woke_at = self.loop.time()
                            until = woke_at + WAKE_TIMEOUT
                        else:
                            self.router.refusing(cid)
                        continue
                    self.router.refusing(cid)  # stopped by its owner, or its node down
                    why = f"refused the connection and could not be woken: {woken}"
            except (OSError, TimeoutError):
                pass
            self.task = None
            cid = pending.route.cid
            self._answer(502, "Tenant not answering", f"{cid} {why}.")
            return
        self.task = None
        if woke_at:
            self.router.wakes.took("port", self.loop.time() - woke_at)
        if self.closed:
            pool.put(up)
            return
        self._attach(up)
        self._reading()

    async def _refreshed(self, req: _Request) -> None:
        refresh = self.router.refresh
        assert refresh is not None
        try:
            await refresh()
        except Exception as exc:  # the router keeps its last table; say why once here
            log.warning("route table refresh failed: %s", exc)
        self.task = None
        if self.closed:
            return
        try:
            self._dispatch(req, may_refresh=False)
        except BadMessage as exc:
            self._answer(exc.status, "Bad request", str(exc), keep=False)
        self._reading()

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
            router = self.router
            secure = "; Secure" if router.secure else ""
            cookie = f"{router.cookie.decode()}={body['session']}; Path=/"
            cookie += f"; Max-Age={int(body['max_age'])}; HttpOnly; SameSite=Lax{secure}"
            req = self.current
            keep = self.keep and not (req is not None and req.expects_continue and not req.complete)
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
        self._reading()

    # --- answers ---------------------------------------------------------------------------

    def _answer(self, status: int, title: str, message: str, keep: bool = True) -> None:
        """A page from the router itself; the request body, if any, is read and dropped
        (unless the client waits for a 100 Continue: then the connection closes)."""
        req = self.current
        if req is not None:
            req.drop = True
            req.body.clear()
            req.buffered = 0
            if req.expects_continue and not req.complete:
                keep = False
        keep = keep and self.keep
        self.router.statuses[status] += 1
        assert self.transport is not None
        _write(self.transport, pages.response(status, title, message, close=not keep))
        self._done(keep)

    def _metrics(self) -> None:
        """The router's own counters in the Prometheus text format."""
        req = self.current
        keep = self.keep
        if req is not None:
            req.drop = True
            req.body.clear()
            req.buffered = 0
            if req.expects_continue and not req.complete:
                keep = False
        body = self.router.wakes.prometheus()
        assert self.transport is not None
        _write(
            self.transport,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            + b"Content-Length: %d\r\nCache-Control: no-store\r\n" % len(body)
            + (b"Connection: keep-alive" if keep else b"Connection: close")
            + b"\r\n\r\n"
            + body,
        )
        self._done(keep)

    def _done(self, keep: bool) -> None:
        """The answer is written: close, or go on with the next request."""
        req = self.current
        self.current = None
        self.upstream = None
        self.pending = None
        self.last = self.loop.time()
        if req is not None and not req.complete and req.sink is not None:
            keep = False  # the tenant answered before the whole body came: stop here
        if req is not None and req.upgrade:
            keep = False  # llhttp stopped at the upgrade; nothing after it is read
        if self.eof and not self.queue:
            keep = False
        if not keep:
            self._close()
            return
        # With nothing queued and reading on, _advance would change nothing: every
        # change that could pause reading has already called _reading.
        if self.queue or self.failure is not None or self.paused:
            self._advance()

    def _advance(self) -> None:
        """Answer the requests that waited their turn (a loop, not recursion: each may
        be answered at once, by a page)."""
        if self.advancing:
            return
        self.advancing = True
        try:
            while self.current is None and self.queue and not self.closed:
                self._start(self.queue.popleft())
        finally:
            self.advancing = False
        if self.current is None and not self.queue and self.failure is not None:
            self._bad(self.failure)
            return
        self._reading()

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

    def _bad(self, exc: BadMessage) -> None:
        title = {408: "Too slow", 431: "Request head too large"}.get(exc.status, "Bad request")
        if self.transport is not None:
            _write(self.transport, pages.response(exc.status, title, str(exc), close=True))
        self._close()

    def _abort(self, exc: BadMessage) -> None:
        """The request being answered turned out malformed mid-body: its tenant
        connection is dropped (the tenant saw an unfinished body) and the client gets a
        400 if no answer has begun, else a close."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        up, self.upstream = self.upstream, None
        answered = up is not None and up.answered
        if up is not None:
            up.client = None
            up.transport.close()
        if answered:
            self._close()
        else:
            self._bad(exc)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def check(self, now: float) -> None:
        """Time limits (`Limits`), checked by the router's sweeper once a second."""
        if self.closed:
            return
        router = self.router
        limits = router.limits
        tunnel = self.tunnel
        if tunnel is not None:
            route = self.tunnel_route
            if route is not None and not router.still_allowed(route, self.session):
                log.info("closing a tunnel to %s: its session no longer holds", route.cid)
            elif now - self.active <= limits.tunnel_idle:
                return
            tunnel.transport.close()
            self._close()
            return
        current = self.current
        if current is None:
            if self.queue:
                return
            if self.reader.in_head:  # timed from the sweep that first saw it
                if self.head_since is None:
                    self.head_since = now
                elif now - self.head_since > limits.head:
                    self._bad(BadMessage("the request head did not arrive in time", 408))
                return
            self.head_since = None
            if now - self.last > limits.idle:
                self._close()
            return
        if not current.complete and not self.paused and now - self.active > limits.body_idle:
            self._abort(BadMessage("the request body stopped arriving", 408))
            return
        up = self.upstream
        if up is not None and now - max(up.since, self.active) > limits.upstream:
            cid = self.pending.route.cid if self.pending else "the tenant"
            up.client = None
            up.transport.close()
            self.upstream = None
            if up.answered:
                log.info("tenant %s stopped in the middle of an answer", cid)
                self._close()
            else:
                self._answer(504, "Tenant too slow", f"{cid} did not answer in time.", keep=False)


@dataclass
class WakeCounters:
    """What the router did for sleeping tenants (`/metrics` on the router's own host)."""

    wakes: int = 0  # tenants woken for a request
    at_node: int = 0  # of those, woken by the router at their node (not via the control plane)
    failed: int = 0  # wakes the control plane refused or did not answer
    seconds: float = 0.0  # time spent waking, summed over `wakes`
    held: int = 0  # requests held while their tenant woke
    refused: int = 0  # wakes asked because a tenant the table had running refused
    # Where the time of `wakes` went (seconds summed, parts that add up): control_plane
    # (its own share), agent (the call to the node agent, from the control plane or
    # this router, less the node's work), node (the node's own work), port (the wake
    # answered → the tenant's connection made).
    phases: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("control_plane", "agent", "node", "port"), 0.0)
    )

    def took(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def prometheus(self) -> bytes:
        phases = "".join(
            f'hoody_router_wake_phase_seconds_total{{phase="{name}"}} {value:.6f}\n'
            for name, value in self.phases.items()
        )
        return (
            "# HELP hoody_router_wakes_total Sleeping tenants woken for a request.\n"
            "# TYPE hoody_router_wakes_total counter\n"
            f'hoody_router_wakes_total{{result="ok"}} {self.wakes}\n'
            f'hoody_router_wakes_total{{result="failed"}} {self.failed}\n'
            "# HELP hoody_router_wakes_at_node_total Tenants woken at their node directly.\n"
            "# TYPE hoody_router_wakes_at_node_total counter\n"
            f"hoody_router_wakes_at_node_total {self.at_node}\n"
            "# HELP hoody_router_wake_seconds Time from a wake asked to its answer.\n"
            "# TYPE hoody_router_wake_seconds summary\n"
            f"hoody_router_wake_seconds_sum {self.seconds:.6f}\n"
            f"hoody_router_wake_seconds_count {self.wakes}\n"
            "# HELP hoody_router_wake_held_requests_total Requests held for a wake.\n"
            "# TYPE hoody_router_wake_held_requests_total counter\n"
            f"hoody_router_wake_held_requests_total {self.held}\n"
            "# HELP hoody_router_wake_refused_total Wakes asked because a tenant the route "
            "table had running refused the connection (the table was behind a sleep).\n"
            "# TYPE hoody_router_wake_refused_total counter\n"
            f"hoody_router_wake_refused_total {self.refused}\n"
            "# HELP hoody_router_wake_phase_seconds_total Where the wakes' time went.\n"
            "# TYPE hoody_router_wake_phase_seconds_total counter\n"
        ).encode() + phases.encode()


class Router:
    """Serves `<cid>.<domain>` from `table`; `exchange` spends claims (control plane);
    `refresh` reloads the table when a host is not in it (a tenant made a moment ago);
    `wake` wakes a sleeping tenant (at its node or through the control plane), raising
    if it cannot."""

    def __init__(
        self,
        table: RouteTable,
        domain: str,
        exchange: Exchange,
        *,
        secure: bool = False,
        refresh: Callable[[], Awaitable[None]] | None = None,
        limits: Limits | None = None,
        wake: Wake | None = None,
    ) -> None:
        self.table = table
        self.limits = limits or Limits()
        self.per_client: dict[bytes, int] = {}
        self.refresh = refresh
        self.wake = wake
        self.wakes = WakeCounters()
        self._waking: dict[str, asyncio.Future[Woken | str]] = {}
        self._background: set[asyncio.Future[Woken | str]] = set()
        # Tenants found awake yet refusing connections: loop time, not asked again soon.
        self._refusing: dict[str, float] = {}
        # Tenant → loop time of its latest request, taken by the activity reporter.
        self.seen: dict[str, float] = {}
        self.domain = domain.lower().strip(".")
        self.exchange = exchange
        self.secure = secure
        self.pool = Pool()
        self.connections: set[ClientConnection] = set()
        # Answers by status (int: the router's pages; bytes: the tenants'), for
        # /metrics (hoody.router.metrics): one increment per request.
        self.statuses: Counter[int | bytes] = Counter()
        ROUTERS.add(self)
        self.proto = b"https" if secure else b"http"
        self.cookie = (SECURE_COOKIE if secure else COOKIE).encode()
        self.hosts = Hosts(self.domain)
        table.on_sleep = self._fell_asleep
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

    def _fell_asleep(self, cids: list[str]) -> None:
        """The table says `cids` sleep now. A request to one of them that is being
        sent or was sent and is not yet answered went out while the table was behind:
        a frozen tenant's kernel takes the connection and the request waits in its
        socket, so wake it."""
        if self.wake is None:
            return
        asleep = set(cids)
        for conn in self.connections:
            pending, up = conn.pending, conn.upstream
            if (
                pending is not None
                and pending.route.cid in asleep
                and not pending.woken
                and (up is None or not up.answered)
            ):
                pending.woken = True
                task = asyncio.ensure_future(self.wake_tenant(pending.route.cid))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    def may_sleep(self, cid: str) -> bool:
        """Whether a refused connection to `cid` is worth a wake: this router wakes
        tenants, and `cid` was not found awake and refusing a moment ago."""
        if self.wake is None:
            return False
        since = self._refusing.get(cid)
        return since is None or asyncio.get_running_loop().time() - since > REFUSED_AWAKE_PAUSE

    def refusing(self, cid: str) -> None:
        """`cid` was found awake yet refusing connections: no wake for it for a while."""
        if len(self._refusing) >= SESSION_CACHE:
            self._refusing.clear()
        self._refusing[cid] = asyncio.get_running_loop().time()

    async def wake_tenant(self, cid: str, refused: bool = False) -> Woken | str:
        """Wake `cid`, sharing one wake among the requests that wait for it (`refused`:
        asked because its connection was refused). Returns what the wake did once it
        is awake, else why it could not be woken."""
        self.wakes.held += 1
        self.wakes.refused += refused
        waking = self._waking.get(cid)
        if waking is None:
            waking = asyncio.ensure_future(self._wake(cid))
            self._waking[cid] = waking
        return await asyncio.shield(waking)

    async def _wake(self, cid: str) -> Woken | str:
        assert self.wake is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            woken = await asyncio.wait_for(self.wake(cid), WAKE_TIMEOUT) or Woken()
        except Exception as exc:
            self.wakes.failed += 1
            log.warning("could not wake tenant %s: %s", cid, exc)
            return str(exc) or type(exc).__name__
        finally:
            self._waking.pop(cid, None)
        if woken.was:
            self.wakes.wakes += 1
            self.wakes.at_node += woken.at_node
            self.wakes.seconds += loop.time() - start
            for phase, seconds in woken.phases.items():
                self.wakes.took(phase, seconds)
        route = self.table.routes.get(cid)
        if route is not None and route.state == "sleeping":
            # Awake now; the next table refresh from the control plane says so too.
            self.table.routes[cid] = replace(route, state="running")
        return woken

    def take_seen(self) -> dict[str, float]:
        """Seconds since each tenant's latest request, for those with requests since
        the last call (what the control plane measures idleness from)."""
        seen, self.seen = self.seen, {}
        now = asyncio.get_running_loop().time()
        return {cid: max(0.0, now - at) for cid, at in seen.items()}

    # --- decisions ---------------------------------------------------------------------

    def tenant_of(self, host: bytes) -> tuple[str | None, bytes]:
        """(cid or None, the Host its tenant gets); raises BadMessage for a malformed
        Host."""
        return self.hosts.lookup(host)

    def still_allowed(self, route: Route, cookie: bytes | None) -> bool:
        """Whether a tunnel opened to `route` with session `cookie` may stay open: the
        tenant is still routed and running, and (if private) the session still holds
        (not revoked, not expired, its key not retired)."""
        now = self.table.routes.get(route.cid)
        if now is None or now.state != "running" or now.upstream != route.upstream:
            return False
        if now.public:
            return True
        return now.generation == route.generation and self.refusal(now, cookie) is None

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
