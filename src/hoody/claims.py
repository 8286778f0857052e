"""Container claims and tenant sessions: signed, scoped to one container, short-lived.

A *claim* is what `POST /api/v1/containers/{cid}/authorize` mints for the SaaS app:
a JWT (EdDSA: Ed25519) whose header names the key that signed it (`kid`), bound to one
container (`sub`), valid for at most an hour, with a unique `jti` so the control plane
can refuse a second use. The router exchanges it once for a *session*: another JWT,
with audience "hoody-session", carried in an HttpOnly cookie on that tenant's host,
which also records the container's claim generation so one revoke ends every session.

Keys rotate: new tokens are signed by the newest active key; a retired key verifies
nothing, so retiring a key ends the claims and sessions it signed.

Keys are Ed25519 pairs so that routers, which verify sessions on every request, hold
only public keys: a router (or whoever reads its route table) can check a session but
cannot mint one. Only the control plane's `KeyRing` carries the newest private key.

Pure functions over a `KeyRing`; storage of keys and used jtis is the control plane's.
"""

from __future__ import annotations

import base64
import functools
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

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
_ALGORITHM = "EdDSA"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _raw(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> tuple[str, str, str]:
    """A fresh (kid, private key, public key): an Ed25519 pair, each half its raw 32
    bytes in unpadded base64url."""
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "k" + secrets.token_hex(6), _b64(raw_private), _b64(raw_public)


@functools.lru_cache(maxsize=64)
def _public(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_raw(text))


@functools.lru_cache(maxsize=8)
def _private(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_raw(text))


@dataclass(frozen=True)
class KeyRing:
    """Active public keys by kid, the kids that were retired (kept for messages), and
    the newest key's private half where tokens are minted (the control plane only;
    None on routers)."""

    keys: dict[str, str]
    retired: frozenset[str] = field(default_factory=frozenset)
    newest: str | None = None
    signer: str | None = field(default=None, repr=False)

    def signing(self) -> tuple[str, Ed25519PrivateKey]:
        kid = self.newest or (max(self.keys) if self.keys else None)
        if kid is None or kid not in self.keys:
            raise InvalidInput("no active claim key; run `hoody claims rotate` to create one")
        if self.signer is None:
            raise InvalidInput(
                "this key ring holds public keys only; claims and sessions are minted by "
                "the control plane"
            )
        return kid, _private(self.signer)

    def public(self) -> KeyRing:
        """The same ring without its private key (what a router gets)."""
        return KeyRing(dict(self.keys), self.retired, self.newest)

    def key_for(self, token: str, what: str) -> Ed25519PublicKey:
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
        public = self.keys.get(kid)
        if public is None:
            raise Unauthorized(f"{what} was signed with unknown key {kid}; it is not ours")
        try:
            return _public(public)
        except ValueError as exc:
            raise Unauthorized(f"{what} names key {kid}, which is not an Ed25519 key") from exc


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
    kid, private = ring.signing()
    return jwt.encode(payload, private, algorithm=_ALGORITHM, headers={"kid": kid})


def _decode(token: str, ring: KeyRing, audience: str, what: str, now: float) -> dict[str, Any]:
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise Unauthorized(f"{what} is missing or malformed; ask the app for a new one")
    key = ring.key_for(token, what)
    try:
        # exp is checked here against `now`, not by PyJWT against the wall clock, so
        # tests and callers share one notion of time.
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
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
