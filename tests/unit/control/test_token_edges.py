"""What each token may learn and do at the edges of its scope: project tokens hear
about their own project only, bad env and limits are refused, join tokens expire."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from hoody.agent.spec import TenantSpec
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Node, Store
from hoody.control.service import Settings
from hoody.errors import Conflict, Exhausted, Forbidden, InvalidInput, Unauthorized
from tests.bad_input import BAD_LIMITS_AND_ENV
from tests.control_support import World, make_world


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> Iterator[World]:
    store = Store(f"sqlite:///{tmp_path / 'control.db'}")
    yield make_world(store, clock=clock)
    store.close()


@pytest.fixture
def http(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.fleet, monitor=False)) as tc:
        yield tc


def names_a_node(world: World, text: str) -> bool:
    """Whether `text` names one of the world's nodes (n1, n2) as a word: a random
    tenant id such as demo-xrr1n2 holds "n2" without naming anything."""
    return any(re.search(rf"\b{re.escape(name)}\b", text) for name in world.agents)


def sdk(http: TestClient, token: str) -> Client:
    return Client("http://testserver", token, http=TestClient(http.app))


def test_no_room_tells_a_project_nothing_about_the_nodes(world: World, http: TestClient) -> None:
    huge = {"memory_mib": 1 << 22}
    with pytest.raises(Exhausted) as project_view:
        sdk(http, world.project_token).copy("demo", TenantSpec(limits=huge))
    message = project_view.value.message
    assert "no room" in message
    assert not names_a_node(world, message), message
    assert "MiB" not in message and "free" not in message
    with pytest.raises(Exhausted) as admin_view:  # the operator gets the details
        sdk(http, world.admin_token).copy("demo", TenantSpec(limits=huge), project=world.project)
    assert any(name in admin_view.value.message for name in world.agents)


def test_a_down_node_is_not_named_to_a_project(world: World, http: TestClient) -> None:
    api = sdk(http, world.project_token)
    c = api.copy("demo")
    node = sdk(http, world.admin_token).container(c["id"])["node"]
    with world.store.write() as s:
        s.execute(update(Node).where(Node.name == node).values(health="down"))
    with pytest.raises(Conflict) as exc:
        api.stop(c["id"])
    assert node not in exc.value.message and "down" in exc.value.message


_WHERE = {"node", "ip", "address", "placement"}


def test_project_tokens_see_containers_without_where_they_run(
    world: World, http: TestClient
) -> None:
    mine, admin = sdk(http, world.project_token), sdk(http, world.admin_token)
    made = mine.copy("demo", TenantSpec(metadata={"customer": "cus_1"}))
    c = made["id"]
    seen = [
        made,
        mine.container(c),
        mine.containers()["items"][0],
        mine.stop(c),
        mine.start(c),
        mine.sleep(c, "frozen"),
        mine.wake(c),
        mine.copy("demo", idempotency_key="evt_1"),
        mine.copy("demo", idempotency_key="evt_1"),  # the stored answer, replayed
    ]
    for rec in seen:
        assert not _WHERE & set(rec), rec
        assert rec["url"] == ""  # no router here: the URL would be the node address
        text = repr(rec)
        assert not names_a_node(world, text), rec
    assert made["metadata"] == {"customer": "cus_1"} and made["limits"]["memory_mib"] == 256
    # Admins keep seeing where it runs, and the node-local URL.
    full = admin.container(c)
    assert set(full) >= _WHERE and full["node"] in world.agents
    assert full["url"] == f"http://{full['address']}/"
    assert set(admin.containers()["items"][0]) >= _WHERE
    # Filtering by node would tell a project where its tenants are.
    with pytest.raises(Forbidden, match="admin tokens"):
        mine.containers(node=full["node"])
    assert [x["id"] for x in admin.containers(node=full["node"])["items"]].count(c) == 1
    # The OpenAPI document says which view is which.
    schema = http.get("/api/v1/openapi.json").json()
    ok = schema["paths"]["/api/v1/containers/{cid}"]["get"]["responses"]["200"]
    refs = [x["$ref"] for x in ok["content"]["application/json"]["schema"]["anyOf"]]
    assert refs == ["#/components/schemas/ContainerOut", "#/components/schemas/ProjectContainerOut"]
    assert "node" not in schema["components"]["schemas"]["ProjectContainerOut"]["properties"]


def test_a_project_sees_the_router_url_but_not_the_node(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'router.db'}")
    w = make_world(store, settings=Settings(router_url="http://localhost:8000"))
    with TestClient(create_app(w.fleet, monitor=False)) as tc:
        rec = sdk(tc, w.project_token).copy("demo")
        assert rec["url"] == f"http://{rec['id']}.localhost:8000/"
        assert not _WHERE & set(rec)
        assert sdk(tc, w.admin_token).container(rec["id"])["url"] == rec["url"]
    store.close()


@pytest.mark.parametrize(("limits", "env", "problem"), BAD_LIMITS_AND_ENV)
def test_bad_limits_and_env_are_refused(
    world: World, http: TestClient, limits: dict | None, env: dict | None, problem: str
) -> None:
    body = {k: v for k, v in {"limits": limits, "env": env}.items() if v is not None}
    # The API refuses it (sent as raw JSON), and so does the SDK's TenantSpec, in the
    # same words: one rule, one message.
    auth = {"Authorization": f"Bearer {world.project_token}"}
    answer = http.post("/api/v1/containers/demo/copy", json=body, headers=auth)
    assert answer.status_code == 400 and re.search(problem, answer.json()["error"]["message"])
    with pytest.raises(InvalidInput, match=problem):
        sdk(http, world.project_token).copy("demo", TenantSpec.parse(body))
    assert sdk(http, world.project_token).containers()["items"] == []


def test_good_env_passes(world: World, http: TestClient) -> None:
    spec = TenantSpec(env={"PLAN": "pro", "_X1": "é" * 100})
    c = sdk(http, world.project_token).copy("demo", spec)
    assert c["state"] == "running"


def test_join_tokens_expire(world: World, clock: Clock) -> None:
    join = world.fleet.create_token(world.admin, "join")
    assert join["expires_at"] == clock.now + 86_400
    world.fleet.authenticate(f"Bearer {join['token']}")
    clock.now += 86_401
    with pytest.raises(Unauthorized, match="join token expired"):
        world.fleet.authenticate(f"Bearer {join['token']}")
    short = world.fleet.create_token(world.admin, "join", ttl=600)
    assert short["expires_at"] == clock.now + 600
    with pytest.raises(InvalidInput, match="ttl_seconds"):
        world.fleet.create_token(world.admin, "join", ttl=10)
    forever = world.fleet.create_token(world.admin, "project", project_id=world.project)
    assert forever["expires_at"] is None


def test_a_router_token_over_the_api(world: World, http: TestClient) -> None:
    admin = sdk(http, world.admin_token)
    token = admin.create_token("router", description="edge")["token"]
    router = sdk(http, token)
    assert router.whoami()["scope"] == "router"
    with pytest.raises(Forbidden, match="router token may only"):
        router.containers()
    with pytest.raises(Forbidden):
        router.create_token("router")
