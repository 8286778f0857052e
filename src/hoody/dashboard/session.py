"""Dashboard logins: an admin token in, an HttpOnly SameSite=Strict cookie out.

The cookie holds a random secret; the database keeps only its sha256 (a stolen
database holds no live cookie), the session's CSRF token and the admin token the
session was made from, so revoking that token ends its sessions. Sessions live in the
database, so any control plane process of a fleet honours them.

State-changing requests need the CSRF token in `X-CSRF-Token` (the page gets it in a
meta tag) and, when the browser sends an Origin, the same origin: SameSite=Strict
already keeps the cookie off cross-site requests; the header makes it two locks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, or_, select

from hoody.control import auth
from hoody.control.db import DashboardSession, Token
from hoody.control.service import Fleet
from hoody.errors import Forbidden

__all__ = ["COOKIE", "Login", "Sessions"]

COOKIE = "hoody_session"
SESSION_TTL = 12 * 3600


@dataclass(frozen=True)
class Login:
    """A live session: its CSRF token and when it ends."""

    csrf: str
    expires_at: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    def __init__(self, fleet: Fleet, ttl: int = SESSION_TTL) -> None:
        self.fleet = fleet
        self.ttl = ttl

    def login(self, token: str) -> tuple[str, Login]:
        """(cookie secret, session) for an admin token.

        Unauthorized for an unknown, malformed or revoked token; Forbidden for any
        other scope (a project token sees only its own tenants, through the API)."""
        who = self.fleet.authenticate(f"Bearer {token.strip()}")
        if not who.is_admin:
            raise Forbidden(
                f"the dashboard shows the whole fleet and needs an admin token; this is a "
                f"{who.scope} token (`hoody token create --admin` makes an admin one)"
            )
        prefix, _ = auth.parse_token(f"Bearer {token.strip()}")
        secret = secrets.token_urlsafe(32)
        now = self.fleet.clock()
        session = Login(secrets.token_urlsafe(32), now + self.ttl)
        with self.fleet.store.write() as s:
            token_id = s.scalar(select(Token.id).where(Token.prefix == prefix))
            assert token_id is not None  # authenticate found it
            s.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
            s.add(
                DashboardSession(
                    id=_digest(secret),
                    csrf=session.csrf,
                    token_id=token_id,
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return secret, session

    def check(self, secret: str | None) -> Login | None:
        """The session behind a cookie; None when absent or expired, or when the token
        it was made from is revoked or expired."""
        if not secret or len(secret) > 100:
            return None
        now = self.fleet.clock()
        with self.fleet.store.read() as s:
            row = s.execute(
                select(DashboardSession.csrf, DashboardSession.expires_at)
                .join(Token, Token.id == DashboardSession.token_id)
                .where(
                    DashboardSession.id == _digest(secret),
                    ~Token.revoked,
                    or_(Token.expires_at.is_(None), Token.expires_at > now),
                )
            ).first()
        if row is None or row.expires_at < now:
            return None
        return Login(row.csrf, row.expires_at)

    def logout(self, secret: str | None) -> None:
        if secret and len(secret) <= 100:
            with self.fleet.store.write() as s:
                s.execute(delete(DashboardSession).where(DashboardSession.id == _digest(secret)))

    @staticmethod
    def csrf_ok(session: Login, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(session.csrf, sent or "")
