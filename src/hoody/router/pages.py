"""The pages the router answers with itself: small, self-contained HTML, no assets."""

from __future__ import annotations

import html

__all__ = ["response"]

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>{title}</title>"
    "<style>body{{font:17px system-ui;margin:4em auto;max-width:36em;color:#222}}"
    "small{{color:#777}}</style></head><body><h1>{title}</h1><p>{message}</p>"
    "<p><small>{status} {reason} · hoody router</small></p></body></html>"
)


def response(status: int, title: str, message: str, *, close: bool = False) -> bytes:
    """A whole HTTP/1.1 response carrying the page."""
    reason = _REASONS.get(status, "Error")
    body = _PAGE.format(
        title=html.escape(title), message=html.escape(message), status=status, reason=reason
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        f"X-Hoody-Router: {status}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body
