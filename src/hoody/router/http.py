"""HTTP/1.1 as the router reads it: requests through llhttp (httptools), response heads
and body framing from tenants by the strict rules below. No I/O.

Requests come from anyone on the internet, so they are parsed by llhttp in its strict
mode (the parser Node and uvicorn use): bare LF line ends, CR, NUL and other control
characters in header values, obs-fold, Content-Length next to Transfer-Encoding,
duplicate or malformed Content-Length, codings other than a final chunked all end in
a `BadMessage` (400). On top of llhttp the router requires exactly one Host, HTTP/1.0
or 1.1, no CONNECT, no body on an Upgrade request, and heads under `MAX_HEAD` (431).

Request bodies are decoded by llhttp and re-framed by the proxy, so a tenant sees a
body framed one way only, whatever tricks the client's chunk lines held.

Responses come from tenants (less hostile, but tenants are customers' code): heads are
checked line by line (CRLF only, no control characters, a three-digit status), a
`Content-Length` next to `Transfer-Encoding` is dropped (RFC 9112 6.3), and a `Framer`
finds where the body ends so the proxy passes it through byte for byte. llhttp is not
used there because httptools cannot tell its response parser that a response answers
a HEAD request (whose Content-Length announces no body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import httptools

__all__ = [
    "CHUNKED",
    "CLOSE",
    "HOP_BY_HOP",
    "LENGTH",
    "MAX_HEAD",
    "NONE",
    "BadMessage",
    "Framer",
    "Head",
    "RequestEvents",
    "RequestReader",
    "parse_response_head",
    "response_framing",
]

MAX_HEAD = 64 * 1024
_MAX_LINE = 8 * 1024

# Body framings.
NONE, LENGTH, CHUNKED, CLOSE = 0, 1, 2, 3

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each side.
HOP_BY_HOP = frozenset(
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

# Field values: visible ASCII, obs-text, SP and HTAB (RFC 9110 5.5); nothing else.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Header lines: token ":" value CRLF, each value free of control characters.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")


_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class BadMessage(Exception):
    """A message that is not HTTP/1.1 as the router accepts it: answered with `status`
    (400, or 431 for an oversize head) when a client sent it, 502 when a tenant did."""

    def __init__(self, why: str, status: int = 400) -> None:
        super().__init__(why)
        self.status = status


@dataclass(slots=True)
class Head:
    """A parsed request or response head. `headers` keep their original spelling;
    `fields` maps each lower-cased name to its values joined with ", " (RFC 9110 5.3).
    `lines` (responses only) are the header lines as received and checked, each ended
    by CRLF: what `headers` says, ready to pass on as they are."""

    start: list[bytes]  # method, target, version  |  version, status, reason
    headers: list[tuple[bytes, bytes]]
    fields: dict[bytes, bytes]
    lines: bytes | None = None

    def get(self, name: bytes) -> bytes | None:
        return self.fields.get(name)

    def tokens(self, name: bytes) -> set[bytes]:
        value = self.fields.get(name)
        if value is None:
            return set()
        return {t.strip().lower() for t in value.split(b",")}


class RequestEvents(Protocol):
    """What a `RequestReader` tells its connection, in order, for each request."""

    def on_request(self, head: Head, kind: int, keep: bool, upgrade: bool) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...


class _Stop(Exception):
    """Raised from a callback to stop llhttp: nothing after this request is read."""


class RequestReader:
    """Feeds a client's bytes to llhttp and reports requests to `events`.

    `feed` raises `BadMessage` for anything malformed, and returns the bytes that
    followed an Upgrade (or CONNECT) request's head, or None. After an upgrade, or
    after a request that ends the connection (`Connection: close`, HTTP/1.0), the
    reader takes nothing more (`stopped`); bytes fed later are ignored.
    """

    __slots__ = (
        "_events",
        "_fields",
        "_headers",
        "_hosts",
        "_idle",
        "_in_message",
        "_parser",
        "_size",
        "_url",
        "stopped",
    )

    def __init__(self, events: RequestEvents) -> None:
        self._events = events
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] | None = None  # None: not in a head
        self._fields: dict[bytes, bytes] = {}
        self._hosts = 0  # Host headers in the head
        self._size = 0  # bytes of the head so far
        self._idle = 0  # bytes fed since llhttp last produced a head, body or end
        self._in_message = False  # between a head's end and its message's end
        self.stopped = False

    @property
    def in_head(self) -> bool:
        """Bytes of a request head have arrived, and not yet its end."""
        return self._idle > 0 and not self._in_message

    def feed(self, data: bytes) -> bytes | None:
        if self.stopped:
            return None
        # However llhttp splits its callbacks, no more than MAX_HEAD bytes may arrive
        # without a head, body bytes or a message end coming out: this bounds heads,
        # chunk lines, trailers and floods of empty lines alike.
        self._idle += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.stopped = True
            return data[upgrade.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Stop):
                return None
            if cause is not None:
                raise cause from None
            raise BadMessage(f"malformed request ({exc})") from exc
        except httptools.HttpParserError as exc:
            raise BadMessage(f"malformed request ({exc})") from exc
        if self._idle > MAX_HEAD:
            if self._headers is not None:
                raise BadMessage("request head over 64 KiB", 431)
            raise BadMessage("chunk line or trailers over 64 KiB")
        return None

    # --- llhttp callbacks --------------------------------------------------------------

    # No on_message_begin: each callback is a call from C into Python, and the first
    # piece of the target starts the head as well.

    def on_url(self, url: bytes) -> None:
        if self._headers is None:
            self._url = url
            self._headers = []
            self._fields = {}
            self._hosts = 0
            self._size = len(url)
        else:
            self._url += url
            self._size += len(url)
        if self._size > MAX_HEAD:
            raise BadMessage("request head over 64 KiB", 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if headers is None:
            return  # a trailer: dropped (the body is re-framed without them)
        self._size += len(name) + len(value) + 4
        if self._size > MAX_HEAD:
            raise BadMessage("request head over 64 KiB", 431)
        headers.append((name, value))
        low = name.lower()
        fields = self._fields
        if low in fields:
            fields[low] += b", " + value
            if low == b"host":
                self._hosts += 1
        else:
            fields[low] = value
            if low == b"host":
                self._hosts = 1

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers, fields = self._headers, self._fields
        assert headers is not None
        self._headers = None
        self._idle = 0
        self._in_message = True
        version = parser.get_http_version()
        spelled = _VERSIONS.get(version)
        if spelled is None:
            raise BadMessage(f"HTTP/{version} is not spoken here; use HTTP/1.1")
        method = parser.get_method()
        if method == b"CONNECT":
            raise BadMessage("CONNECT is refused: this is not a forward proxy")
        if self._hosts != 1:
            raise BadMessage("a request needs exactly one Host header")
        kind = NONE
        te = fields.get(b"transfer-encoding")
        if te is not None:
            if te.strip().lower() != b"chunked":
                raise BadMessage("Transfer-Encoding other than chunked")
            kind = CHUNKED
        elif fields.get(b"content-length", b"0") != b"0":
            kind = LENGTH
        upgrade = parser.should_upgrade()
        if upgrade and kind != NONE:
            raise BadMessage("an Upgrade request carries no body")
        head = Head([method, self._url, spelled], headers, fields)
        self._events.on_request(head, kind, parser.should_keep_alive(), upgrade)

    def on_body(self, data: bytes) -> None:
        self._idle = 0
        self._events.on_body(data)

    def on_message_complete(self) -> None:
        self._idle = 0
        self._in_message = False
        self._events.on_end()
        parser = self._parser
        if not parser.should_keep_alive() and not parser.should_upgrade():
            self.stopped = True
            raise _Stop


def parse_response_head(raw: bytes) -> Head:
    """A tenant's response head from its bytes, up to and including the blank line.

    Raises BadMessage for anything but `HTTP/1.x NNN reason` and `name: value` lines
    ended by CRLF, with token names and no control characters; drops Content-Length
    when Transfer-Encoding is present (RFC 9112 6.3: a sender must not send both)."""
    first = raw.find(b"\r\n")
    start = raw[:first].split(b" ", 2)
    if (
        len(start) < 2
        or start[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(start[1]) != 3
        or not start[1].isdigit()
        or (len(start) == 3 and not start[2].isalpha() and _BAD_VALUE.search(start[2]))
    ):
        raise BadMessage("malformed status line", 502)
    if len(start) == 2:
        start.append(b"")
    block = raw[first + 2 : -2]
    if not block:
        return Head(start, [], {}, block)
    if not _FIELDS.fullmatch(block):  # one pass in C over every header line
        raise BadMessage("malformed header line or control character in a header", 502)
    headers = []
    fields: dict[bytes, bytes] = {}
    for line in block[:-2].split(b"\r\n"):
        name, _, value = line.partition(b":")
        value = value.strip(b" \t")
        headers.append((name, value))
        low = name.lower()
        fields[low] = fields[low] + b", " + value if low in fields else value
    if b"transfer-encoding" in fields and b"content-length" in fields:
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        del fields[b"content-length"]
        return Head(start, headers, fields)  # `lines` would still hold the length
    return Head(start, headers, fields, block)


def _length(value: bytes) -> int:
    values = {v.strip() for v in value.split(b",")}  # "5, 5" is one length
    length = values.pop()
    if values or not length.isdigit() or len(length) > 15:
        raise BadMessage("bad Content-Length", 502)
    return int(length)


def response_framing(head: Head, method: bytes) -> tuple[int, int]:
    """(framing, length) of a response body to a `method` request (RFC 9112 6.3)."""
    status = head.start[1]
    if method == b"HEAD" or status[:1] == b"1" or status in (b"204", b"304"):
        return NONE, 0
    fields = head.fields
    te = fields.get(b"transfer-encoding")
    if te is not None:
        # Chunked must be the last coding; any other ends with the connection.
        last = te.rsplit(b",", 1)[-1].strip().lower()
        return (CHUNKED, 0) if last == b"chunked" else (CLOSE, 0)
    value = fields.get(b"content-length")
    if value is None:
        return CLOSE, 0
    length = int(value) if value.isdigit() and len(value) <= 15 else _length(value)
    return (LENGTH, length) if length else (NONE, 0)


class Framer:
    """Finds the end of one response body in the bytes that follow its head.

    `feed(data)` returns how many leading bytes of `data` belong to the body and sets
    `done` at its last byte; what follows is the next message. CLOSE bodies end only
    when the connection does.
    """

    __slots__ = ("done", "kind", "line", "remaining", "state")

    _SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3

    def __init__(self, kind: int, length: int = 0) -> None:
        self.kind = kind
        self.remaining = length
        self.done = kind == NONE or (kind == LENGTH and length == 0)
        self.state = self._SIZE
        self.line = b""

    def feed(self, data: bytes) -> int:
        if self.done:
            return 0
        if self.kind == LENGTH:
            n = min(len(data), self.remaining)
            self.remaining -= n
            self.done = self.remaining == 0
            return n
        if self.kind == CLOSE:
            return len(data)
        return self._chunked(data)

    def _chunked(self, data: bytes) -> int:
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self.state == self._DATA:
                n = min(end - pos, self.remaining)
                pos += n
                self.remaining -= n
                if self.remaining == 0:
                    self.state = self._DATA_END
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self.line += data[pos:]
                if len(self.line) > _MAX_LINE:
                    raise BadMessage("chunk line too long", 502)
                return end
            line = self.line + data[pos : newline + 1]
            self.line = b""
            pos = newline + 1
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                raise BadMessage("chunk line without CRLF", 502)
            self._line(line[:-2])
        return pos

    def _line(self, line: bytes) -> None:
        if self.state == self._SIZE:
            size = line.split(b";", 1)[0].strip(b" \t")
            if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
                raise BadMessage("bad chunk size", 502)
            self.remaining = int(size, 16)
            self.state = self._DATA if self.remaining else self._TRAILER
        elif self.state == self._DATA_END:
            if line:
                raise BadMessage("chunk data longer than its size", 502)
            self.state = self._SIZE
        elif not line:  # the blank line after the trailers
            self.done = True
