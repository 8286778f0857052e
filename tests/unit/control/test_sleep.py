"""Sleep and wake through the control plane; idleness from the routers' reports."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette

from hoody.agent import api as agent_api
from hoody.agent.client import wake_token
from hoody.agent.spec import TenantSpec
from hoody.control.api import create_app
from hoody.control.auth import Principal
from hoody.control.db import Store
from hoody.errors import Conflict, Exhausted, Forbidden, InvalidInput, NotFound
from hoody.router.table import ControlPlaneTable, Door
from tests.control_support import World, make_world


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_sleep_and_wake_show_in_the_api_and_on_the_node(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}})
    c = w.fleet.copy(w.project, "demo", TenantSpec(sleep={"mode": "frozen"}))
    assert c["sleep"] == {"idle_seconds": None, "mode": "frozen"}
    slept = w.fleet.sleep(w.who, c["id"])
    assert (slept["state"], slept["sleep_mode"]) == ("sleeping", "frozen")
    assert w.agents["n1"].tenants[c["id"]]["state"] == "sleeping"
    listed = w.fleet.list_containers(w.who, state="sleeping")["items"]
    assert [r["id"] for r in listed] == [c["id"]]
    assert w.fleet.route_table(w.admin)["routes"][c["id"]]["state"] == "sleeping"
    woken = w.fleet.wake(w.who, c["id"])
    assert (woken["state"], woken["sleep_mode"]) == ("running", None)
    assert w.fleet.wake(w.who, c["id"])["state"] == "running", "waking twice is harmless"
    w.fleet.sleep(w.who, c["id"], "stopped")
    assert w.fleet.start(w.who, c["id"])["state"] == "running", "start wakes a sleeper"
    with pytest.raises(InvalidInput, match="sleep mode"):
        w.fleet.sleep(w.who, c["id"], "hibernate")
    w.fleet.stop(w.who, c["id"])
    with pytest.raises(Conflict, match="only a running tenant can sleep"):
        w.fleet.sleep(w.who, c["id"])


def test_who_may_sleep_wake_and_report(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}})
    c = w.fleet.copy(w.project, "demo")
    other = w.fleet.create_project(w.admin, "other")["id"]
    stranger = Principal("project", project_id=other)
    with pytest.raises(NotFound):
        w.fleet.sleep(stranger, c["id"])
    with pytest.raises(NotFound):
        w.fleet.wake(stranger, c["id"])
    router = Principal("router")
    w.fleet.sleep(w.who, c["id"])
    assert w.fleet.wake(router, c["id"])["state"] == "running", "routers wake any tenant"
    with pytest.raises(Forbidden):
        w.fleet.sleep(router, c["id"])
    with pytest.raises(Forbidden, match="router token"):
        w.fleet.report_activity(w.who, {c["id"]: 1.0})
    with pytest.raises(InvalidInput, match="seconds"):
        w.fleet.report_activity(router, {c["id"]: -1.0})


def test_idle_tenants_sleep_and_any_routers_report_keeps_one_awake(store: Store) -> None:
    clock = Clock()
    w = make_world(store, nodes={"n1": {}}, clock=clock)
    idle = w.fleet.copy(w.project, "demo", TenantSpec(sleep={"idle_seconds": 60}))["id"]
    busy = w.fleet.copy(
        w.project, "demo", TenantSpec(sleep={"idle_seconds": 60, "mode": "frozen"})
    )["id"]
    never = w.fleet.copy(w.project, "demo")["id"]
    router = Principal("router")
    clock.now += 50
    assert w.fleet.sleep_idle_once() == []
    # Two routers: one saw `busy` 5 s ago, the other 40 s ago; the latest counts.
    w.fleet.report_activity(router, {busy: 5.0, "gone-tenant": 1.0})
    w.fleet.report_activity(router, {busy: 40.0})
    clock.now += 20
    assert w.fleet.sleep_idle_once() == [idle]
    assert w.agents["n1"].tenants[idle]["state"] == "sleeping"
    assert w.fleet.get_container(w.who, never)["state"] == "running"
    clock.now += 60
    assert w.fleet.sleep_idle_once() == [busy]
    assert w.fleet.get_container(w.who, busy)["sleep_mode"] == "frozen"
    # A wake makes it active again: it sleeps only after another idle minute.
    w.fleet.wake(router, busy)
    clock.now += 30
    assert w.fleet.sleep_idle_once() == []
    clock.now += 31
    assert w.fleet.sleep_idle_once() == [busy]


def test_a_failed_sleep_leaves_the_tenant_running(store: Store) -> None:
    clock = Clock()
    w = make_world(store, nodes={"n1": {}}, clock=clock)
    cid = w.fleet.copy(w.project, "demo", TenantSpec(sleep={"idle_seconds": 10}))["id"]
    w.agents["n1"].set_state(cid, "stopped")  # the node says otherwise
    clock.now += 11
    assert w.fleet.sleep_idle_once() == []
    assert w.fleet.get_container(w.who, cid)["state"] == "running"


def test_heartbeats_record_what_a_node_put_to_sleep(store: Store) -> None:
    clock = Clock()
    w = make_world(store, nodes={"n1": {}}, clock=clock)
    a = w.fleet.copy(w.project, "demo")["id"]
    b = w.fleet.copy(w.project, "demo")["id"]
    clock.now += 10
    w.fleet.sync_sleepers("n1", {a: {"mode": "stopped", "at": clock.now - 1}})
    # A heartbeat older than b's last wake must not put it back to sleep.
    w.fleet.sync_sleepers("n1", {b: {"mode": "stopped", "at": clock.now - 20}})
    assert w.fleet.get_container(w.who, a)["state"] == "sleeping"
    assert w.fleet.get_container(w.who, b)["state"] == "running"


def test_placement_skips_a_node_under_memory_pressure(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}, "n2": {}})
    hot = {**w.agents["n1"].headroom(), "memory_pressured": 1, "memory_pressure_pct": 37}
    hot["memory_pressure_threshold_pct"] = 10
    w.fleet.heartbeat(w.admin, "n1", hot)
    placed = {w.fleet.copy(w.project, "demo")["node"] for _ in range(4)}
    assert placed == {"n2"}
    c = w.fleet.copy(w.project, "demo")
    assert "n1 (under memory pressure (tasks stalled on memory 37% of the time" in c["placement"]
    w.fleet.heartbeat(w.admin, "n2", {**hot, "memory_pressure_pct": 50})
    with pytest.raises(Exhausted, match="memory pressure"):
        w.fleet.copy(w.project, "demo")


async def test_a_routers_wake_says_what_it_woke_and_where_the_time_went(store: Store) -> None:
    """Through the API as a router calls it: the sleep the tenant was woken from (a
    router waits for a started tenant's port, not for an awake one's) and the wake's
    phases (Server-Timing), which the router sums into its metrics."""
    w = make_world(store, nodes={"n1": {}})
    c = w.fleet.copy(w.project, "demo", TenantSpec(sleep={"mode": "frozen"}))
    w.fleet.sleep(w.who, c["id"])
    token = w.fleet.create_token(w.admin, "router")["token"]
    app = create_app(w.fleet, monitor=False)
    table = ControlPlaneTable("http://cp", token, transport=httpx.ASGITransport(app))
    try:
        woken = await table.wake(c["id"])  # no table loaded: no node to wake it at
        assert woken.was == "frozen" and not woken.at_node
        assert set(woken.phases) == {"control_plane", "agent", "node"}
        assert all(v >= 0 for v in woken.phases.values()), woken.phases
        assert w.agents["n1"].tenants[c["id"]]["state"] == "running"
        assert (await table.wake(c["id"])).was == "", "it was awake"
        w.fleet.sleep(w.who, c["id"], "stopped")
        assert (await table.wake(c["id"])).was == "stopped"
    finally:
        await table.close()


def _router_table(w: World, node_app: Starlette | None = None) -> ControlPlaneTable:
    token = w.fleet.create_token(w.admin, "router")["token"]
    agent = w.agents["n1"]
    node_app = node_app or agent_api.create_app(agent.node, agent.token)
    return ControlPlaneTable(
        "http://cp",
        token,
        transport=httpx.ASGITransport(create_app(w.fleet, monitor=False)),
        node_transport=httpx.ASGITransport(node_app),
    )


async def _recorded(w: World, cid: str, state: str = "running") -> None:
    for _ in range(200):
        if w.fleet.get_container(w.who, cid)["state"] == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{cid} not recorded {state}")


async def test_a_router_wakes_a_tenant_at_its_node_and_reports_it_after(store: Store) -> None:
    """The table names each node's agent and wake-only token; the router wakes there
    (no control plane on the request's path), keeps the tenant running in its table and
    reports the wake with its activity; the control plane records it running."""
    w = make_world(store, nodes={"n1": {}})
    cid = w.fleet.copy(w.project, "demo", TenantSpec(sleep={"mode": "frozen"}))["id"]
    w.fleet.sleep(w.who, cid)
    agent = w.agents["n1"]
    table = _router_table(w)
    try:
        await table.refresh()
        assert table.table.doors == {"n1": Door(agent.url, wake_token(agent.token))}
        assert table.table.routes[cid].node == "n1"
        woken = await table.wake(cid)
        assert woken.was == "frozen" and woken.at_node
        assert set(woken.phases) == {"agent", "node"}, "no control plane in this wake"
        assert agent.tenants[cid]["state"] == "running"
        # Not reported yet: the control plane's table still says it sleeps, the router's
        # does not (a request now goes straight to the tenant).
        assert w.fleet.get_container(w.who, cid)["state"] == "sleeping"
        table.etag = ""
        await table.refresh()
        assert table.table.routes[cid].state == "running"
        table.report_activity(dict, every=0.01)
        await _recorded(w, cid)
        assert w.fleet.get_container(w.who, cid)["sleep_mode"] is None
        w.fleet.sleep(w.who, cid, "stopped")
        woken = await table.wake(cid)
        assert (woken.was, woken.at_node) == ("stopped", True)
        await _recorded(w, cid)
    finally:
        await table.close()


def test_a_reported_wake_records_a_sleeping_container_running_and_active(store: Store) -> None:
    clock = Clock()
    w = make_world(store, nodes={"n1": {}}, clock=clock)
    asleep = w.fleet.copy(w.project, "demo", TenantSpec(sleep={"idle_seconds": 60}))["id"]
    w.fleet.sleep(w.who, asleep)
    running = w.fleet.copy(w.project, "demo")["id"]
    router = w.fleet.authenticate(f"Bearer {w.fleet.create_token(w.admin, 'router')['token']}")
    clock.now += 100
    out = w.fleet.report_activity(router, {}, {asleep: 2.0, running: 1.0, "gone-1": 0.0})
    assert out == {"recorded": 0, "woken": 1}
    row = w.fleet.get_container(w.who, asleep)
    assert (row["state"], row["sleep_mode"]) == ("running", None)
    assert w.fleet.sleep_idle_once() == [], "active since its wake, 2 s ago"
    # Put back to sleep by its node after that wake: the node's heartbeat says so.
    w.fleet.sync_sleepers("n1", {asleep: {"mode": "frozen", "at": clock.now - 1}})
    assert w.fleet.get_container(w.who, asleep)["state"] == "sleeping"
    with pytest.raises(Forbidden):
        w.fleet.report_activity(w.who, {}, {asleep: 0.0})
    with pytest.raises(InvalidInput, match="seconds >= 0"):
        w.fleet.report_activity(router, {}, {asleep: -1.0})


async def test_a_node_that_refuses_or_is_out_of_reach_is_woken_through_the_control_plane(
    store: Store,
) -> None:
    w = make_world(store, nodes={"n1": {}})
    c = w.fleet.copy(w.project, "demo", TenantSpec(sleep={"mode": "frozen"}))
    agent = w.agents["n1"]
    # An agent whose token changed since the table was made refuses the wake token.
    table = _router_table(w, agent_api.create_app(agent.node, "another token"))
    try:
        await table.refresh()
        w.fleet.sleep(w.who, c["id"])
        woken = await table.wake(c["id"])
        assert woken.was == "frozen" and not woken.at_node
        assert w.fleet.get_container(w.who, c["id"])["state"] == "running"
    finally:
        await table.close()

    tried: list[str] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    table = _router_table(w)
    table.node_transport = httpx.MockTransport(unreachable)
    try:
        await table.refresh()
        for _ in range(2):  # the second does not try the node again
            w.fleet.sleep(w.who, c["id"])
            woken = await table.wake(c["id"])
            assert woken.was == "frozen" and not woken.at_node
        assert tried == [f"/v1/tenants/{c['id']}/wake"], "an agent out of reach is let be"
    finally:
        await table.close()
