"""The router's HTTP machinery against a test upstream on loopback: keep-alive, streamed
bodies both ways, WebSockets, X-Forwarded-*, the pages, claims and sessions.

Routes are set on the RouteTable directly and claims are spent by a stub exchange;
tests/integration/test_router.py runs the same router against the real control plane
and real tenants.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import websockets

from hoody.router.proxy import COOKIE, Router
from tests.unit.router.conftest import Stack


async def test_keep_alive_both_sides(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(5):
            r = await http.get(stack.url(), headers=stack.host("a"))
            assert r.status_code == 200 and r.text == "hello"
    assert stack.upstream.connections == 1, "one pooled upstream connection for 5 requests"


async def test_forwarded_headers_and_the_session_cookie_stays_with_the_router(
    stack: Stack,
) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(
            stack.url("/headers"),
            headers={
                **stack.host("a"),
                "Cookie": f"theme=dark; {COOKIE}=secret",
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded_Proto": "https",
                "Forwarded": "for=203.0.113.9",
                "X-Real-IP": "203.0.113.9",
                "X-Custom": "hop",
                "Connection": "keep-alive, X-Custom",
            },
        )
    seen = r.json()["headers"]
    # The router is the edge: these come from the peer, never from the client.
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"a.localhost:{stack.port}"
    assert seen["forwarded"] == f'for=127.0.0.1;host="a.localhost:{stack.port}";proto=http'
    assert seen["host"] == f"a.localhost:{stack.port}"
    assert "x-forwarded_proto" not in seen and "x-custom" not in seen
    assert seen["cookie"] == "theme=dark", "the session cookie is not the tenant's"
    assert "connection" not in seen or seen["connection"] == "keep-alive"


async def test_request_and_response_bodies_are_streamed(stack: Stack) -> None:
    big = b"x" * (3 << 20)
    async with httpx.AsyncClient() as http:
        r = await http.post(stack.url("/echo"), headers=stack.host("a"), content=big)
        assert r.content == big

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"c{i};".encode()

        r = await http.post(stack.url("/echo"), headers=stack.host("a"), content=chunks())
        assert r.content == b"c0;c1;c2;"
        arrivals = []
        loop = asyncio.get_running_loop()
        async with http.stream("GET", stack.url("/stream"), headers=stack.host("a")) as r:
            async for line in r.aiter_lines():
                arrivals.append((line, loop.time()))
    assert [line for line, _ in arrivals] == ["part0", "part1", "part2"]
    assert arrivals[-1][1] - arrivals[0][1] > 0.3, "parts arrive as sent, not all at the end"


async def test_websockets_pass_through(stack: Stack) -> None:
    # The URI names the tenant; the socket goes to the router on loopback.
    uri = f"ws://a.localhost:{stack.port}/ws"
    async with websockets.connect(uri, host="127.0.0.1", port=stack.port) as ws:
        for text in ("hello", "again"):
            await ws.send(text)
            assert await ws.recv() == text


async def test_unknown_hosts_get_a_404_page(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        for host in ("nope.localhost", "a.example.com", "localhost", "-bad-.localhost"):
            r = await http.get(stack.url(), headers={"Host": host})
            assert r.status_code == 404 and "text/html" in r.headers["content-type"]
        r = await http.get(stack.url(), headers={"Host": "nope.localhost"})
        assert "no tenant nope" in r.text.lower()


async def test_a_stopped_tenant_gets_a_503_page_and_a_dead_one_a_502(stack: Stack) -> None:
    stack.route("b", state="stopped")
    stack.route("c", port=1)  # nothing listens there
    async with httpx.AsyncClient() as http:
        r = await http.get(stack.url(), headers=stack.host("b"))
        assert r.status_code == 503 and "stopped" in r.text
        r = await http.get(stack.url(), headers=stack.host("c"))
        assert r.status_code == 502


async def test_a_private_tenant_needs_a_session_from_a_claim(stack: Stack) -> None:
    stack.route("p", public=False)
    stack.route("q", public=False)
    async with httpx.AsyncClient() as http:
        r = await http.get(stack.url(), headers=stack.host("p"))
        assert r.status_code == 401 and "link your app gives you" in r.text
        r = await http.get(stack.url("/_hoody/claim?claim=bad"), headers=stack.host("p"))
        assert r.status_code == 401 and "expired" in r.text
        r = await http.get(stack.url("/_hoody/claim?claim=good"), headers=stack.host("p"))
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        for part in ("HttpOnly", "SameSite=Lax", "Path=/"):
            assert part in cookie
        assert "Domain" not in cookie and "Secure" not in cookie  # host-only, plain http
        session = cookie.split(";")[0]
        r = await http.get(stack.url(), headers={**stack.host("p"), "Cookie": session})
        assert r.status_code == 200 and r.text == "hello"
        r = await http.get(stack.url(), headers={**stack.host("q"), "Cookie": session})
        assert r.status_code == 401 and "belongs to container p" in r.text
        # Revoke: the route's generation moves on, the session is refused.
        stack.route("p", public=False, generation=1)
        r = await http.get(stack.url(), headers={**stack.host("p"), "Cookie": session})
        assert r.status_code == 401 and "revoked" in r.text
    assert stack.exchanged == [("p", "bad"), ("p", "good")]


async def test_bad_requests_get_a_400(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"NONSENSE\r\n\r\n")
    await writer.drain()
    assert (await reader.read(100)).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_tls_with_a_wildcard_certificate(stack: Stack, tmp_path: Path) -> None:
    from hoody.router import tls_context

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=*.localhost", "-addext", "subjectAltName=DNS:*.localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    secure = Router(stack.router.table, "localhost", stack.router.exchange, secure=True)
    server = await secure.start("127.0.0.1", 0, tls_context(cert, key))
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False  # the name is checked by the Host header route
    try:
        async with httpx.AsyncClient(verify=client_ctx) as http:
            r = await http.get(f"https://127.0.0.1:{port}/headers", headers={"Host": "a.localhost"})
            assert r.json()["headers"]["x-forwarded-proto"] == "https"
            # Under TLS the session cookie is __Host- prefixed: Secure, host-only, Path=/.
            stack.route("p", public=False)
            url = f"https://127.0.0.1:{port}"
            r = await http.get(url + "/_hoody/claim?claim=good", headers={"Host": "p.localhost"})
            cookie = r.headers["set-cookie"]
            assert cookie.startswith(f"__Host-{COOKIE}=") and "; Secure" in cookie
            assert "; Path=/" in cookie and "Domain" not in cookie
            session = cookie.split(";")[0]
            r = await http.get(url, headers={"Host": "p.localhost", "Cookie": session})
            assert r.status_code == 200
            # The plain name means nothing under TLS (a sibling could have set it).
            plain = session.replace("__Host-", "")
            r = await http.get(url, headers={"Host": "p.localhost", "Cookie": plain})
            assert r.status_code == 401
    finally:
        secure.close()
        server.close()


async def test_an_unknown_host_refreshes_the_table_once_before_a_404(stack: Stack) -> None:
    calls = []

    async def refresh() -> None:  # the control plane knows a tenant made a moment ago
        calls.append(1)
        stack.route("fresh")

    stack.router.refresh = refresh
    async with httpx.AsyncClient() as http:
        r = await http.get(stack.url(), headers=stack.host("fresh"))
        assert r.status_code == 200 and calls == [1]
        r = await http.get(stack.url(), headers=stack.host("fresh"))
        assert calls == [1], "a known tenant does not refresh"


async def test_a_tenant_the_table_has_as_creating_refreshes_before_a_503(stack: Stack) -> None:
    """The copy returned and the app redirected its customer before the router's next
    poll: the table still says creating, the control plane says running."""
    calls = []
    stack.route("new", state="creating")

    async def refresh() -> None:
        calls.append(1)
        if len(calls) == 1:
            stack.route("new")

    stack.router.refresh = refresh
    async with httpx.AsyncClient() as http:
        r = await http.get(stack.url(), headers=stack.host("new"))
        assert r.status_code == 200 and calls == [1]
        stack.route("slow", state="creating")  # still making: one refresh, then the 503
        r = await http.get(stack.url(), headers=stack.host("slow"))
        assert r.status_code == 503 and "creating" in r.text and calls == [1, 1]
