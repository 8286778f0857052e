"""Claims, sessions and the router's view of the fleet (the `Claims` area of Fleet).

    authorize   project token → a one-hour claim for one container and the URL to open
    revoke      project token → every session of that container ends
    exchange    router (router token) → a claim becomes a session, once
    route_table router (router token) → where each tenant lives, who may see it, and
                the public keys sessions are verified with (never a private key)

Single use is a primary key (`claim_uses.jti`), revocation a counter on the container
row that sessions carry; both hold across control plane processes.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from hoody import claims
from hoody.agent.client import wake_token
from hoody.control.auth import Principal
from hoody.control.base import FleetBase
from hoody.control.db import ClaimKey, ClaimUse, Container, Node
from hoody.errors import InvalidInput, NotFound, Unauthorized

__all__ = ["CLAIM_PATH", "Claims", "tenant_url"]

CLAIM_PATH = "/_hoody/claim"
# Containers the router serves: they have, or are about to have, an address.
_ROUTED = ("creating", "running", "sleeping", "stopped", "failed")


def tenant_url(router_url: str, cid: str) -> str:
    """`http://localhost:8000` + cid → `http://<cid>.localhost:8000/`."""
    parts = urllib.parse.urlsplit(router_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"router url {router_url!r} is invalid; give one like http://localhost:8000"
        )
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{cid}.{parts.hostname}{port}/"


def _active(row: ClaimKey) -> bool:
    """Signs and verifies: not retired, and an Ed25519 pair (keys from before 0400 held
    an HMAC secret a router would have needed; that migration retired them)."""
    return row.retired_at is None and bool(row.public_key)


def is_public(row: Container) -> bool:
    return _public(row.meta)


_PUBLIC = (True, "true", "1", "yes")
# metadata.public as the database gives it as text: true and 1 read "1" in SQLite,
# "true" and "1" in PostgreSQL.
_PUBLIC_TEXT = ("true", "1", "yes")


def _public(meta: dict[str, Any] | None) -> bool:
    return (meta or {}).get("public") in _PUBLIC


class Claims(FleetBase):
    # --- keys -----------------------------------------------------------------------

    def _ring(self) -> claims.KeyRing:
        """The key ring, creating the first key on first use."""
        with self.store.read() as s:
            rows = list(s.scalars(select(ClaimKey)))
        if not any(_active(r) for r in rows):
            self.rotate_key(Principal(scope="admin"))
            with self.store.read() as s:
                rows = list(s.scalars(select(ClaimKey)))
        active = [r for r in rows if _active(r)]
        newest = max(active, key=lambda r: (r.created_at, r.kid))
        return claims.KeyRing(
            keys={r.kid: r.public_key for r in active if r.public_key},
            retired=frozenset(r.kid for r in rows if not _active(r)),
            newest=newest.kid,
            signer=newest.secret,
        )

    def rotate_key(self, who: Principal) -> dict[str, Any]:
        """A new signing key; older keys keep verifying until retired."""
        who.require_admin()
        kid, private, public = claims.new_key()
        with self.store.write() as s:
            # Strictly after the newest key, whatever the clock says: "newest signs".
            latest = s.scalar(select(func.max(ClaimKey.created_at))) or 0.0
            created = max(self.clock(), latest + 0.001)
            s.add(ClaimKey(kid=kid, secret=private, public_key=public, created_at=created))
        return {"kid": kid, "public_key": public, "created_at": created, "retired_at": None}

    def retire_key(self, who: Principal, kid: str) -> dict[str, Any]:
        """Retire `kid`: the claims and sessions it signed are refused from now on."""
        who.require_admin()
        with self.store.write() as s:
            row = s.get(ClaimKey, kid) if isinstance(kid, str) else None
            if row is None:
                raise NotFound(f"claim key {kid!r} does not exist; `hoody claims keys` lists them")
            if row.retired_at is None:
                row.retired_at = self.clock()
            return {"kid": row.kid, "retired_at": row.retired_at}

    def list_keys(self, who: Principal) -> list[dict[str, Any]]:
        who.require_admin()
        with self.store.read() as s:
            rows = s.scalars(select(ClaimKey).order_by(ClaimKey.created_at))
            return [
                {
                    "kid": r.kid,
                    "public_key": r.public_key,
                    "created_at": r.created_at,
                    "retired_at": r.retired_at,
                }
                for r in rows
            ]

    # --- claims ---------------------------------------------------------------------

    def authorize(self, who: Principal, cid: str, ttl: int | None = None) -> dict[str, Any]:
        """A claim for container `cid` and the URL that exchanges it for a session."""
        project = who.project_filter()
        limit = self.settings.claim_ttl
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
            raise InvalidInput(f"ttl_seconds {ttl!r} is invalid; give whole seconds >= 1")
        ttl = min(ttl or limit, limit)
        with self.store.read() as s:
            row = self._find(s, project, cid)
            if row.state in ("deleted", "deleting"):
                raise NotFound(f"container {cid} was deleted")
            base = self._tenant_url(row)
        token, claim = claims.mint_claim(self._ring(), cid, ttl, now=self.clock())
        query = urllib.parse.urlencode({"claim": token})
        # Without a router or public domain the URL would be the tenant's address on
        # its node, which is the operator's to know (as in ProjectContainerOut).
        routed = self.settings.router_url or self.settings.public_domain
        return {
            "container_claim": token,
            "expires_at": claim.expires_at,
            "url": f"{base.rstrip('/')}{CLAIM_PATH}?{query}" if routed or who.is_admin else "",
        }

    def revoke_claims(self, who: Principal, cid: str) -> dict[str, Any]:
        """End every session of `cid` (the router drops them within a second)."""
        project = who.project_filter()
        with self.store.write() as s:
            row = self._find(s, project, cid)
            row.claims_gen += 1
            return {"id": cid, "claims_generation": row.claims_gen}

    def exchange(self, who: Principal, cid: str, token: str) -> dict[str, Any]:
        """Spend a claim for `cid` once; returns a session for the router to set."""
        who.require_router()
        now = self.clock()
        claim = claims.verify_claim(self._ring(), token, cid, now=now)
        with self.store.read() as s:
            row = self._find(s, None, cid)
            if row.state in ("deleted", "deleting"):
                raise NotFound(f"container {cid} was deleted")
            generation = row.claims_gen
        try:
            with self.store.write() as s:
                s.add(ClaimUse(jti=claim.jti, container_id=cid, expires_at=claim.expires_at))
        except IntegrityError as exc:
            raise Unauthorized(
                "this container claim was already used; ask the app for a new link"
            ) from exc
        ttl = self.settings.session_ttl
        session, info = claims.mint_session(self._ring(), cid, generation, ttl, now=now)
        return {"session": session, "expires_at": info.expires_at, "max_age": int(ttl)}

    def forget_used_claims(self) -> int:
        """Drop records of claims past their expiry (they can no longer be replayed)."""
        with self.store.write() as s:
            old = list(s.scalars(select(ClaimUse).where(ClaimUse.expires_at < time.time())))
            for row in old:
                s.delete(row)
            return len(old)

    # --- the router's table -----------------------------------------------------------

    def route_table(self, who: Principal) -> dict[str, Any]:
        """Every routed container's upstream, state, visibility and claim generation,
        each node's agent address and wake token, and the active public keys the router
        verifies sessions with."""
        who.require_router()
        ring = self._ring()
        # The columns alone, not whole rows: routers ask twice a second, and loading
        # 1,000 full rows (every JSON column decoded) took 85 ms of the control
        # plane's CPU per ask. Of the metadata only `public`, read by the database.
        columns = (
            Container.id,
            Container.ip,
            Container.port,
            Container.node,
            Container.state,
            Container.meta["public"].as_string(),
            Container.claims_gen,
        )
        with self.store.read() as s:
            rows = s.execute(select(*columns).where(Container.state.in_(_ROUTED)))
            routes = {
                cid: {
                    "upstream": f"{ip}:{port}" if ip else "",
                    "node": node,
                    "state": state,
                    "public": public in _PUBLIC_TEXT,
                    "generation": gen,
                }
                for cid, ip, port, node, state, public, gen in rows
            }
            # Each node's agent and wake-only token: a router wakes a sleeping tenant
            # at its node, without a detour through here on the customer's request.
            nodes = {
                name: {"agent": url, "wake": wake_token(token)}
                for name, url, token in s.execute(select(Node.name, Node.url, Node.agent_token))
            }
        return {
            "routes": routes,
            "nodes": nodes,
            "keys": ring.keys,
            "retired": sorted(ring.retired),
            "newest": ring.newest,
        }

    def _tenant_url(self, row: Container) -> str:
        if self.settings.router_url:
            return tenant_url(self.settings.router_url, row.id)
        return row.url
