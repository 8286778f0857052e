"""Container claims and tenant sessions: signed, scoped to one container, short-lived.

A *claim* is what `POST /api/v1/containers/{cid}/authorize` mints for the SaaS app:
a JWT (HS256) whose header names the key that signed it (`kid`), bound to one
container (`sub`), valid for at most an hour, with a unique `jti` so the control plane
can refuse a second use. The router exchanges it once for a *session*: another JWT,
with audience "hoody-session", carried in an HttpOnly cookie on that tenant's host,
which also records the container's claim generation so one revoke ends every session.

Keys rotate: new tokens are signed by the newest active key; a retired key verifies
nothing, so retiring a key ends the claims and sessions it signed.

Pure functions over a `KeyRing`; storage of keys and used jtis is the control plane's.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt

from hoody.errors import InvalidInput, Unauthorized

__all__ = [
    "CLAIM_AUDIENCE",
    "MAX_TTL",
    "SESSION_AUDIENCE",
    "Claim",
    "KeyRing",
    "Session",
    "mint_claim",
    "mint_session",
    "new_key",
    "verify_claim",
    "verify_session",
]

CLAIM_AUDIENCE = "hoody-claim"
SESSION_AUDIENCE = "hoody-session"
MAX_TTL = 3600
_ALGORITHM = "HS256"


def new_key() -> tuple[str, str]:
    """A fresh (kid, secret) pair: 256 random bits, URL-safe."""
    return "k" + secrets.token_hex(6), secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyRing:
    """Active signing keys by kid, plus the kids that were retired (kept for messages)."""

    keys: dict[str, str]
    retired: frozenset[str] = field(default_factory=frozenset)
    newest: str | None = None

    def signing(self) -> tuple[str, str]:
        kid = self.newest or (max(self.keys) if self.keys else None)
        if kid is None or kid not in self.keys:
            raise InvalidInput("no active claim key; run `hoody claims rotate` to create one")
        return kid, self.keys[kid]

    def secret_for(self, token: str, what: str) -> str:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"{what} is malformed; ask the app for a new one") from exc
        if not isinstance(kid, str) or not kid:
            raise Unauthorized(f"{what} names no signing key; ask the app for a new one")
        if kid in self.retired:
            raise Unauthorized(
                f"{what} was signed with retired key {kid}; ask the app for a new one"
            )
        secret = self.keys.get(kid)
        if secret is None:
            raise Unauthorized(f"{what} was signed with unknown key {kid}; it is not ours")
        return secret


@dataclass(frozen=True)
class Claim:
    cid: str
    jti: str
    expires_at: float


@dataclass(frozen=True)
class Session:
    cid: str
    generation: int
    expires_at: float


def _encode(payload: dict[str, Any], ring: KeyRing) -> str:
    kid, secret = ring.signing()
    return jwt.encode(payload, secret, algorithm=_ALGORITHM, headers={"kid": kid})


def _decode(token: str, ring: KeyRing, audience: str, what: str, now: float) -> dict[str, Any]:
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise Unauthorized(f"{what} is missing or malformed; ask the app for a new one")
    secret = ring.secret_for(token, what)
    try:
        # exp is checked here against `now`, not by PyJWT against the wall clock, so
        # tests and callers share one notion of time.
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience=audience,
            options={"verify_exp": False, "verify_iat": False, "require": ["exp", "sub", "aud"]},
        )
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized(f"{what} has a bad signature (forged or altered)") from exc
    except jwt.InvalidAudienceError as exc:
        raise Unauthorized(f"{what} is not a {audience.removeprefix('hoody-')}") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"{what} is malformed ({exc}); ask the app for a new one") from exc
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= now:
        raise Unauthorized(f"{what} has expired; ask the app for a new one")
    return claims


def mint_claim(ring: KeyRing, cid: str, ttl: float, now: float | None = None) -> tuple[str, Claim]:
    """A claim for `cid` valid `ttl` seconds (1 .. MAX_TTL)."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= MAX_TTL:
        raise InvalidInput(f"claim ttl {ttl!r} is invalid; give seconds between 1 and {MAX_TTL}")
    now = time.time() if now is None else now
    claim = Claim(cid=cid, jti=uuid.uuid4().hex, expires_at=int(now + ttl))
    token = _encode(
        {
            "sub": cid,
            "aud": CLAIM_AUDIENCE,
            "jti": claim.jti,
            "iat": int(now),
            "exp": claim.expires_at,
        },
        ring,
    )
    return token, claim


def verify_claim(ring: KeyRing, token: str, cid: str, now: float | None = None) -> Claim:
    """The claim if it is genuine, unexpired and for `cid`; Unauthorized otherwise.
    Single use is the caller's to enforce (with the returned jti)."""
    now = time.time() if now is None else now
    claims = _decode(token, ring, CLAIM_AUDIENCE, "the container claim", now)
    if claims["sub"] != cid:
        raise Unauthorized(
            f"the container claim is for container {claims['sub']}, not {cid}; "
            "open the URL the app gave for this container"
        )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise Unauthorized("the container claim has no id; ask the app for a new one")
    return Claim(cid=cid, jti=jti, expires_at=float(claims["exp"]))


def mint_session(
    ring: KeyRing, cid: str, generation: int, ttl: float, now: float | None = None
) -> tuple[str, Session]:
    now = time.time() if now is None else now
    session = Session(cid=cid, generation=generation, expires_at=int(now + ttl))
    token = _encode(
        {"sub": cid, "aud": SESSION_AUDIENCE, "gen": generation, "exp": session.expires_at},
        ring,
    )
    return token, session


def verify_session(
    ring: KeyRing, token: str, cid: str, generation: int, now: float | None = None
) -> Session:
    """The session if genuine, unexpired, for `cid` and not revoked since it was made."""
    now = time.time() if now is None else now
    claims = _decode(token, ring, SESSION_AUDIENCE, "the session", now)
    if claims["sub"] != cid:
        raise Unauthorized(f"the session belongs to container {claims['sub']}, not {cid}")
    if claims.get("gen") != generation:
        raise Unauthorized("the session was revoked; open a new link from the app")
    return Session(cid=cid, generation=generation, expires_at=float(claims["exp"]))
