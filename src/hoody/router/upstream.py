"""The router's side towards tenants: one keep-alive connection per request in flight,
lent by a per-address `Pool`; it reads the tenant's answer (`http.parse_response_head`,
`http.Framer`) and streams it to the client connection that sent the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from hoody.router.headers import client_response
from hoody.router.http import (
    CLOSE,
    LENGTH,
    MAX_HEAD,
    NONE,
    BadMessage,
    Framer,
    Head,
    parse_response_head,
    response_framing,
)

if TYPE_CHECKING:
    from hoody.router.proxy import ClientConnection

__all__ = ["POOL_IDLE", "POOL_PER_UPSTREAM", "Pool", "UpstreamConnection"]

log = logging.getLogger(__name__)

POOL_PER_UPSTREAM = 64
# Idle pooled connections are dropped after this long (tenants may have gone).
POOL_IDLE = 30.0


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


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
        self.since = 0.0  # the request was sent or the tenant last sent a byte (loop time)
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
            client.active = client.loop.time()
            _write(client.transport, data)
            return
        self.since = client.loop.time()  # the tenant is still answering
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
        buffer = self.buffer
        if buffer:  # the start of a head came in an earlier piece
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        self._heads(client, data)

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

    def _heads(self, client: ClientConnection, data: bytes) -> None:
        """Answer from the response heads in `data` (what follows them is body); keep an
        unfinished head in `buffer` for the next piece."""
        assert client.transport is not None and client.pending is not None
        pos = 0
        while True:
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(data) - pos > MAX_HEAD:
                    self._bad_gateway(client, "answered with a head over 64 KiB")
                else:
                    self.buffer += data[pos:] if pos else data
                return
            end += 4
            try:
                head = parse_response_head(data[pos:end])
                kind, length = response_framing(head, client.pending.method)
            except BadMessage as exc:
                self._bad_gateway(client, f"answered with something that is not HTTP/1.1 ({exc})")
                return
            pos = end
            status = head.start[1]
            if status == b"101" and client.pending.upgrade:
                self.buffer += data[pos:]
                self._tunnel(client, client_response(head, None))
                return
            if status[:1] == b"1":
                # Interim answers (100 Continue, 103 Early Hints) go on as they are.
                if status == b"101":
                    self._bad_gateway(client, "switched protocols unasked")
                    return
                if client.version != b"HTTP/1.0":
                    self.answered = True
                    _write(client.transport, client_response(head, None))
                continue
            self._respond(client, head, kind, length, data, pos)
            return

    def _respond(
        self, client: ClientConnection, head: Head, kind: int, length: int, data: bytes, pos: int
    ) -> None:
        """Send the client the answer's head and the body bytes in `data[pos:]` (one
        write when the body came with the head); a whole answer frees this connection."""
        assert client.transport is not None
        client.router.statuses[head.start[1]] += 1
        self.answered = True
        current = client.current
        keep = client.keep and kind != CLOSE and (current is None or current.complete)
        client.keep = keep
        tokens = head.tokens(b"connection") if b"connection" in head.fields else ()
        if head.start[0] == b"HTTP/1.0":
            self.reusable = kind != CLOSE and b"keep-alive" in tokens
        else:
            self.reusable = kind != CLOSE and b"close" not in tokens
        out = client_response(head, keep)
        rest = len(data) - pos
        if kind == NONE or (kind == LENGTH and rest >= length):  # the whole answer is here
            transport = client.transport
            if not transport.is_closing():
                transport.write(out + data[pos : pos + length] if length else out)
            self._finish(client, extra=rest > length)
            return
        self.framer = framer = Framer(kind, length)
        if not rest:
            _write(client.transport, out)
            return
        body = data[pos:]
        try:
            n = framer.feed(body)
        except BadMessage:
            _write(client.transport, out)
            self._truncated(client)
            return
        _write(client.transport, out + (body if n == rest else body[:n]))  # one write
        if framer.done:
            self._finish(client, extra=n < rest)

    def _finish(self, client: ClientConnection, extra: bool) -> None:
        """The whole answer went to the client: pool or close, then the client goes on."""
        self.client = None
        self.framer = None
        current = client.current
        if (
            self.reusable
            and not extra
            and not self.eof
            and (current is None or current.complete)  # client.request_sent()
        ):
            self.pool.put(self)
        else:
            self.transport.close()
        client._done(client.keep)

    def _tunnel(self, client: ClientConnection, head: bytes) -> None:
        assert client.transport is not None
        self.tunnel = True
        self.answered = True
        client.upstream = None
        client.tunnel = self
        client.tunnel_route = client.pending.route if client.pending else None
        client.keep = False
        _write(client.transport, head)
        if self.buffer:
            _write(client.transport, bytes(self.buffer))
            self.buffer.clear()
        client.current = None
        if client.early:
            _write(self.transport, bytes(client.early))
            client.early.clear()
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
        conns = self.idle.get(up.address)
        if conns is None:
            conns = self.idle[up.address] = []
        if len(conns) < POOL_PER_UPSTREAM and not up.transport.is_closing():
            up.idle_since = time.monotonic()
            if up.paused:
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
