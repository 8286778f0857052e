"""HTTP/1.1 message heads and body framing, as the router needs them: pure functions
over bytes, no I/O.

Bodies are not decoded: a `Framer` only finds where a body ends, so the proxy passes
chunked bodies (extensions, trailers and all) through byte for byte and knows when the
next message starts. Anything that could let two parties disagree on where a message
ends (both Content-Length and Transfer-Encoding, a bad length or chunk size) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "cookie_value",
    "parse_head",
    "request_framing",
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


class BadMessage(Exception):
    """A message that is not HTTP/1.1 as the router accepts it (answered 400 or 502)."""


@dataclass(slots=True)
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
    """A head from its bytes, up to and including the blank line."""
    lines = raw.split(b"\r\n")
    start = lines[0].split(b" ", 2)
    if len(start) < 2:
        raise BadMessage("malformed start line")
    headers = []
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b"\n" in line:
            raise BadMessage("malformed header line")
        value = value.strip()
        headers.append((name, value))
        low = name.lower()
        fields[low] = fields[low] + b", " + value if low in fields else value
    return Head(start, headers, fields)


def _length(head: Head) -> int:
    length = head.get(b"content-length")
    assert length is not None
    if not length.isdigit() or len(length) > 15:
        raise BadMessage("bad Content-Length")
    return int(length)


def request_framing(head: Head) -> tuple[int, int]:
    """(framing, length) of a request body: NONE, LENGTH or CHUNKED."""
    te = head.get(b"transfer-encoding")
    if te is not None:
        if head.get(b"content-length") is not None:
            raise BadMessage("both Content-Length and Transfer-Encoding")
        if te.strip().lower() != b"chunked":
            raise BadMessage("unsupported Transfer-Encoding (only chunked)")
        return CHUNKED, 0
    if head.get(b"content-length") is not None:
        length = _length(head)
        return (LENGTH, length) if length else (NONE, 0)
    return NONE, 0


def response_framing(head: Head, method: bytes) -> tuple[int, int]:
    """(framing, length) of a response body to a `method` request (RFC 9112 6.3)."""
    status = head.start[1]
    if method == b"HEAD" or status[:1] == b"1" or status in (b"204", b"304"):
        return NONE, 0
    te = head.get(b"transfer-encoding")
    if te is not None:
        # Chunked must be the last coding; any other ends with the connection.
        last = te.rsplit(b",", 1)[-1].strip().lower()
        return (CHUNKED, 0) if last == b"chunked" else (CLOSE, 0)
    if head.get(b"content-length") is not None:
        length = _length(head)
        return (LENGTH, length) if length else (NONE, 0)
    return CLOSE, 0


class Framer:
    """Finds the end of one body in the bytes that follow its head.

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
                    raise BadMessage("chunk line too long")
                return end
            line = self.line + data[pos : newline + 1]
            self.line = b""
            pos = newline + 1
            if not line.endswith(b"\r\n"):
                raise BadMessage("chunk line without CRLF")
            self._line(line[:-2])
        return pos

    def _line(self, line: bytes) -> None:
        if self.state == self._SIZE:
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
                raise BadMessage("bad chunk size")
            self.remaining = int(size, 16)
            self.state = self._DATA if self.remaining else self._TRAILER
        elif self.state == self._DATA_END:
            if line:
                raise BadMessage("chunk data longer than its size")
            self.state = self._SIZE
        elif not line:  # the blank line after the trailers
            self.done = True


def cookie_value(head: Head, name: bytes) -> tuple[bytes | None, bytes | None]:
    """(value of cookie `name`, the Cookie header without it)."""
    found, rest = None, []
    for key, value in head.headers:
        if key.lower() != b"cookie":
            continue
        for part in value.split(b";"):
            part = part.strip()
            k, _, v = part.partition(b"=")
            if k == name:
                found = v
            elif part:
                rest.append(part)
    return found, (b"; ".join(rest) if rest else None)
