"""A project token hears about its own project only: no answer and no error it can
get from /api/v1 names a node, gives a node's address or relays what a node's host
said when something failed. Admin tokens keep seeing all of it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Node, Operation, Store
from hoody.control.redact import scrub
from hoody.errors import Conflict, HoodyError, HostError, NotFound
from tests.control_support import World, make_world

# Names no message would contain by chance (node names: 1-6 letters and digits).
NODES = ("zeta7q", "omeg9x")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = Store(f"sqlite:///{tmp_path / 'control.db'}")
    yield make_world(store, nodes={name: {} for name in NODES})
    store.close()


@pytest.fixture
def http(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.fleet, monitor=False)) as tc:
        yield tc


def sdk(http: TestClient, token: str) -> Client:
    return Client("http://testserver", token, http=TestClient(http.app))


def leaks(world: World, seen: Any) -> list[str]:
    """The node names, URLs and hosts found anywhere in `seen`."""
    text = seen if isinstance(seen, str) else json.dumps(seen)
    found = []
    for name, agent in world.agents.items():
        for secret in (name, agent.url, agent.url.split("//")[1]):
            if re.search(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", text):
                found.append(secret)
    return found


def error_of(call: Any) -> HoodyError:
    with pytest.raises(HoodyError) as exc:
        call()
    return exc.value


def test_templates_tell_a_project_whether_a_version_is_ready_not_where(
    world: World, http: TestClient
) -> None:
    mine, admin = sdk(http, world.project_token), sdk(http, world.admin_token)
    listed, shown = mine.templates(), mine.template("demo")
    assert leaks(world, [listed, shown]) == []
    (version,) = shown["versions"]
    assert set(version) == {"version", "created_at", "limits", "ready", "replicating"}
    assert version["ready"] is True and version["replicating"] is False
    assert listed == [shown]
    # The operator sees the nodes, and the same summary.
    (full,) = admin.template("demo")["versions"]
    assert {r["node"] for r in full["nodes"]} == set(NODES)
    assert full["ready"] is True and full["replicating"] is False
    # A version on one node only is still on its way to the other.
    world.agents[NODES[0]].add_template("demo", 2)
    world.heartbeat(NODES[0])
    v2 = mine.template("demo")["versions"][1]
    assert v2["ready"] is True and v2["replicating"] is True
    # The OpenAPI document gives both views.
    spec = http.get("/api/v1/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "nodes" not in schemas["ProjectVersionOut"]["properties"]
    assert "nodes" in schemas["VersionOut"]["properties"]


def test_snapshot_operation_and_template_delete_name_no_node(
    world: World, http: TestClient
) -> None:
    mine, admin = sdk(http, world.project_token), sdk(http, world.admin_token)
    c = mine.copy("demo")
    op = mine.snapshot(c["id"], "mine")
    polled = mine.operation(op["id"])
    assert op["result"] == polled["result"] == {"template": "mine", "version": 1}
    assert admin.operation(op["id"])["result"]["node"] in NODES
    mine.delete(c["id"])
    gone = mine.delete_template("mine")
    assert gone == {"name": "mine", "deleted": True}
    assert leaks(world, [op, polled, gone]) == []


def test_template_transfers_are_the_operators(world: World, http: TestClient) -> None:
    """A transfer of a project's template names the two nodes: projects do not see it."""
    with world.store.write() as s:
        op = world.fleet._new_op(
            s, world.project, "replicate", NODES[1], {"source": NODES[0], "node": NODES[1]}
        )
        op_id = op.id
    with pytest.raises(NotFound):
        sdk(http, world.project_token).operation(op_id)
    assert sdk(http, world.admin_token).operation(op_id)["target"] == NODES[1]


def test_a_failing_node_is_not_named_nor_quoted_to_a_project(
    world: World, http: TestClient
) -> None:
    mine, admin = sdk(http, world.project_token), sdk(http, world.admin_token)
    c = mine.copy("demo")
    node = admin.container(c["id"])["node"]
    world.agents[node].down = True  # unreachable, not yet marked down
    calls = {
        "stop": lambda: mine.stop(c["id"]),
        "start": lambda: mine.start(c["id"]),
        "sleep": lambda: mine.sleep(c["id"]),
        "wake": lambda: mine.wake(c["id"]),
        "snapshot": lambda: mine.snapshot(c["id"], "mine"),
        "logs": lambda: mine.logs(c["id"]),
    }
    for what, call in calls.items():
        exc = error_of(call)
        assert isinstance(exc, HostError), (what, exc)
        assert leaks(world, exc.message) == [], (what, exc.message)
        assert "reference" in exc.message and "agent" not in exc.message, exc.message
    # The failed snapshot's operation says the same to the project.
    with world.store.read() as s:
        op_id = s.scalar(select(Operation.id).where(Operation.kind == "snapshot"))
    assert leaks(world, mine.operation(op_id)) == []
    # The operator gets the node and what went wrong with it.
    exc = error_of(lambda: admin.stop(c["id"]))
    assert node in exc.message and "cannot reach the node agent" in exc.message
    deleting = error_of(lambda: mine.delete(c["id"]))
    assert leaks(world, deleting.message) == [] and "reference" in deleting.message
    world.agents[node].down = False


def test_a_node_named_in_a_refusal_is_scrubbed_for_a_project(
    world: World, http: TestClient
) -> None:
    mine, admin = sdk(http, world.project_token), sdk(http, world.admin_token)
    for agent in world.agents.values():  # the node's own storage step refuses
        agent.fail(
            "create_tenant",
            Conflict(f"node {agent.name} at {agent.url} refuses: ask {agent.url.split('//')[1]}"),
        )
    exc = error_of(lambda: mine.copy("demo"))
    assert isinstance(exc, Conflict) and "refuses" in exc.message
    assert leaks(world, exc.message) == [], exc.message
    assert leaks(world, error_of(lambda: admin.copy("demo", project=world.project)).message)


def test_a_down_node_still_needs_no_name(world: World, http: TestClient) -> None:
    mine = sdk(http, world.project_token)
    c = mine.copy("demo")
    with world.store.write() as s:
        s.execute(update(Node).values(health="down"))
    for call in (lambda: mine.stop(c["id"]), lambda: mine.logs(c["id"])):
        exc = error_of(call)
        assert isinstance(exc, Conflict) and leaks(world, exc.message) == [], exc.message


def test_a_routers_wake_names_no_node_either(world: World, http: TestClient) -> None:
    """A router shows a failed wake's reason to the customer's browser."""
    admin = sdk(http, world.admin_token)
    router = sdk(http, admin.create_token("router")["token"])
    c = sdk(http, world.project_token).copy("demo")
    node = admin.container(c["id"])["node"]
    with world.store.write() as s:
        s.execute(update(Node).where(Node.name == node).values(health="down"))
    exc = error_of(lambda: router.wake(c["id"]))
    assert isinstance(exc, Conflict) and "down" in exc.message
    assert leaks(world, exc.message) == [], exc.message
    assert node in error_of(lambda: admin.wake(c["id"])).message
    with world.store.write() as s:
        s.execute(update(Node).where(Node.name == node).values(health="up"))
    world.agents[node].down = True
    exc = error_of(lambda: router.wake(c["id"]))
    assert isinstance(exc, HostError) and leaks(world, exc.message) == [], exc.message
    assert node in error_of(lambda: admin.wake(c["id"])).message
    world.agents[node].down = False


def test_a_claim_link_without_a_router_is_no_node_address(world: World, http: TestClient) -> None:
    mine, admin = sdk(http, world.project_token), sdk(http, world.admin_token)
    c = mine.copy("demo")
    claim = mine.authorize(c["id"])
    assert claim["url"] == "" and claim["container_claim"]
    assert admin.container(c["id"])["ip"] in admin.authorize(c["id"])["url"]


def test_scrub_replaces_whole_names_urls_and_hosts_only() -> None:
    nodes = [("n1", "http://10.0.0.1:7070"), ("web", "http://web.lan:7070/")]
    assert scrub("tenant n1x on n1 at http://10.0.0.1:7070/v1", nodes) == (
        "tenant n1x on its node at its node/v1"
    )
    assert scrub("web-2 and web.lan:7070 and web", nodes) == "web-2 and its node and its node"
    assert scrub("tenant 10.0.0.12, node 10.0.0.1.", nodes) == "tenant 10.0.0.12, its node."
    assert scrub("on node n1, which is down", nodes) == "on its node, which is down"
