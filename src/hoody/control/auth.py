"""API tokens: minted once, shown once, stored as sha256.

A token reads `hdy_<prefix>_<secret>`. The prefix (10 characters) is stored in the
clear and finds the row; the whole token is compared by its sha256 in constant time.
The secret has 256 bits of entropy, so a fast hash is enough: there is nothing to
brute-force the way a password can be.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from hoody.errors import Forbidden, Unauthorized

__all__ = ["SCOPES", "Principal", "Scope", "hash_token", "mint_token", "parse_token"]

Scope = Literal["admin", "project", "join", "node", "router"]
SCOPES: tuple[Scope, ...] = ("admin", "project", "join", "node", "router")
_ONLY = {
    "join": "a join token may only join new nodes",
    "node": "a node token may only rejoin its node and send its heartbeats",
    "router": "a router token may only read the route table, spend claims, wake "
    "sleeping tenants and report their activity",
}

_TOKEN = re.compile(r"^hdy_([a-z0-9]{10})_([A-Za-z0-9_-]{20,100})$")
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def mint_token() -> tuple[str, str]:
    """A new (token, prefix)."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(10))
    return f"hdy_{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_token(header: str | None) -> tuple[str, str]:
    """(prefix, token) from an `Authorization: Bearer …` header; Unauthorized if absent
    or malformed."""
    if not header:
        raise Unauthorized(
            "no API token; pass `Authorization: Bearer <token>` "
            "(`hoody login URL --token T` saves one for the CLI)"
        )
    scheme, _, token = header.partition(" ")
    match = _TOKEN.match(token.strip()) if scheme.lower() == "bearer" else None
    if match is None:
        raise Unauthorized(
            "malformed API token; expected `Authorization: Bearer hdy_<prefix>_<secret>`"
        )
    return match.group(1), token.strip()


def matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


@dataclass(frozen=True)
class Principal:
    """Who is calling. `project_id` is set for project tokens, `node` for node tokens."""

    scope: Scope
    project_id: int | None = None
    node: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this needs an admin token; `hoody token create --admin` makes one")

    def require_router(self) -> None:
        """The router's calls (route table, claim exchange, activity reports): router or
        admin tokens."""
        if self.scope not in ("router", "admin"):
            raise Forbidden(
                "this is the router's call; run routers with a router token "
                "(`hoody token create --router`)"
            )

    def project_for(self, requested: int | None) -> int:
        """The project a project-scoped call acts in.

        Project tokens act in their own project (naming another is Forbidden); admin
        tokens must name one. Join and node tokens may not act on projects at all.
        """
        if self.scope == "project":
            assert self.project_id is not None
            if requested is not None and requested != self.project_id:
                raise Forbidden(f"this token belongs to project {self.project_id}, not {requested}")
            return self.project_id
        if self.scope == "admin":
            if requested is None:
                raise Forbidden(
                    "an admin token acts on behalf of a project here; give `project` "
                    "(its id), or use that project's token"
                )
            return requested
        raise Forbidden(_ONLY[self.scope])

    def project_filter(self) -> int | None:
        """For reads: the project the caller is confined to, None for admin (all)."""
        if self.scope == "admin":
            return None
        if self.scope == "project":
            assert self.project_id is not None
            return self.project_id
        raise Forbidden(_ONLY[self.scope])
