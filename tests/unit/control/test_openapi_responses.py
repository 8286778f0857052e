"""The API returns what its OpenAPI document says: every answer of the container
endpoints, made by the real service over real agents (fake drivers), validates
against the response schema the document gives for that operation and status, and
carries exactly the fields it lists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from starlette.testclient import TestClient

from hoody.control.api import PREFIX, create_app, openapi
from hoody.control.db import Store
from tests.control_support import World, make_world


@pytest.fixture
def world(store: Store) -> World:
    return make_world(store, nodes={"n1": {}})


@pytest.fixture
def http(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.fleet, monitor=False)) as client:
        yield client


def check(doc: dict[str, Any], method: str, path: str, answer: Any) -> dict[str, Any]:
    """Validate `answer` against the document's schema for (method, path, status)."""
    op = doc["paths"][PREFIX + path][method.lower()]
    responses = op["responses"]
    assert str(answer.status_code) in responses, (method, path, answer.status_code)
    schema = responses[str(answer.status_code)]["content"]["application/json"]["schema"]
    body = answer.json()
    jsonschema_rs.validator_for({**schema, "components": doc["components"]}).validate(body)
    one = schema.get("items", schema)
    refs = [r["$ref"] for r in one.get("anyOf", [one])]  # anyOf: admin and project views
    views = [set(doc["components"]["schemas"][r.rsplit("/", 1)[-1]]["properties"]) for r in refs]
    for item in body if isinstance(body, list) else [body]:
        assert set(item) in views, f"{method} {path}: {sorted(item)} is none of {views}"
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("token", ["admin", "project"])
def test_container_answers_validate_against_the_openapi_document(
    world: World, http: TestClient, token: str
) -> None:
    doc = openapi()
    auth = {"Authorization": f"Bearer {getattr(world, token + '_token')}"}

    def call(method: str, path: str, doc_path: str, body: Any = None) -> Any:
        answer = http.request(method, PREFIX + path, json=body, headers=auth)
        return check(doc, method, doc_path, answer)

    spec = {
        "metadata": {"customer": "cus_1"},
        "limits": {"memory_mib": 64, "io_mbps": 20},
        "env": {"PLAN": "pro"},
        "sleep": {"idle_seconds": 60, "mode": "frozen"},
    }
    if token == "admin":
        spec["project"] = world.project
    made = call("POST", "/containers/demo/copy", "/containers/{template}/copy", spec)
    cid = made["id"]
    assert made["limits"]["io_mbps"] == 20 and made["sleep"]["mode"] == "frozen"
    page = call("GET", "/containers", "/containers")
    assert [c["id"] for c in page["items"]] == [cid]
    one = "/containers/{cid}"
    call("GET", f"/containers/{cid}", one)
    for verb, body in (("stop", None), ("start", None), ("sleep", {"mode": "stopped"})):
        call("POST", f"/containers/{cid}/{verb}", one + f"/{verb}", body)
    assert call("POST", f"/containers/{cid}/wake", one + "/wake")["state"] == "running"
    if token == "admin":  # snapshots make templates: the operator's
        call("POST", f"/containers/{cid}/snapshot", one + "/snapshot", {})
    assert call("DELETE", f"/containers/{cid}", one)["existed"] is True
    assert call("DELETE", f"/containers/{cid}", one)["existed"] is False
    # Errors too: the document's ErrorOut.
    call("GET", "/containers/nope", one)
    call("POST", "/containers/demo/copy", "/containers/{template}/copy", {"limits": {"cpu": True}})


def test_an_answer_holds_the_fields_of_its_model_and_no_others(
    world: World, http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = world.fleet.copy(world.project, "demo")
    real = world.fleet.get_container

    def leaky(who: Any, cid: str) -> dict[str, Any]:
        return {**real(who, cid), "agent_token": "not for clients"}

    monkeypatch.setattr(world.fleet, "get_container", leaky)
    auth = {"Authorization": f"Bearer {world.project_token}"}
    answer = http.get(f"{PREFIX}/containers/{c['id']}", headers=auth)
    assert answer.status_code == 200 and "agent_token" not in answer.json()
