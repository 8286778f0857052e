"""The dashboard against both databases: figures, the change mark, login, CSRF,
tenant search and paging, history, /metrics, node costs, and the live feed over a
real HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import update
from starlette.testclient import TestClient

from hoody.agent.spec import TenantSpec
from hoody.bench.scratch import free_port, serve_in_thread
from hoody.control.api import create_app
from hoody.control.db import Container, Store
from hoody.dashboard.figures import FleetFigures
from hoody.dashboard.live import LiveFeed
from hoody.dashboard.web import Dashboard
from hoody.errors import InvalidInput
from tests.control_support import World, make_world


@pytest.fixture
def world(store: Store) -> World:
    return make_world(store, nodes={"n1": {}, "n2": {}, "n3": {}})


def browser(w: World, token: str | None = None) -> TestClient:
    """A logged-in browser (TestClient keeps the cookie)."""
    client = TestClient(create_app(w.fleet, monitor=False), base_url="http://cp.test")
    r = client.post("/login", data={"token": token or w.admin_token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


def csrf(client: TestClient) -> str:
    page = client.get("/").text
    return page.split('name="csrf" content="', 1)[1].split('"', 1)[0]


def test_the_change_mark_moves_for_every_writer(world: World) -> None:
    figures = FleetFigures(world.store)
    marks = [figures.change_mark()]
    c = world.fleet.copy(world.project, "demo")
    marks.append(figures.change_mark())
    world.fleet.stop(world.who, c["id"])
    marks.append(figures.change_mark())
    # Any code path that writes the table moves it: here a bare UPDATE, as another
    # area (sleep, reconcile) or another process would do.
    with world.store.write() as s:
        s.execute(update(Container).where(Container.id == c["id"]).values(state="sleeping"))
    marks.append(figures.change_mark())
    world.fleet.set_node(world.admin, "n1", monthly_cost=29)
    marks.append(figures.change_mark())
    assert marks == sorted(set(marks)), marks
    before = figures.change_mark()
    world.heartbeat("n1")  # a heartbeat rewrites headroom only: not a change of state
    assert figures.change_mark() == before


def test_headline_bill_cost_per_tenant_and_room(world: World) -> None:
    for name in ("n1", "n2", "n3"):
        world.fleet.set_node(world.admin, name, monthly_cost=29, currency="usd")
    for i in range(6):
        world.fleet.copy(world.project, "demo", TenantSpec(metadata={"n": i}))
    # Nodes report what their tenants really use: 8 MiB each.
    for name, agent in world.agents.items():
        h = agent.headroom()
        running = h["running"]
        h["memory_measured_bytes"] = running * (8 << 20)
        h["memory_available_bytes"] = (4 << 30) - running * (8 << 20)
        h["memory_total_bytes"] = 4 << 30
        h["memory_reserve_bytes"] = (4 << 30) // 10
        world.fleet.heartbeat(world.admin, name, h)
    world.fleet.set_cordon(world.admin, "n3", "cordoned")
    head = FleetFigures(world.store).summary()["headline"]
    assert head["tenants"] == 6 and head["nodes"] == 3
    assert head["monthly_bill"] == 87 and head["currency"] == "USD" and head["bill_complete"]
    assert head["cost_per_tenant"] == 14.5
    assert head["memory_per_tenant_bytes"] == 8 << 20
    # Two nodes take tenants (n3 is cordoned): each keeps its reserve (10% of 4 GiB).
    per_node = ((4 << 30) - 2 * (8 << 20) - (4 << 30) // 10) // (8 << 20)
    assert head["more_tenants"] == 2 * per_node
    assert "measured" in head["basis"]


def test_node_cost_through_the_api_and_its_checks(world: World) -> None:
    with TestClient(create_app(world.fleet, monitor=False)) as api:
        auth = {"Authorization": f"Bearer {world.admin_token}"}
        r = api.patch(
            "/api/v1/nodes/n1", json={"monthly_cost": 29, "currency": "EUR"}, headers=auth
        )
        assert r.status_code == 200 and r.json()["monthly_cost"] == 29
        assert r.json()["currency"] == "EUR"
        bad = api.patch("/api/v1/nodes/n1", json={"monthly_cost": -1}, headers=auth)
        assert bad.status_code == 400 and "monthly_cost" in bad.text
        bad = api.patch("/api/v1/nodes/n1", json={"currency": "dollars"}, headers=auth)
        assert bad.status_code == 400
        project = {"Authorization": f"Bearer {world.project_token}"}
        assert (
            api.patch("/api/v1/nodes/n1", json={"monthly_cost": 1}, headers=project).status_code
            == 403
        )
    with pytest.raises(InvalidInput, match="monthly cost"):
        world.fleet.set_node(world.admin, "n1", monthly_cost=float("nan"))


def test_login_cookie_and_who_may_see_the_dashboard(world: World) -> None:
    client = TestClient(create_app(world.fleet, monitor=False), base_url="http://cp.test")
    assert "Admin token" in client.get("/").text
    assert client.get("/dashboard/api/summary").status_code == 401
    wrong = client.post("/login", data={"token": "hdy_aaaaaaaaaa_" + "b" * 43})
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
    project = client.post("/login", data={"token": world.project_token})
    assert project.status_code == 403 and "needs an admin token" in project.text
    assert "hoody_session" not in client.cookies
    elsewhere = client.post(
        "/login", data={"token": world.admin_token}, headers={"Origin": "http://evil.test"}
    )
    assert elsewhere.status_code == 403
    ok = client.post("/login", data={"token": world.admin_token}, follow_redirects=False)
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    summary = client.get("/dashboard/api/summary").json()
    # Placement's own estimate of further tenants rides along with each node.
    (estimate,) = summary["nodes"][0]["estimates"]
    assert estimate["template"] == "demo" and estimate["further_tenants"] > 0
    page = client.get("/")
    assert (
        'name="csrf"' in page.text
        and "default-src 'self'" in page.headers["content-security-policy"]
    )
    # Revoking the admin token the session came from ends the session.
    token_id = next(t["id"] for t in world.fleet.list_tokens(world.admin) if t["scope"] == "admin")
    world.fleet.revoke_token(world.admin, token_id)
    assert client.get("/dashboard/api/summary").status_code == 401


def test_the_page_arrives_with_its_first_data_and_no_inline_code(world: World) -> None:
    hostile = "</script><script>alert(1)</script><!--"
    c = world.fleet.copy(
        world.project, "demo", TenantSpec(metadata={"note": hostile, "x": "a&b>c"})
    )
    page = browser(world).get("/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    _, rest = page.text.split('<script id="first" type="application/json">', 1)
    block, _ = rest.split("</script>", 1)
    # Nothing in the data can end the block or start markup: < > & are JSON escapes.
    assert not {"<", ">", "&"} & set(block)
    first = json.loads(block)
    assert first["summary"]["headline"]["tenants"] == 1
    (row,) = first["tenants"]["items"]
    assert row["id"] == c["id"] and row["metadata"] == {"note": hostile, "x": "a&b>c"}
    assert first["tenants"]["page"] == 1 and first["tenants"]["per_page"] == 50
    assert set(first["history"]) >= {"at", "tenants", "cost_by_count"}
    # Every other script on the page is a file of ours (no inline code to allow).
    scripts = page.text.count("<script")
    assert scripts == 1 + page.text.count('<script defer src="/dashboard/static/')
    # Signed out, the login page carries none of it.
    signed_out = TestClient(create_app(world.fleet, monitor=False), base_url="http://cp.test")
    assert c["id"] not in signed_out.get("/").text


def test_actions_need_the_csrf_token_and_same_origin(world: World) -> None:
    c = world.fleet.copy(world.project, "demo")
    client = browser(world)
    token = csrf(client)
    url = f"/dashboard/api/tenants/{c['id']}/stop"
    assert client.post(url).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": "nope"}).status_code == 403
    cross = {"X-CSRF-Token": token, "Origin": "http://evil.test"}
    assert client.post(url, headers=cross).status_code == 403
    assert world.fleet.get_container(world.admin, c["id"])["state"] == "running"
    ok = client.post(url, headers={"X-CSRF-Token": token, "Origin": "http://cp.test"})
    assert ok.status_code == 200 and ok.json()["state"] == "stopped"
    client.post(f"/dashboard/api/tenants/{c['id']}/start", headers={"X-CSRF-Token": token})
    opened = client.post(f"/dashboard/api/tenants/{c['id']}/open", headers={"X-CSRF-Token": token})
    assert opened.status_code == 200 and "claim=" in opened.json()["url"]
    gone = client.post(f"/dashboard/api/tenants/{c['id']}/delete", headers={"X-CSRF-Token": token})
    assert gone.status_code == 200 and gone.json()["existed"] is True
    odd = client.post(f"/dashboard/api/tenants/{c['id']}/explode", headers={"X-CSRF-Token": token})
    assert odd.status_code == 400


def test_tenant_search_filters_and_pages(world: World) -> None:
    made = [
        world.fleet.copy(
            world.project, "demo", TenantSpec(metadata={"customer": f"cus_{i:02d}", "plan": p})
        )
        for i, p in enumerate(["pro", "free", "pro", "pro", "free"] * 3)
    ]
    figures = FleetFigures(world.store)
    page = figures.tenants(per_page=4)
    assert page["total"] == 15 and page["pages"] == 4 and len(page["items"]) == 4
    assert [t["id"] for t in page["items"]] == [c["id"] for c in reversed(made)][:4]
    last = figures.tenants(per_page=4, page=4)
    assert len(last["items"]) == 3
    assert figures.tenants(metadata={"plan": "free"})["total"] == 6
    assert figures.tenants(search="cus_07")["total"] == 1
    assert figures.tenants(search=made[3]["id"][-6:])["items"][0]["id"] == made[3]["id"]
    assert figures.tenants(search="%")["total"] == 0  # a wildcard is a literal here
    node = made[0]["node"]
    assert figures.tenants(node=node)["total"] == sum(c["node"] == node for c in made)
    world.fleet.stop(world.who, made[0]["id"])
    assert [t["id"] for t in figures.tenants(state="stopped")["items"]] == [made[0]["id"]]
    world.fleet.delete_container(world.who, made[1]["id"])
    assert figures.tenants()["total"] == 14
    assert figures.tenants(state="deleted")["total"] == 1
    with pytest.raises(InvalidInput, match="per_page"):
        figures.tenants(per_page=1000)
    with pytest.raises(InvalidInput, match="sort"):
        figures.tenants(sort="random()")


def test_the_table_shows_what_each_tenant_uses_as_its_node_reported(world: World) -> None:
    a = world.fleet.copy(world.project, "demo")
    b = world.fleet.copy(world.project, "demo")
    figures = FleetFigures(world.store)
    rows = {t["id"]: t for t in figures.tenants()["items"]}
    assert rows[a["id"]]["memory_bytes"] is None  # not reported yet
    agent = world.agents[a["node"]]
    world.fleet.heartbeat(
        world.admin, a["node"], agent.headroom(), tenant_usage={a["id"]: [5 << 20, 123456]}
    )
    rows = {t["id"]: t for t in figures.tenants()["items"]}
    assert rows[a["id"]]["memory_bytes"] == 5 << 20 and rows[a["id"]]["disk_bytes"] == 123456
    if b["node"] != a["node"]:
        assert rows[b["id"]]["memory_bytes"] is None
    with TestClient(create_app(world.fleet, monitor=False)) as api:
        auth = {"Authorization": f"Bearer {world.admin_token}"}
        bad = api.post(
            f"/api/v1/nodes/{a['node']}/heartbeat",
            json={"headroom": {}, "tenant_usage": {a["id"]: [1]}},
            headers=auth,
        )
        assert bad.status_code == 400


def test_history_one_point_per_bucket_and_cost_by_count(world: World) -> None:
    world.fleet.set_node(world.admin, "n1", monthly_cost=30)
    figures = FleetFigures(world.store)
    assert figures.sample(3600) is True
    assert figures.sample(3600) is False  # another process got this bucket already
    world.fleet.copy(world.project, "demo")
    world.fleet.copy(world.project, "demo")
    now = [time.time()]
    later = FleetFigures(world.store, clock=lambda: now[0] + 3600)
    assert later.sample(3600) is True
    hist = figures.history()
    assert hist["tenants"] == [0, 2]
    assert hist["cost_by_count"] == {"tenants": [2], "cost_per_tenant": [15.0]}


def test_metrics_need_an_admin_and_export_fleet_series(world: World) -> None:
    world.fleet.set_node(world.admin, "n1", monthly_cost=29)
    with TestClient(create_app(world.fleet, monitor=False)) as api:
        auth = {"Authorization": f"Bearer {world.admin_token}"}
        api.post("/api/v1/containers/demo/copy", json={"project": world.project}, headers=auth)
        api.post("/api/v1/containers/nope/copy", json={"project": world.project}, headers=auth)
        assert api.get("/metrics").status_code == 401
        project = {"Authorization": f"Bearer {world.project_token}"}
        assert api.get("/metrics", headers=project).status_code == 401
        text = api.get("/metrics", headers=auth).text
    assert 'hoody_tenants{node="n' in text and 'state="running",template="demo"} 1.0' in text
    assert 'hoody_node_monthly_cost{currency="USD",node="n1"} 29.0' in text
    assert 'hoody_copies_total{result="ok",template="demo"} 1.0' in text
    assert 'hoody_copies_total{result="error",template="-"} 1.0' in text  # no label for "nope"
    assert 'hoody_copy_duration_seconds_count{template="demo"} 1.0' in text
    assert 'hoody_api_errors_total{code="not_found"} 1.0' in text
    assert "hoody_node_disk_tenants_bytes" in text and "hoody_node_ksm_profit_bytes" in text


def _events(url: str, cookie: str, out: list[dict[str, Any]], stop: threading.Event) -> None:
    with (
        httpx.Client(timeout=30) as http,
        http.stream("GET", f"{url}/dashboard/events", headers={"Cookie": cookie}) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
            if stop.is_set():
                return


@pytest.fixture
def live(world: World) -> Iterator[tuple[str, str]]:
    with serve_in_thread(create_app(world.fleet, monitor=False), free_port()) as url:
        r = httpx.post(f"{url}/login", data={"token": world.admin_token})
        assert r.status_code == 303
        yield url, r.headers["set-cookie"].split(";")[0]


def test_the_live_feed_sends_a_copy_within_a_second(world: World, live: tuple[str, str]) -> None:
    url, cookie = live
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_events, args=(url, cookie, seen, stop), daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen and seen[-1]["headline"]["tenants"] == 0
    start = time.monotonic()
    world.fleet.copy(world.project, "demo")  # the service directly: no API code path
    while seen[-1]["headline"]["tenants"] != 1:
        assert time.monotonic() - start < 1.0, "the copy did not reach the browser in 1 s"
        time.sleep(0.01)
    stop.set()
    world.fleet.copy(world.project, "demo")  # one more event lets the reader return
    reader.join(5)
    refused = httpx.get(f"{url}/dashboard/events", timeout=5)
    assert refused.status_code == 401


def test_a_new_subscriber_gets_the_latest_summary_unless_something_changed(
    world: World,
) -> None:
    figures = FleetFigures(world.store)
    reads: list[float] = []
    summary = figures.summary

    def counted() -> dict[str, Any]:
        reads.append(time.monotonic())
        return summary()

    figures.summary = counted  # type: ignore[method-assign]
    feed = LiveFeed(figures, refresh=30.0)

    async def first_event() -> dict[str, Any]:
        async with feed.subscription() as queue:
            payload = json.loads(await queue.get())
        feed.stop()
        return payload

    assert asyncio.run(first_event())["headline"]["tenants"] == 0
    assert asyncio.run(first_event())["headline"]["tenants"] == 0
    assert len(reads) == 1  # the second page reused the first one's summary
    world.fleet.copy(world.project, "demo")
    assert asyncio.run(first_event())["headline"]["tenants"] == 1
    assert len(reads) == 2


def test_placement_estimates_never_hold_up_a_read_once_known(world: World) -> None:
    dashboard = Dashboard(world.fleet, CollectorRegistry())
    first = dashboard._estimates()  # nothing known yet: read now
    assert first["n1"][0]["template"] == "demo"
    calls: list[float] = []
    list_nodes = world.fleet.list_nodes

    def slow(who: Any) -> list[dict[str, Any]]:
        calls.append(time.monotonic())
        time.sleep(0.5)
        return list_nodes(who)

    world.fleet.list_nodes = slow  # type: ignore[method-assign]
    assert dashboard._estimates_cache is not None
    dashboard._estimates_cache = (time.monotonic() - 10, dashboard._estimates_cache[1])
    start = time.monotonic()
    assert dashboard._estimates() == first  # the older value, at once
    assert dashboard._estimates() == first  # one refresh at a time
    assert time.monotonic() - start < 0.4
    deadline = time.monotonic() + 10
    while dashboard._estimates_cache[0] < start and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dashboard._estimates_cache[0] >= start and len(calls) == 1


def test_assets_are_cached_for_good_under_their_version_only(world: World) -> None:
    client = browser(world)
    page = client.get("/").text
    src = page.split('<script defer src="', 1)[1].split('"', 1)[0]
    assert src.startswith("/dashboard/static/vendor/uplot-") and "?v=" in src
    current = client.get(src)
    assert current.status_code == 200
    assert current.headers["cache-control"] == "public, max-age=31536000, immutable"
    other = client.get(src.split("?", 1)[0] + "?v=0000")
    assert other.status_code == 200 and other.headers["cache-control"] == "no-cache"
    bare = client.get(src.split("?", 1)[0])
    assert bare.headers["cache-control"] == "no-cache"
    signed_out = TestClient(create_app(world.fleet, monitor=False), base_url="http://cp.test")
    assert f"app.css?v={src.split('?v=', 1)[1]}" in signed_out.get("/").text
