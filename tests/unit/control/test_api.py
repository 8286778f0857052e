"""/api/v1 through the SDK (in-process, no sockets): shapes, auth, errors, docs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hoody.agent.spec import TenantSpec
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Store
from hoody.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from tests.control_support import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = Store(f"sqlite:///{tmp_path / 'control.db'}")
    yield make_world(store)
    store.close()


@pytest.fixture
def http(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.fleet, monitor=False)) as tc:
        yield tc


def sdk(http: TestClient, token: str) -> Client:
    # Each SDK client needs its own headers: a fresh TestClient over the same app.
    return Client("http://testserver", token, http=TestClient(http.app))


def test_copy_through_the_sdk_with_idempotency(world: World, http: TestClient) -> None:
    api = sdk(http, world.project_token)
    a = api.copy("demo", TenantSpec(metadata={"customer": "cus_1"}), idempotency_key="evt_1")
    b = api.copy("demo", TenantSpec(metadata={"customer": "cus_1"}), idempotency_key="evt_1")
    assert a == b and a["state"] == "running"
    assert api.container(a["id"]) == a
    assert [c["id"] for c in api.iter_containers(metadata={"customer": "cus_1"})] == [a["id"]]
    assert api.stop(a["id"])["state"] == "stopped"
    assert api.start(a["id"])["state"] == "running"
    assert api.delete(a["id"])["existed"] is True
    assert api.delete(a["id"])["existed"] is False
    assert api.whoami() == {"scope": "project", "project_id": world.project, "node": None}
    assert [t["name"] for t in api.templates()] == ["demo"]


def test_another_projects_token_cannot_read_copy_into_or_delete(
    world: World, http: TestClient
) -> None:
    admin = sdk(http, world.admin_token)
    other = admin.create_project("globex")
    them = sdk(http, admin.create_token("project", project_id=other["id"])["token"])
    mine = sdk(http, world.project_token)
    c = mine.copy("demo")
    mine.snapshot(c["id"], "private")
    with pytest.raises(NotFound):
        them.container(c["id"])
    with pytest.raises(NotFound):
        them.delete(c["id"])
    with pytest.raises(NotFound):
        them.copy("private")
    with pytest.raises(Forbidden):
        them.copy("demo", project=world.project)
    with pytest.raises(Forbidden):
        them.containers(project=world.project)
    assert them.containers()["items"] == []
    assert mine.container(c["id"])["state"] == "running"  # untouched
    with pytest.raises(Forbidden):
        them.nodes()
    with pytest.raises(Forbidden):
        them.create_project("evil")


def test_admin_manages_nodes_and_projects(world: World, http: TestClient) -> None:
    admin = sdk(http, world.admin_token)
    assert [n["name"] for n in admin.nodes()] == ["n1", "n2"]
    assert admin.cordon("n1")["state"] == "cordoned"
    c = admin.copy("demo", project=world.project)
    assert c["node"] == "n2"
    assert admin.uncordon("n1")["state"] == "up"
    drain = admin.drain("n2")
    assert admin.operation(drain["operation"]["id"])["result"] == {"containers_remaining": 1}
    admin.delete(c["id"])
    assert admin.operation(drain["operation"]["id"])["state"] == "succeeded"
    with pytest.raises(Forbidden, match="give `project`"):
        admin.copy("demo")
    with pytest.raises(Conflict):
        admin.create_project("acme")
    join = admin.create_token("join")
    node = sdk(http, join["token"])
    joined = node.join("n9", "http://127.0.0.1:9", "agent-token")
    assert joined["node"]["state"] == "up" and joined["token"].startswith("hdy_")
    with pytest.raises(Conflict, match="join token only registers new nodes"):
        node.join("n9", "http://127.0.0.1:10", "someone-elses-agent")
    assert sdk(http, joined["token"]).join("n9", "http://127.0.0.1:10", "a2")["token"] is None
    with pytest.raises(Forbidden):
        node.containers()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/containers/demo/copy", {"content": b"{not json"}, 400),
        ("POST", "/containers/demo/copy", {"content": b"[1]"}, 400),
        ("POST", "/containers/demo/copy", {"content": b'{"limits": {"memory_mib": NaN}}'}, 400),
        ("POST", "/containers/demo/copy", {"json": {"version": 10**40}}, 400),
        ("POST", "/containers/demo/copy", {"json": {"name": "Bad Name!"}}, 400),
        ("POST", "/containers/demo/copy", {"json": {"surprise": 1}}, 400),
        ("POST", "/containers/demo/copy", {"json": {"limits": {"memory_mib": 1}}}, 400),
        ("POST", "/containers/nope/copy", {"json": {}}, 404),
        ("POST", "/containers/demo/copy", {"headers": {"Idempotency-Key": "a b"}}, 400),
        ("GET", "/containers/x%00y", {}, 404),
        ("GET", "/containers?limit=99999999999999999999", {}, 400),
        ("GET", "/containers?cursor=zzz", {}, 400),
        ("GET", "/containers?metadata=nokey", {}, 400),
        ("GET", "/containers?state=%00", {}, 400),
        ("DELETE", "/tokens/99999999999999999999", {}, 404),
        ("GET", "/operations/..%2f", {}, 404),
        ("GET", "/nope", {}, 404),
        ("PUT", "/containers", {}, 405),
    ],
)
def test_malformed_requests_get_json_4xx(
    world: World, http: TestClient, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    headers = {"Authorization": f"Bearer {world.project_token}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    r = http.request(method, f"/api/v1{path}", headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"code", "message"}


def test_missing_and_wrong_tokens_are_401(http: TestClient) -> None:
    for header in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer hdy_aaaaaaaaaa_" + "x" * 40},
    ):
        r = http.get("/api/v1/containers", headers=header)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    with pytest.raises(Unauthorized):
        Client(
            "http://testserver", "hdy_aaaaaaaaaa_" + "x" * 40, http=TestClient(http.app)
        ).whoami()


def test_body_too_large_is_413(world: World, http: TestClient) -> None:
    auth = {"Authorization": f"Bearer {world.project_token}"}
    r = http.post(
        "/api/v1/containers/demo/copy", content=b"{" + b" " * (2 << 20) + b"}", headers=auth
    )
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "too_large" and "1048576-byte limit" in error["message"], error
    # Without a length (chunked): refused once the bytes pass the limit.
    chunks = (b" " * 65536 for _ in range(40))
    r = http.post("/api/v1/containers/demo/copy", content=chunks, headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    assert sdk(http, world.project_token).containers()["items"] == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize(
    ("path", "body", "admin"),
    [
        ("/containers/demo/copy", '{"limits": {"cpu": %s}}', False),
        ("/containers/demo/copy", '{"metadata": {"n": %s}}', False),
        ("/nodes/n1/heartbeat", '{"headroom": {"memory_total_bytes": %s}}', True),
        ("/router/activity", '{"seen": {"x": %s}}', True),
    ],
)
def test_numbers_that_are_not_finite_are_400(
    world: World, http: TestClient, path: str, body: str, admin: bool, number: str
) -> None:
    token = world.admin_token if admin else world.project_token
    r = http.post(
        f"/api/v1{path}", content=body % number, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 400, r.text
    assert "finite numbers" in r.json()["error"]["message"], r.text
    assert sdk(http, world.admin_token).containers(project=world.project)["items"] == []


def test_openapi_document_and_docs_page(http: TestClient) -> None:
    spec = http.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/containers/{template}/copy" in spec["paths"]
    assert "CopyBody" in spec["components"]["schemas"]
    page = http.get("/api/v1/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/api/v1/containers/{template}/copy" in page.text
    assert "<script" not in page.text and "<link" not in page.text  # nothing from a CDN


def test_invalid_sdk_config_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("HOODY_URL", raising=False)
    monkeypatch.delenv("HOODY_TOKEN", raising=False)
    with pytest.raises(InvalidInput, match="hoody login"):
        Client()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/projects/²"),
        ("DELETE", "/api/v1/tokens/²"),
        ("GET", "/api/v1/scripts/²"),
        ("DELETE", "/api/v1/scripts/²/hello"),
        ("GET", "/api/v1/containers?limit=²"),
    ],
)
def test_digits_that_are_not_ascii_are_refused_not_a_500(
    world: World, http: TestClient, method: str, path: str
) -> None:
    """str.isdigit() takes "²", which int() cannot read: schemathesis found it as a
    500 on DELETE /api/v1/scripts/²/0."""
    r = http.request(method, path, headers={"Authorization": f"Bearer {world.admin_token}"})
    assert r.status_code in (400, 404), r.text


def test_the_route_table_is_sent_again_only_once_it_changed(world: World, http: TestClient) -> None:
    auth = {"Authorization": f"Bearer {world.admin_token}"}
    first = http.get("/api/v1/router/table", headers=auth)
    assert first.status_code == 200 and first.json()["routes"] == {}
    tag = first.headers["etag"]
    same = http.get("/api/v1/router/table", headers={**auth, "If-None-Match": tag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag
    made = sdk(http, world.project_token).copy("demo")
    changed = http.get("/api/v1/router/table", headers={**auth, "If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert list(changed.json()["routes"]) == [made["id"]]
    other = http.get("/api/v1/router/table", headers={**auth, "If-None-Match": '"not-it"'})
    assert other.status_code == 200 and other.json() == changed.json()
    # The ETag is no way around the token.
    r = http.get("/api/v1/router/table", headers={"If-None-Match": changed.headers["etag"]})
    assert r.status_code == 401
