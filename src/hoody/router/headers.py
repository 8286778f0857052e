"""What crosses the edge, both ways: the request head a tenant gets and the response
head a client gets. Pure functions over parsed heads.

To the tenant:
  - Host is rebuilt as `<cid>.<domain>[:port]` (what the router routed on, never what
    the client spelled); an absolute-form target must name that same authority and is
    sent on in origin form.
  - X-Forwarded-For/-Proto/-Host, X-Real-IP and Forwarded are the router's, set from
    the connection's peer; whatever a client sent under those names, or any other
    X-Forwarded-*, is dropped, as are names with "_" (CGI-style servers read
    `X_Forwarded_For` as `X-Forwarded-For`; nginx drops them for the same reason).
  - hop-by-hop headers and the ones the client's Connection names are dropped; so is
    hoody's own session cookie.

To the client:
  - hop-by-hop headers and the ones the tenant's Connection names are dropped;
  - a Set-Cookie with a Domain attribute (a cookie for the tenant's siblings or the
    parent domain) or a hoody cookie name is dropped: tenants set host-only cookies.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from hoody.router.http import HOP_BY_HOP, BadMessage, Head

__all__ = [
    "Hosts",
    "client_response",
    "forwarded",
    "is_hoody_cookie",
    "origin_target",
    "split_cookies",
    "tenant_request",
]

# Never dropped because a Connection header named them: they frame the message. Nor
# looked up when named: hop-by-hop headers are dropped anyway ("keep-alive" is the
# usual token, so the usual request and answer compare no names).
_UNNAMED = frozenset({b"host", b"content-length", b"transfer-encoding"}) | HOP_BY_HOP
_SKIP_REQUEST = HOP_BY_HOP | {b"host", b"cookie", b"forwarded", b"x-real-ip"}
_PASSES: dict[bytes, bool] = {}  # request header name (as spelled) → goes to the tenant
# Response headers that make a client's head differ from the tenant's header lines.
_REWRITTEN = HOP_BY_HOP | {b"set-cookie"}
_HOST = re.compile(rb"^(\[[0-9a-f:.]+\]|[a-z0-9.-]{1,253})(?::([0-9]{1,5}))?$")
_LABEL = re.compile(rb"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class Hosts:
    """Host header values → (cid, the Host its tenant gets), parsed once.

    Only hosts of tenants the route table knows are remembered (`remember`), at most
    `limit` of them, least recently used first out, and only short spellings: a client
    cycling through made-up names cannot grow the router's memory.
    """

    def __init__(self, domain: str, limit: int = 4096) -> None:
        self.domain = domain.lower().strip(".").encode()
        self.limit = limit
        self._known: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def lookup(self, value: bytes) -> tuple[str | None, bytes]:
        """(cid or None when the name is not `<cid>.<domain>`, the rebuilt Host).
        Raises BadMessage (400) for a Host that is not `name[:port]`."""
        hit = self._known.get(value)
        if hit is not None:
            self._known.move_to_end(value)
            return hit
        m = _HOST.match(value.lower())
        if m is None:
            raise BadMessage("malformed Host header")
        name, port = m.group(1), m.group(2)
        suffix = b"." + self.domain
        label = name[: -len(suffix)] if name.endswith(suffix) else b""
        if not _LABEL.match(label):
            return None, value
        host = label + suffix + (b":" + port if port else b"")
        return label.decode(), host

    def remember(self, value: bytes, cid: str, host: bytes) -> None:
        if len(value) > 128 or value in self._known:
            return
        if len(self._known) >= self.limit:
            self._known.popitem(last=False)
        self._known[value] = (cid, host)


def origin_target(method: bytes, target: bytes, host: bytes) -> bytes:
    """The target in origin form. An absolute-form target (`http://host/path`) must
    name `host`, the authority the router routes on; raises BadMessage otherwise."""
    if target[:1] == b"/":
        return target
    if target == b"*" and method == b"OPTIONS":
        return target
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise BadMessage("request target is neither a path nor an http(s) URL")
    end = len(rest)
    for stop in (b"/", b"?"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority, tail = rest[:end], rest[end:]
    if authority.lower() != host.lower():
        raise BadMessage("the request target names another host than the Host header")
    return tail if tail[:1] == b"/" else b"/" + tail


def is_hoody_cookie(name: bytes) -> bool:
    """hoody's names: `hoody_*`, also behind a `__Host-`/`__Secure-` prefix."""
    low = name.strip().lower()
    for prefix in (b"__host-", b"__secure-"):
        if low.startswith(prefix):
            low = low[len(prefix) :]
    return low.startswith(b"hoody_")


def split_cookies(head: Head, name: bytes) -> tuple[list[bytes], bytes | None]:
    """(every value of cookie `name` in the request, the Cookie header without any of
    hoody's cookies, or None when nothing is left)."""
    found: list[bytes] = []
    rest: list[bytes] = []
    for key, value in head.headers:
        if len(key) != 6 or key.lower() != b"cookie":
            continue
        for part in value.split(b";"):
            part = part.strip()
            k, _, v = part.partition(b"=")
            if k.strip() == name:
                found.append(v.strip())
            elif part and not is_hoody_cookie(k):
                rest.append(part)
    return found, (b"; ".join(rest) if rest else None)


def _named(head: Head) -> frozenset[bytes]:
    if b"connection" not in head.fields:
        return frozenset()
    return frozenset(head.tokens(b"connection") - _UNNAMED)


def _passes(name: bytes) -> bool:
    low = name.lower()
    ok = not (low in _SKIP_REQUEST or b"_" in low or low.startswith(b"x-forwarded-"))
    if len(_PASSES) < 1024:  # header names as sent, remembered: most clients send few
        _PASSES[name] = ok
    return ok


def forwarded(host: bytes, client_ip: bytes, proto: bytes) -> bytes:
    """The router's forwarding header lines for a request from `client_ip` to `host`
    (a connection computes them once per host)."""
    node = b'"[' + client_ip + b']"' if b":" in client_ip else client_ip
    return b"\r\n".join(
        (
            b"X-Forwarded-For: " + client_ip,
            b"X-Forwarded-Proto: " + proto,
            b"X-Forwarded-Host: " + host,
            b"X-Real-IP: " + client_ip,
            b"Forwarded: for=" + node + b';host="' + host + b'";proto=' + proto,
        )
    )


def tenant_request(
    head: Head,
    target: bytes,
    host: bytes,
    forwarding: bytes,
    cookies: bytes | None,
    upgrade: bool,
) -> bytes:
    """The request head as the tenant gets it (see the module docstring); `forwarding`
    comes from `forwarded`."""
    lines = [head.start[0] + b" " + target + b" HTTP/1.1", b"Host: " + host]
    named = _named(head)
    passes = _PASSES
    for key, value in head.headers:
        ok = passes.get(key)
        if ok is None:
            ok = _passes(key)
        if ok and (not named or key.lower() not in named):
            lines.append(key + b": " + value)
    if cookies:
        lines.append(b"Cookie: " + cookies)
    lines.append(forwarding)
    if upgrade:
        lines.append(b"Connection: Upgrade")
        lines.append(b"Upgrade: " + (head.fields.get(b"upgrade") or b""))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _cookie_allowed(value: bytes) -> bool:
    name, _, rest = value.partition(b"=")
    if is_hoody_cookie(name):
        return False
    for attribute in rest.split(b";")[1:]:
        if attribute.split(b"=", 1)[0].strip().lower() == b"domain":
            return False
    return True


def client_response(response: Head, keep: bool | None) -> bytes:
    """The tenant's response head as the client gets it (see the module docstring).
    `keep` chooses the Connection header; None for interim (1xx) answers, which carry
    none, except a 101 that keeps its Upgrade."""
    if (
        keep is not None
        and response.lines is not None
        and response.fields.keys().isdisjoint(_REWRITTEN)  # also no Connection-named ones
    ):
        # Nothing to drop or filter: the tenant's checked lines go on as they came.
        return (
            b" ".join(response.start)
            + b"\r\n"
            + response.lines
            + (b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n")
        )
    lines = [b" ".join(response.start)]
    named = _named(response)
    for key, value in response.headers:
        low = key.lower()
        if low in HOP_BY_HOP or low in named:
            continue
        if low == b"set-cookie" and not _cookie_allowed(value):
            continue
        lines.append(key + b": " + value)
    if keep is None:
        if response.start[1] == b"101":
            lines.append(b"Connection: Upgrade")
            lines.append(b"Upgrade: " + (response.fields.get(b"upgrade") or b""))
        lines.append(b"\r\n")
    else:
        lines.append(b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n")
    return b"\r\n".join(lines)
