"""Tenants' response heads as the router reads them (`http.parse_response_head`,
`http.response_framing`) and passes them on (`headers.client_response`): each head
as raw bytes with what must come of it."""

from __future__ import annotations

import pytest

from hoody.router.headers import client_response, tenant_request
from hoody.router.http import CHUNKED, CLOSE, LENGTH, NONE, BadMessage, Head, parse_response_head
from hoody.router.http import response_framing as framing

BAD_HEADS = [
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 200 O\x01K\r\n\r\n",
    b"HTTP/1.1 200 OK\nX-A: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
]


@pytest.mark.parametrize("raw", BAD_HEADS)
def test_malformed_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(BadMessage) as caught:
        parse_response_head(raw)
    assert caught.value.status == 502


def test_a_head_is_read_with_values_trimmed_and_joined() -> None:
    head = parse_response_head(
        b"HTTP/1.1 200 Fine Thanks\r\nX-A:  a \t\r\nx-a: b\r\nContent-Length: 2\r\n\r\n"
    )
    assert head.start == [b"HTTP/1.1", b"200", b"Fine Thanks"]
    assert head.headers == [(b"X-A", b"a"), (b"x-a", b"b"), (b"Content-Length", b"2")]
    assert head.fields == {b"x-a": b"a, b", b"content-length": b"2"}
    assert framing(head, b"GET") == (LENGTH, 2)
    assert framing(head, b"HEAD") == (NONE, 0)


def test_a_head_without_a_reason_gets_its_space_back() -> None:
    head = parse_response_head(b"HTTP/1.1 204\r\n\r\n")
    assert client_response(head, True) == b"HTTP/1.1 204 \r\nConnection: keep-alive\r\n\r\n"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (b"Content-Length: 0\r\n", (NONE, 0)),
        (b"Content-Length: 5, 5\r\n", (LENGTH, 5)),
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", (LENGTH, 5)),
        (b"Transfer-Encoding: chunked\r\n", (CHUNKED, 0)),
        (b"Transfer-Encoding: gzip, chunked\r\n", (CHUNKED, 0)),
        (b"Transfer-Encoding: chunked, gzip\r\n", (CLOSE, 0)),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 9\r\n", (CHUNKED, 0)),
        (b"X-A: b\r\n", (CLOSE, 0)),
    ],
)
def test_body_framing(lines: bytes, expected: tuple[int, int]) -> None:
    head = parse_response_head(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
    assert framing(head, b"GET") == expected


@pytest.mark.parametrize(
    "lines",
    [
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5, 6\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: 1234567890123456\r\n",
    ],
)
def test_bad_lengths_are_refused(lines: bytes) -> None:
    head = parse_response_head(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
    with pytest.raises(BadMessage):
        framing(head, b"GET")


def test_plain_heads_pass_on_as_they_came() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A:  spaced \r\n"
    raw += b"Content-Length: 2\r\n\r\n"
    head = parse_response_head(raw)
    assert client_response(head, True) == raw[:-2] + b"Connection: keep-alive\r\n\r\n"
    assert client_response(head, False) == raw[:-2] + b"Connection: close\r\n\r\n"


@pytest.mark.parametrize(
    ("lines", "kept", "dropped"),
    [
        (
            b"Connection: X-Secret, keep-alive\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
            b"X-Fine: 1\r\n",
            [b"X-Fine: 1"],
            [b"X-Secret", b"Keep-Alive", b"Connection: X"],
        ),
        (
            b"Content-Length: 100\r\nTransfer-Encoding: chunked\r\n",
            [b"Transfer-Encoding: chunked"],
            [b"Content-Length"],
        ),
        (
            b"Set-Cookie: hoody_session=forged\r\nSet-Cookie: w=1; Domain=localhost\r\n"
            b"Set-Cookie: __Host-hoody_session=f; Secure\r\nSet-Cookie: mine=1; Path=/\r\n",
            [b"Set-Cookie: mine=1; Path=/"],
            [b"hoody", b"Domain"],
        ),
        (b"Upgrade: h2c\r\nTE: trailers\r\nTrailer: x\r\n", [], [b"Upgrade", b"TE", b"Trailer"]),
        (b"Proxy-Connection: keep-alive\r\n", [], [b"Proxy-Connection"]),
    ],
)
def test_what_the_router_drops(lines: bytes, kept: list[bytes], dropped: list[bytes]) -> None:
    head = parse_response_head(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
    out = client_response(head, True)
    assert out.endswith(b"\r\nConnection: keep-alive\r\n\r\n")
    for line in kept:
        assert b"\r\n" + line + b"\r\n" in out
    for text in dropped:
        assert text not in out


@pytest.mark.parametrize(
    ("connection", "dropped"),
    [
        (b"keep-alive", []),
        (b"keep-alive, X-Secret", [b"X-Secret"]),
        (b"close, x-secret, Host, Content-Length", [b"X-Secret"]),
    ],
)
def test_what_a_tenant_gets_of_a_request(connection: bytes, dropped: list[bytes]) -> None:
    head = Head(
        [b"GET", b"/", b"HTTP/1.1"],
        [
            (b"Host", b"evil"),
            (b"Connection", connection),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Secret", b"s"),
            (b"X-Fine", b"1"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"X_Forwarded_For", b"1.2.3.4"),
        ],
        {},
    )
    head.fields = {name.lower(): value for name, value in head.headers}
    out = tenant_request(head, b"/", b"a.localhost", b"X-Forwarded-For: 10.0.0.1", None, False)
    lines = out.split(b"\r\n")
    assert lines[:2] == [b"GET / HTTP/1.1", b"Host: a.localhost"]
    assert b"X-Fine: 1" in lines and b"X-Forwarded-For: 10.0.0.1" in lines
    for gone in [b"Connection", b"Keep-Alive", b"X_Forwarded_For", b"1.2.3.4", *dropped]:
        assert gone not in out
    if not dropped:
        assert b"X-Secret: s" in lines
