"""Malformed and hostile requests, each sent as raw bytes to a real router on loopback in
front of a real upstream socket, each with the answer it must get; and what a tenant
must not be able to send back through the router.

`{h}` in a request stands for the Host of the public tenant "a" (`a.localhost:<port>`).
"""

from __future__ import annotations

import asyncio

import pytest

from hoody import claims
from tests.unit.router.conftest import RING, Stack

H = "{h}"
GET = f"GET /headers HTTP/1.1\r\nHost: {H}\r\n"

# (name, request bytes, the statuses answered in order, whether the tenant saw a request:
# None when either may happen)
CASES: list[tuple[str, str, list[int], bool | None]] = [
    ("plain", GET + "\r\n", [200], True),
    # RFC 9112 grammar: CRLF line ends, no control characters in values.
    ("bare LF after the start line", f"GET / HTTP/1.1\nHost: {H}\r\n\r\n", [400], False),
    ("bare LF after a header", f"GET / HTTP/1.1\r\nHost: {H}\n\r\n", [400], False),
    ("bare LF everywhere", f"GET / HTTP/1.1\nHost: {H}\n\n", [400], False),
    ("NUL in a value", GET + "X-A: a\x00b\r\n\r\n", [400], False),
    ("CR in a value", GET + "X-A: a\rX-Forwarded-Host: evil\r\n\r\n", [400], False),
    ("control char in a value", GET + "X-A: a\x01b\r\n\r\n", [400], False),
    ("DEL in a value", GET + "X-A: a\x7fb\r\n\r\n", [400], False),
    ("obs-fold", GET + "X-A: a\r\n X-Forwarded-Host: evil\r\n\r\n", [400], False),
    ("space before the colon", GET + "X-A : b\r\n\r\n", [400], False),
    ("empty header name", GET + ": b\r\n\r\n", [400], False),
    ("control char in the target", f"GET /a\x01b HTTP/1.1\r\nHost: {H}\r\n\r\n", [400], False),
    ("space in the target", f"GET /a b HTTP/1.1\r\nHost: {H}\r\n\r\n", [400], False),
    ("HTTP/0.9", "GET /\r\n\r\n", [400], False),
    ("HTTP/2.0 in text", f"GET / HTTP/2.0\r\nHost: {H}\r\n\r\n", [400], False),
    ("HTTP/1.2", f"GET / HTTP/1.2\r\nHost: {H}\r\n\r\n", [400], False),
    ("CONNECT", f"CONNECT {H} HTTP/1.1\r\nHost: {H}\r\n\r\n", [400], False),
    # Ambiguous framing: the request smuggling family.
    (
        "Content-Length and Transfer-Encoding",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nContent-Length: 4\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        [400],
        False,
    ),
    (
        "duplicate Content-Length",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        [400],
        False,
    ),
    (
        "Content-Length list",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nContent-Length: 2, 2\r\n\r\nab",
        [400],
        False,
    ),
    (
        "Content-Length +1",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nContent-Length: +1\r\n\r\na",
        [400],
        False,
    ),
    (
        "Transfer-Encoding gzip, chunked",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        [400],
        False,
    ),
    (
        "Transfer-Encoding chunked twice",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        [400],
        False,
    ),
    (
        "bare LF in a chunk line",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\nabc\r\n0\r\n\r\n",
        [400],
        None,  # the head may have gone on before the body turned out malformed
    ),
    (
        "chunk longer than its size",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabcd\r\n0\r\n\r\n",
        [400],
        None,
    ),
    (
        "a request hidden in a body stays a body",
        f"POST /echo HTTP/1.1\r\nHost: {H}\r\nContent-Length: 40\r\n\r\n"
        "GET /admin HTTP/1.1\r\nHost: x.localhost\r\n\r\n",
        [200],
        True,
    ),
    (
        "Upgrade request with a body",
        f"POST /ws HTTP/1.1\r\nHost: {H}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Content-Length: 2\r\n\r\nxy",
        [400],
        False,
    ),
    ("pipelined", GET + "\r\n" + GET + "\r\n", [200, 200], True),
    ("good then bad", GET + "\r\n" + "GET / HTTP/1.1\nHost: x\n\n", [200, 400], True),
    # Host tricks.
    ("no Host", "GET / HTTP/1.1\r\n\r\n", [400], False),
    ("no Host, HTTP/1.0", "GET / HTTP/1.0\r\n\r\n", [400], False),
    ("two Hosts", GET + f"Host: {H}\r\n\r\n", [400], False),
    ("Host with userinfo", "GET / HTTP/1.1\r\nHost: a.localhost:@evil\r\n\r\n", [400], False),
    ("Host with a path", "GET / HTTP/1.1\r\nHost: a.localhost/x\r\n\r\n", [400], False),
    ("Host of another domain", "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n", [404], False),
    ("Host of no tenant", "GET / HTTP/1.1\r\nHost: zz.localhost\r\n\r\n", [404], False),
    (
        "absolute target naming another host",
        f"GET http://b.localhost/ HTTP/1.1\r\nHost: {H}\r\n\r\n",
        [400],
        False,
    ),
    (
        "absolute target with userinfo",
        f"GET http://evil@{H}/ HTTP/1.1\r\nHost: {H}\r\n\r\n",
        [400],
        False,
    ),
    (
        "absolute target naming its Host",
        f"GET http://{H}/headers HTTP/1.1\r\nHost: {H}\r\n\r\n",
        [200],
        True,
    ),
    # Oversize heads.
    ("one 70 KiB header", GET + "X-A: " + "a" * 70_000 + "\r\n\r\n", [431], False),
    ("many headers over 64 KiB", GET + "X-A: aaaaaaaaaaaaaaaa\r\n" * 4000 + "\r\n", [431], False),
    ("a 70 KiB target", f"GET /{'a' * 70_000} HTTP/1.1\r\nHost: {H}\r\n\r\n", [431], False),
    ("endless empty lines", "\r\n" * 40_000, [400], False),
]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def ask(stack: Stack, raw: bytes, count: int) -> tuple[list[int], bool]:
    """The statuses of the first `count` answers, and whether the router then closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(raw)
        await writer.drain()
        statuses = []
        for _ in range(count):
            status, _, _ = await asyncio.wait_for(read_response(reader), 5)
            statuses.append(status)
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False
        return statuses, closed
    finally:
        writer.close()


@pytest.mark.parametrize(("name", "raw", "expected", "reaches"), CASES, ids=[c[0] for c in CASES])
async def test_hostile_request(
    stack: Stack, name: str, raw: str, expected: list[int], reaches: bool | None
) -> None:
    host = f"a.localhost:{stack.port}"
    statuses, closed = await ask(stack, raw.replace(H, host).encode("latin-1"), len(expected))
    assert statuses == expected
    if expected[-1] >= 400 and expected[-1] != 404:
        assert closed, "a refused message ends the connection"
    if reaches is not None:
        assert bool(stack.upstream.seen) == reaches
    for _, target, headers, _ in stack.upstream.seen:
        assert target.startswith("/") and "admin" not in target
        assert headers["host"] == host


async def test_what_the_tenant_sees_of_an_absolute_target(stack: Stack) -> None:
    host = f"a.localhost:{stack.port}"
    raw = f"GET http://{host.upper()}/headers?x=1 HTTP/1.1\r\nHost: {host}\r\n\r\n"
    assert (await ask(stack, raw.encode(), 1))[0] == [200]
    assert stack.upstream.seen[0][:2] == ("GET", "/headers?x=1")


async def test_two_session_cookies_are_refused(stack: Stack) -> None:
    stack.route("p", public=False)
    token, _ = claims.mint_session(RING, "p", 0, 600)
    host = f"p.localhost:{stack.port}"
    one = f"GET / HTTP/1.1\r\nHost: {host}\r\nCookie: hoody_session={token}\r\n\r\n"
    assert (await ask(stack, one.encode(), 1))[0] == [200]
    # A sibling on the parent domain may have tossed in a cookie of the same name.
    two = (
        f"GET / HTTP/1.1\r\nHost: {host}\r\n"
        f"Cookie: hoody_session=forged; theme=x\r\nCookie: hoody_session={token}\r\n\r\n"
    )
    assert (await ask(stack, two.encode(), 1)) == ([400], True)


async def test_the_host_cache_holds_only_known_tenants(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        for i in range(300):
            writer.write(f"GET / HTTP/1.1\r\nHost: t{i}.localhost\r\n\r\n".encode())
            assert (await read_response(reader))[0] == 404
        writer.write(f"GET / HTTP/1.1\r\nHost: A.localhost:{stack.port}\r\n\r\n".encode())
        assert (await read_response(reader))[0] == 200
    finally:
        writer.close()
    assert len(stack.router.hosts) == 1


# What a tenant may answer, and what the client then gets.
RESPONSES: list[tuple[str, bytes, int | None, list[str], list[str]]] = [
    # (name, tenant's bytes, status the client gets (None: closed), headers it has, lacks)
    (
        "hop-by-hop and Connection-named headers are stripped",
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\n"
        b"Keep-Alive: timeout=5\r\nX-Fine: 1\r\nContent-Length: 2\r\n\r\nok",
        200,
        ["x-fine"],
        ["x-secret", "keep-alive"],
    ),
    (
        "Content-Length next to Transfer-Encoding is dropped",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        200,
        ["transfer-encoding"],
        ["content-length"],
    ),
    (
        "cookies for the parent domain and hoody's names are dropped",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: hoody_session=forged; Path=/\r\n"
        b"Set-Cookie: __Host-hoody_session=forged; Path=/; Secure\r\n"
        b"Set-Cookie: wide=1; Domain=localhost; Path=/\r\n"
        b"Set-Cookie: mine=1; Path=/; HttpOnly\r\nContent-Length: 2\r\n\r\nok",
        200,
        ["set-cookie"],
        [],
    ),
    ("a two-digit status", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", 502, [], []),
    ("a four-digit status", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", 502, [], []),
    (
        "a control char in a value",
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
        502,
        [],
        [],
    ),
    (
        "a bare CR in a value",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
        502,
        [],
        [],
    ),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", 502, [], []),
    ("not HTTP", b"SSH-2.0-OpenSSH\r\n\r\n", 502, [], []),
    (
        "two different lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        502,
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("name", "answer", "status", "has", "lacks"), RESPONSES, ids=[r[0] for r in RESPONSES]
)
async def test_hostile_response(
    stack: Stack, name: str, answer: bytes, status: int, has: list[str], lacks: list[str]
) -> None:
    stack.upstream.canned["x"] = answer
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(f"GET /canned/x HTTP/1.1\r\nHost: a.localhost:{stack.port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    assert int(lines[0].split(" ")[1]) == status
    names = [line.split(":", 1)[0].lower() for line in lines[1:] if line]
    for name_ in has:
        assert name_ in names
    for name_ in lacks:
        assert name_ not in names
    cookies = [line for line in lines if line.lower().startswith("set-cookie")]
    assert all("hoody" not in c and "Domain" not in c for c in cookies)
    if "set-cookie" in has:
        assert cookies == ["Set-Cookie: mine=1; Path=/; HttpOnly"]
