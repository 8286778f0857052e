"""The node's wake-only token (what routers hold) wakes tenants and opens nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hoody.agent.api import create_app
from hoody.agent.client import wake_token
from hoody.agent.engine import Node, TemplateSource
from tests.fake_node import fake_node

TOKEN = "secret"
FULL = {"Authorization": f"Bearer {TOKEN}"}
WAKE = {"Authorization": f"Bearer {wake_token(TOKEN)}"}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Node, TestClient]]:
    node = fake_node(tmp_path, "wk")
    source = TemplateSource(lambda t: (t / "app").mkdir(), "test")
    node.create_template("app", source, args=["/app"])
    with TestClient(create_app(node, TOKEN)) as http:
        yield node, http
    node.store.close()


def test_the_wake_token_wakes_and_does_nothing_else(agent: tuple[Node, TestClient]) -> None:
    node, http = agent
    tid = http.post("/v1/templates/app/copy", json={"name": "t"}, headers=FULL).json()["id"]
    assert http.post(f"/v1/tenants/{tid}/sleep", json={"mode": "frozen"}, headers=FULL).is_success
    r = http.post(f"/v1/tenants/{tid}/wake", json={}, headers=WAKE)
    assert r.status_code == 200, r.text
    assert r.headers["hoody-woke"] == "frozen"
    assert node.tenant(tid).status == "running"
    for method, path in [
        ("GET", "/v1/node"),
        ("GET", f"/v1/tenants/{tid}"),
        ("POST", f"/v1/tenants/{tid}/sleep"),
        ("POST", f"/v1/tenants/{tid}/stop"),
        ("POST", f"/v1/tenants/{tid}/exec"),
        ("DELETE", f"/v1/tenants/{tid}"),
        ("POST", "/v1/templates/app/copy"),
    ]:
        r = http.request(method, path, json={}, headers=WAKE)
        assert r.status_code == 403, (method, path, r.text)
        assert "wake-only token" in r.json()["error"]["message"]
    assert node.tenant(tid).status == "running"
    assert [t.id for t in node.tenants()] == [tid]


def test_a_wrong_token_wakes_nothing(agent: tuple[Node, TestClient]) -> None:
    node, http = agent
    tid = http.post("/v1/templates/app/copy", json={"name": "t"}, headers=FULL).json()["id"]
    http.post(f"/v1/tenants/{tid}/sleep", json={"mode": "frozen"}, headers=FULL)
    for wrong in (wake_token("another agent's token"), wake_token(TOKEN)[:-1], ""):
        r = http.post(f"/v1/tenants/{tid}/wake", headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 401, r.text
    assert node.tenant(tid).status == "sleeping"
