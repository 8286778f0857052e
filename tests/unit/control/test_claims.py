"""Container claims and sessions on the control plane, on SQLite and PostgreSQL.

Each refusal the issue names has its own test: expired, forged or tampered, A's claim
on B, a second use, A's session on B, a retired key. The router enforces sessions with
the same `hoody.claims.verify_session` the last tests call.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any

import pytest
from sqlalchemy import select

from hoody import claims
from hoody.agent.spec import TenantSpec
from hoody.control.claims import is_public
from hoody.control.db import ClaimKey, Container, Store
from hoody.control.service import Settings
from hoody.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from tests.control_support import World, make_world

TEMPLATE = "demo"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(store: Store, clock: Clock) -> World:
    return make_world(store, settings=Settings(router_url="http://localhost:8000"), clock=clock)


def two_containers(world: World) -> tuple[str, str]:
    a = world.fleet.copy(world.project, TEMPLATE)["id"]
    b = world.fleet.copy(world.project, TEMPLATE)["id"]
    return a, b


def claim_of(world: World, cid: str, ttl: int | None = None) -> dict[str, Any]:
    return world.fleet.authorize(world.who, cid, ttl)


def session_for(world: World, cid: str) -> dict[str, Any]:
    return world.fleet.exchange(world.admin, cid, claim_of(world, cid)["container_claim"])


def check_session(world: World, cid: str, token: str, now: float) -> claims.Session:
    table = world.fleet.route_table(world.admin)
    ring = claims.KeyRing(table["keys"], frozenset(table["retired"]), table["newest"])
    return claims.verify_session(ring, token, cid, table["routes"][cid]["generation"], now=now)


def test_authorize_returns_a_one_hour_claim_and_the_url_to_open(world: World, clock: Clock) -> None:
    a, _ = two_containers(world)
    out = claim_of(world, a)
    assert out["expires_at"] == int(clock.now) + 3600
    parts = urllib.parse.urlsplit(out["url"])
    assert parts.netloc == f"{a}.localhost:8000" and parts.path == "/_hoody/claim"
    assert urllib.parse.parse_qs(parts.query)["claim"] == [out["container_claim"]]
    assert claim_of(world, a, ttl=60)["expires_at"] == int(clock.now) + 60
    assert claim_of(world, a, ttl=10**6)["expires_at"] == int(clock.now) + 3600, "never longer"


def test_a_claim_is_exchanged_once_for_a_session(world: World, clock: Clock) -> None:
    a, _ = two_containers(world)
    token = claim_of(world, a)["container_claim"]
    session = world.fleet.exchange(world.admin, a, token)
    assert check_session(world, a, session["session"], clock.now).cid == a
    with pytest.raises(Unauthorized, match="already used"):
        world.fleet.exchange(world.admin, a, token)


def test_an_expired_claim_is_refused(world: World, clock: Clock) -> None:
    a, _ = two_containers(world)
    token = claim_of(world, a, ttl=30)["container_claim"]
    clock.now += 31
    with pytest.raises(Unauthorized, match="expired"):
        world.fleet.exchange(world.admin, a, token)


def _tamper(token: str, **changes: Any) -> str:
    head, body, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def test_a_forged_or_tampered_claim_is_refused(world: World) -> None:
    a, b = two_containers(world)
    token = claim_of(world, a)["container_claim"]
    with pytest.raises(Unauthorized, match="signature"):
        world.fleet.exchange(world.admin, b, _tamper(token, sub=b))
    with pytest.raises(Unauthorized, match="signature"):
        world.fleet.exchange(world.admin, a, _tamper(token, exp=4_000_000_000))
    kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))["kid"]
    _, private, public = claims.new_key()  # a key of our own under the fleet's kid
    forged = claims.mint_claim(claims.KeyRing({kid: public}, newest=kid, signer=private), a, 60)[0]
    with pytest.raises(Unauthorized, match="signature"):
        world.fleet.exchange(world.admin, a, forged)
    with pytest.raises(Unauthorized, match="malformed"):
        world.fleet.exchange(world.admin, a, "not.a.claim")


def test_tenant_a_claim_is_refused_on_tenant_b(world: World) -> None:
    a, b = two_containers(world)
    with pytest.raises(Unauthorized, match=f"for container {a}, not {b}"):
        world.fleet.exchange(world.admin, b, claim_of(world, a)["container_claim"])


def test_tenant_a_session_is_refused_on_tenant_b(world: World, clock: Clock) -> None:
    a, b = two_containers(world)
    session = session_for(world, a)["session"]
    with pytest.raises(Unauthorized, match=f"belongs to container {a}"):
        check_session(world, b, session, clock.now)


def test_a_claim_signed_with_a_retired_key_is_refused(world: World, clock: Clock) -> None:
    a, _ = two_containers(world)
    old_claim = claim_of(world, a)["container_claim"]
    old_session = session_for(world, a)["session"]
    old_kid = world.fleet.list_keys(world.admin)[0]["kid"]
    world.fleet.rotate_key(world.admin)
    clock.now += 1
    fresh = claim_of(world, a)["container_claim"]  # signed by the new key
    world.fleet.retire_key(world.admin, old_kid)
    with pytest.raises(Unauthorized, match=f"retired key {old_kid}"):
        world.fleet.exchange(world.admin, a, old_claim)
    with pytest.raises(Unauthorized, match="retired key"):
        check_session(world, a, old_session, clock.now)
    assert world.fleet.exchange(world.admin, a, fresh)["session"]


def test_revoke_ends_every_session_of_that_container_only(world: World, clock: Clock) -> None:
    a, b = two_containers(world)
    sa1, sa2, sb = session_for(world, a), session_for(world, a), session_for(world, b)
    out = world.fleet.revoke_claims(world.who, a)
    assert out["claims_generation"] == 1
    for s in (sa1, sa2):
        with pytest.raises(Unauthorized, match="revoked"):
            check_session(world, a, s["session"], clock.now)
    assert check_session(world, b, sb["session"], clock.now).cid == b
    assert check_session(world, a, session_for(world, a)["session"], clock.now).cid == a


def test_claims_are_scoped_to_the_project_and_the_router(world: World) -> None:
    a, _ = two_containers(world)
    other = world.fleet.create_project(world.admin, "other")["id"]
    token = world.fleet.create_token(world.admin, "project", project_id=other)["token"]
    intruder = world.fleet.authenticate(f"Bearer {token}")
    with pytest.raises(NotFound):
        world.fleet.authorize(intruder, a)
    with pytest.raises(NotFound):
        world.fleet.revoke_claims(intruder, a)
    with pytest.raises(Forbidden):  # only the router (or admin) spends claims
        world.fleet.exchange(world.who, a, claim_of(world, a)["container_claim"])
    with pytest.raises(Forbidden):
        world.fleet.route_table(world.who)


def test_a_router_token_reads_routes_and_spends_claims_and_nothing_else(world: World) -> None:
    a, _ = two_containers(world)
    token = world.fleet.create_token(world.admin, "router")["token"]
    router = world.fleet.authenticate(f"Bearer {token}")
    table = world.fleet.route_table(router)
    assert set(table["routes"]) >= {a}
    assert world.fleet.exchange(router, a, claim_of(world, a)["container_claim"])["session"]
    for call in (
        lambda: world.fleet.authorize(router, a),
        lambda: world.fleet.list_containers(router),
        lambda: world.fleet.rotate_key(router),
        lambda: world.fleet.create_token(router, "router"),
        lambda: world.fleet.list_nodes(router),
    ):
        with pytest.raises(Forbidden):
            call()


def test_the_route_table_holds_public_keys_only(world: World, clock: Clock) -> None:
    a, _ = two_containers(world)
    table = world.fleet.route_table(world.admin)
    with world.fleet.store.read() as s:
        secrets = {r.secret for r in s.scalars(select(ClaimKey))}
    assert secrets and not any(secret in json.dumps(table) for secret in secrets)
    ring = claims.KeyRing(table["keys"], frozenset(table["retired"]), table["newest"])
    with pytest.raises(InvalidInput, match="public keys only"):  # a router cannot mint
        claims.mint_session(ring, a, 0, 600)
    session = session_for(world, a)["session"]  # but it verifies what the fleet minted
    assert claims.verify_session(ring, session, a, 0, now=clock.now).cid == a


def test_bad_ttl_and_deleted_containers_are_refused(world: World) -> None:
    a, _ = two_containers(world)
    with pytest.raises(InvalidInput, match="ttl_seconds"):
        world.fleet.authorize(world.who, a, 0)
    world.fleet.delete_container(world.who, a)
    with pytest.raises(NotFound, match="deleted"):
        claim_of(world, a)


def test_the_route_table_reads_public_as_the_rest_of_the_fleet_does(world: World) -> None:
    """The table takes metadata.public from the database (SQLite and PostgreSQL give
    it as text differently); every value must mean what it means everywhere else."""
    values: list[Any] = [True, False, "true", "1", "yes", "no", 1, 0, None, "True", [1], {}]
    made = [
        (world.fleet.copy(world.project, TEMPLATE, TenantSpec(metadata={"public": v}))["id"], v)
        for v in values
    ]
    made.append((world.fleet.copy(world.project, TEMPLATE)["id"], "(absent)"))
    routes = world.fleet.route_table(world.admin)["routes"]
    with world.fleet.store.read() as s:
        rows = {row.id: row for row in s.scalars(select(Container))}
    assert [routes[cid]["public"] for cid, _ in made] == [is_public(rows[cid]) for cid, _ in made]
    assert [v for cid, v in made if routes[cid]["public"]] == [True, "true", "1", "yes", 1]


def test_route_table_follows_the_fleet(world: World) -> None:
    a, b = two_containers(world)
    routes = world.fleet.route_table(world.admin)["routes"]
    assert set(routes) == {a, b}
    assert routes[a]["upstream"].endswith(":8080") and routes[a]["public"] is False
    world.fleet.delete_container(world.who, a)
    assert set(world.fleet.route_table(world.admin)["routes"]) == {b}
