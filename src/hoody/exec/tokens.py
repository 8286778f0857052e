"""Invocation tokens: `hdx_<payload>.<signature>`, minted for each invocation.

A script gets one as env.HOODY_TOKEN. It acts as a project token of the script's own
project (never admin) and expires shortly after the invocation's wall-clock limit.
It is checked without a database row (HMAC-SHA256 with a key derived from the exec
key, see secrets.py), so minting one costs microseconds per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

from hoody.errors import Unauthorized

__all__ = ["PREFIX", "mint", "verify"]

PREFIX = "hdx_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(key: bytes, project: int, script: str, expires_at: float) -> str:
    payload = _b64(
        json.dumps(
            {"p": project, "s": script, "e": int(expires_at) + 1, "n": secrets.token_hex(6)},
            separators=(",", ":"),
        ).encode()
    )
    signature = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{PREFIX}{payload}.{signature}"


def verify(key: bytes, token: str, now: float) -> int:
    """The project id the token acts in; Unauthorized if forged, malformed or expired."""
    body = token[len(PREFIX) :] if token.startswith(PREFIX) else ""
    payload, _, signature = body.partition(".")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not payload or not hmac.compare_digest(signature.encode(), expected.encode()):
        raise Unauthorized("invalid invocation token; use the env.HOODY_TOKEN of this invocation")
    try:
        claims = json.loads(_unb64(payload))
        project, expires = int(claims["p"]), float(claims["e"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Unauthorized("malformed invocation token") from exc
    if now > expires:
        raise Unauthorized(
            "this invocation token expired; each invocation gets a fresh env.HOODY_TOKEN"
        )
    return project
