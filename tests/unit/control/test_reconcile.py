"""Every state a row can be in has a way out: the reconcile loop and the copy's undo."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from hoody.agent.spec import TenantSpec
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.containers import Reservation, _request_hash
from hoody.control.db import Container, IdempotencyKey, Store
from hoody.control.service import Settings
from hoody.errors import Conflict, Forbidden, HostError
from tests.control_support import World, make_world


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
    settings = Settings(creating_deadline=60, orphan_grace=300)
    return make_world(store, {"n1": {}}, settings=settings, clock=clock)


def row(w: World, cid: str) -> Container | None:
    with w.store.read() as s:
        return s.scalar(select(Container).where(Container.id == cid))


def left_creating(w: World, name: str, key: str | None = None) -> str:
    """A copy whose process died after reserving (and, maybe, after the node made it)."""
    spec = TenantSpec(name=name)
    if key is not None:
        digest = _request_hash("demo", spec)
        with w.store.write() as s:
            s.add(
                IdempotencyKey(project_id=w.project, key=key, request_hash=digest, state="pending")
            )
    return w.fleet.reserve(w.project, "demo", spec, key).cid


def test_left_creating_and_made_on_the_node_is_adopted(world: World, clock: Clock) -> None:
    cid = left_creating(world, "kept", key="evt_1")
    world.agents["n1"].client().copy("demo", TenantSpec(name=cid))
    assert world.fleet.reconcile_once().adopted == [], "not before the deadline"
    clock.now += 61
    report = world.fleet.reconcile_once()
    assert report.adopted == [cid] and report.orphans == []
    got = row(world, cid)
    assert got is not None and got.state == "running" and got.ip and got.node == "n1"
    # The key now answers with the adopted container.
    again = world.fleet.copy(
        world.project, "demo", TenantSpec(name="kept"), idempotency_key="evt_1"
    )
    assert again["id"] == cid and again["state"] == "running"


def test_left_creating_and_not_on_the_node_fails_and_frees_its_capacity(
    world: World, clock: Clock
) -> None:
    cid = left_creating(world, "lost", key="evt_2")
    assert world.fleet.list_nodes(world.admin)[0]["containers"] == 1
    clock.now += 61
    assert world.fleet.reconcile_once().failed == [cid]
    got = row(world, cid)
    assert got is not None and got.state == "failed" and got.node == ""
    assert world.fleet.list_nodes(world.admin)[0]["containers"] == 0
    # The key was released: a retry makes a new container; the failed one deletes.
    retry = world.fleet.copy(world.project, "demo", idempotency_key="evt_2")
    assert retry["state"] == "running" and retry["id"] != cid
    assert world.fleet.delete_container(world.who, cid)["existed"] is True


def test_a_copy_in_flight_in_this_process_is_left_alone(world: World, clock: Clock) -> None:
    cid = left_creating(world, "slow")
    world.fleet._in_flight.add(cid)
    clock.now += 600
    assert world.fleet.reconcile_once().failed == []
    assert (got := row(world, cid)) is not None and got.state == "creating"


def test_a_tenant_still_being_made_by_its_node_is_waited_for(world: World, clock: Clock) -> None:
    cid = left_creating(world, "making")
    world.agents["n1"].client().copy("demo", TenantSpec(name=cid))
    world.agents["n1"].set_state(cid, "creating")
    clock.now += 61
    report = world.fleet.reconcile_once()
    assert report.adopted == report.failed == report.orphans == []
    world.agents["n1"].set_state(cid, "running")
    assert world.fleet.reconcile_once().adopted == [cid]


def test_left_deleting_is_retried_until_the_node_confirms(world: World) -> None:
    c = world.fleet.copy(world.project, "demo")
    agent = world.agents["n1"]
    agent.down = True
    with pytest.raises(HostError, match="retry the delete"):
        world.fleet.delete_container(world.who, c["id"])
    assert (got := row(world, c["id"])) is not None and got.state == "deleting"
    assert world.fleet.reconcile_once().deleted == []  # node still unreachable
    agent.down = False
    assert world.fleet.reconcile_once().deleted == [c["id"]]
    assert (got := row(world, c["id"])) is not None and got.state == "deleted"
    assert c["id"] not in agent.tenants


def test_an_orphan_is_reported_then_removed_after_the_grace(world: World, clock: Clock) -> None:
    agent = world.agents["n1"]
    agent.client().copy("demo", TenantSpec(name="stray"))
    first_seen = clock.now
    # Once could be a delete that finished between the node's list and the rows.
    assert world.fleet.reconcile_once().orphans == []
    clock.now += 10
    assert world.fleet.reconcile_once().orphans == ["stray"]
    listed = world.fleet.list_orphans(world.admin)
    assert [(o["node"], o["tenant"]) for o in listed] == [("n1", "stray")]
    assert listed[0]["remove_at"] == first_seen + 300
    clock.now += 289
    assert world.fleet.reconcile_once().removed == []
    assert "stray" in agent.tenants, "never before the grace period ends"
    clock.now += 2
    assert world.fleet.reconcile_once().removed == ["stray"]
    assert "stray" not in agent.tenants
    assert world.fleet.list_orphans(world.admin) == []
    with pytest.raises(Forbidden):
        world.fleet.list_orphans(world.who)


def test_orphans_are_kept_without_a_grace(store: Store, clock: Clock) -> None:
    w = make_world(store, {"n1": {}}, settings=Settings(orphan_grace=None), clock=clock)
    w.agents["n1"].client().copy("demo", TenantSpec(name="stray"))
    w.fleet.reconcile_once()
    w.fleet.reconcile_once()
    clock.now += 10**7
    assert w.fleet.reconcile_once().removed == []
    assert w.fleet.list_orphans(w.admin)[0]["remove_at"] is None


def test_an_orphan_that_gets_its_row_is_forgotten(world: World) -> None:
    cid = left_creating(world, "racing")  # a copy in flight: its row exists first
    world.agents["n1"].client().copy("demo", TenantSpec(name=cid))
    assert world.fleet.reconcile_once().orphans == []
    assert world.fleet.reconcile_once().orphans == []


def test_finish_conflict_after_the_node_made_it_leaves_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a Conflict in finish() left a running tenant with no row."""

    def conflict(*args: Any) -> Any:
        raise Conflict("container vanished while being created; retry the copy")

    monkeypatch.setattr(world.fleet, "finish", conflict)
    with pytest.raises(Conflict):
        world.fleet.copy(world.project, "demo", TenantSpec(name="gone"), idempotency_key="evt_9")
    assert world.agents["n1"].tenants == {}
    assert row(world, "gone") is None
    with world.store.read() as s:
        assert s.scalar(select(IdempotencyKey)) is None


def test_undo_that_cannot_reach_the_node_leaves_the_row_deleting(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = world.agents["n1"]

    def conflict(*args: Any) -> Any:
        agent.down = True  # the node goes away before the undo can delete
        raise Conflict("container vanished while being created; retry the copy")

    monkeypatch.setattr(world.fleet, "finish", conflict)
    with pytest.raises(Conflict):
        world.fleet.copy(world.project, "demo", TenantSpec(name="half"))
    assert (got := row(world, "half")) is not None and got.state == "deleting"
    assert "half" in agent.tenants
    agent.down = False
    assert world.fleet.reconcile_once().deleted == ["half"]
    assert agent.tenants == {}


def test_a_copy_whose_answer_is_lost_is_deleted_on_the_node(world: World) -> None:
    agent = world.agents["n1"]
    real = agent.transport.handle_request

    def made_then_cut(request: httpx.Request) -> httpx.Response:
        response = real(request)
        if request.url.path.endswith("/copy"):
            raise httpx.ReadTimeout("timed out", request=request)
        return response

    agent.transport.handle_request = made_then_cut  # type: ignore[method-assign]
    with pytest.raises(HostError):
        world.fleet.copy(world.project, "demo", TenantSpec(name="cut"))
    assert agent.tenants == {} and row(world, "cut") is None


def test_finish_returns_a_row_the_reconcile_adopted(world: World, clock: Clock) -> None:
    cid = left_creating(world, "adopted")
    rec = world.agents["n1"].client().copy("demo", TenantSpec(name=cid))
    clock.now += 61
    assert world.fleet.reconcile_once().adopted == [cid]
    # The copy that was slow, not dead, finishes after all: it gets the adopted row.
    out = world.fleet.finish(Reservation(cid, world.project, "n1", "", "", 1, None), rec)
    assert out["state"] == "running"


def test_orphans_and_reconcile_through_the_api(world: World) -> None:
    world.agents["n1"].client().copy("demo", TenantSpec(name="stray"))
    with TestClient(create_app(world.fleet, monitor=False)) as http:
        admin = Client("http://testserver", world.admin_token, http=TestClient(http.app))
        assert admin.reconcile()["orphans"] == []  # seen once: not yet
        assert admin.reconcile()["orphans"] == ["stray"]
        assert [o["tenant"] for o in admin.orphans()] == ["stray"]
        project = Client("http://testserver", world.project_token, http=TestClient(http.app))
        with pytest.raises(Forbidden):
            project.orphans()
        with pytest.raises(Forbidden):
            project.reconcile()


def test_a_key_left_without_a_row_is_released(world: World, clock: Clock) -> None:
    """The process died after claiming the key, before placing the copy."""
    with world.store.write() as s:
        s.add(
            IdempotencyKey(
                project_id=world.project, key="evt_x", request_hash="h", created_at=clock.now
            )
        )
    assert world.fleet.reconcile_once().released_keys == []
    clock.now += 61
    assert world.fleet.reconcile_once().released_keys == ["evt_x"]
    made = world.fleet.copy(world.project, "demo", idempotency_key="evt_x")
    assert made["state"] == "running"
