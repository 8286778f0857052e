"""The fleet's rules against both databases: SQLite and a real PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from hoody.agent.spec import TenantSpec
from hoody.control.db import Base, Container, IdempotencyKey, Store, Token
from hoody.control.service import Settings
from hoody.errors import Conflict, Exhausted, Forbidden, NotFound
from tests.control_support import make_world


def test_migrations_create_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_copy_list_get_stop_start_delete(store: Store) -> None:
    w = make_world(store)
    c = w.fleet.copy(w.project, "demo", TenantSpec(metadata={"customer": "cus_1", "plan": "pro"}))
    assert c["state"] == "running" and c["node"] in ("n1", "n2") and c["ip"]
    assert c["placement"].startswith("spread: ")
    assert c["id"] in w.agents[c["node"]].tenants
    assert w.fleet.get_container(w.who, c["id"]) == c
    assert w.fleet.stop(w.who, c["id"])["state"] == "stopped"
    assert w.fleet.start(w.who, c["id"])["state"] == "running"

    first = w.fleet.delete_container(w.who, c["id"])
    again = w.fleet.delete_container(w.who, c["id"])
    assert first == {"id": c["id"], "deleted": True, "existed": True}
    assert again == {"id": c["id"], "deleted": True, "existed": False}
    assert c["id"] not in w.agents[c["node"]].tenants
    with pytest.raises(NotFound, match="was deleted"):
        w.fleet.get_container(w.who, c["id"])
    assert w.fleet.list_containers(w.who)["items"] == []
    assert [x["id"] for x in w.fleet.list_containers(w.who, state="deleted")["items"]] == [c["id"]]
    with pytest.raises(NotFound):
        w.fleet.delete_container(w.who, "never-was")


def test_same_idempotency_key_same_container(store: Store) -> None:
    w = make_world(store)
    a = w.fleet.copy(w.project, "demo", TenantSpec(metadata={"e": "1"}), idempotency_key="evt_1")
    b = w.fleet.copy(w.project, "demo", TenantSpec(metadata={"e": "1"}), idempotency_key="evt_1")
    assert a == b
    assert sum(agent.copies for agent in w.agents.values()) == 1
    with pytest.raises(Conflict, match="different request"):
        w.fleet.copy(w.project, "demo", TenantSpec(metadata={"e": "2"}), idempotency_key="evt_1")
    # A deleted container is still what that key made: retries do not resurrect it.
    w.fleet.delete_container(w.who, a["id"])
    replay = w.fleet.copy(
        w.project, "demo", TenantSpec(metadata={"e": "1"}), idempotency_key="evt_1"
    )
    assert replay["id"] == a["id"] and replay["state"] == "deleted"


def test_failed_copy_leaves_nothing_and_frees_the_key(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}})
    w.agents["n1"].fail("create_tenant", Exhausted("pool full"))
    with pytest.raises(Exhausted, match="pool full"):
        w.fleet.copy(w.project, "demo", TenantSpec(name="t1"), idempotency_key="evt_9")
    with store.read() as s:
        assert s.scalars(select(Container)).all() == []
        assert s.scalars(select(IdempotencyKey)).all() == []
    w.agents["n1"].fail("create_tenant", None)
    assert (
        w.fleet.copy(w.project, "demo", TenantSpec(name="t1"), idempotency_key="evt_9")["id"]
        == "t1"
    )


def test_unreachable_node_is_marked_down_and_the_copy_goes_elsewhere(store: Store) -> None:
    w = make_world(store)
    w.agents["n1"].down = True
    c = w.fleet.copy(w.project, "demo")
    assert c["node"] == "n2"
    assert {n["name"]: n["state"] for n in w.fleet.list_nodes(w.admin)} == {
        "n1": "down",
        "n2": "up",
    }


def test_spread_and_pack(store: Store) -> None:
    w = make_world(store)
    nodes = [w.fleet.copy(w.project, "demo")["node"] for _ in range(6)]
    assert sorted(nodes) == ["n1"] * 3 + ["n2"] * 3
    packed = {w.fleet.copy(w.project, "demo", strategy="pack")["node"] for _ in range(3)}
    assert len(packed) == 1


def test_down_cordoned_and_full_nodes_get_no_tenants(store: Store) -> None:
    now = [1000.0]
    w = make_world(
        store,
        # n3: 1 GiB, half of it the host's reserve (auto, on a small node)
        nodes={"n1": {}, "n2": {}, "n3": {"memory_total": 1 << 30}},
        settings=Settings(heartbeat_timeout=10),
        clock=lambda: now[0],
    )
    w.fleet.set_cordon(w.admin, "n2", "cordoned")
    now[0] += 5
    w.heartbeat("n2")
    w.heartbeat("n3")
    now[0] += 6  # n1 last heard 11 s ago
    assert w.fleet.mark_down_stale() == ["n1"]
    c = w.fleet.copy(w.project, "demo")
    assert c["node"] == "n3"
    assert "n1 (down" in c["placement"] and "n2 (cordoned)" in c["placement"]
    w.fleet.copy(w.project, "demo")  # n3 now counts 512 MiB (not measured yet): full
    with pytest.raises(Exhausted, match="n3: full"):
        w.fleet.copy(w.project, "demo")
    w.heartbeat("n1")  # back up
    assert w.fleet.copy(w.project, "demo")["node"] == "n1"
    drain = w.fleet.set_cordon(w.admin, "n3", "draining")
    assert drain["state"] == "draining"
    assert drain["operation"]["result"] == {"containers_remaining": 2}


def test_list_filters_and_pages(store: Store) -> None:
    w = make_world(store)
    made = [
        w.fleet.copy(
            w.project, "demo", TenantSpec(metadata={"plan": "pro" if i % 2 else "free", "i": i})
        )
        for i in range(7)
    ]
    ids = []
    cursor = None
    while True:
        page = w.fleet.list_containers(w.who, limit=3, cursor=cursor)
        ids += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids == [c["id"] for c in made]
    pro = w.fleet.list_containers(w.who, metadata={"plan": "pro"})["items"]
    assert [c["metadata"]["i"] for c in pro] == [1, 3, 5]
    on_n1 = w.fleet.list_containers(w.admin, node="n1", template="demo")["items"]
    assert on_n1 and all(c["node"] == "n1" for c in on_n1)
    with pytest.raises(Forbidden, match="admin tokens"):  # where tenants run: the operator's
        w.fleet.list_containers(w.who, node="n1")


def test_snapshot_makes_a_project_template_and_delete_is_refused_while_used(
    store: Store,
) -> None:
    w = make_world(store)
    c = w.fleet.copy(w.project, "demo")
    with pytest.raises(Conflict, match="new name"):
        w.fleet.snapshot(w.who, c["id"])  # demo is shared: not ours to version
    op = w.fleet.snapshot(w.who, c["id"], "mine")
    assert op["state"] == "succeeded"
    assert op["result"] == {"template": "mine", "version": 1, "node": c["node"]}
    assert w.fleet.get_operation(w.who, op["id"]) == op
    tmpl = w.fleet.get_template(w.who, "mine")
    assert tmpl["project_id"] == w.project
    assert tmpl["versions"][0]["nodes"] == [{"node": c["node"], "state": "ready", "progress": 1.0}]
    child = w.fleet.copy(w.project, "mine")
    assert child["node"] == c["node"]  # the only node that has it
    with pytest.raises(Conflict, match="used by"):
        w.fleet.delete_template(w.who, "mine")
    with pytest.raises(Forbidden, match="shared"):
        w.fleet.delete_template(w.who, "demo")
    w.fleet.delete_container(w.who, child["id"])
    assert w.fleet.delete_template(w.who, "mine")["nodes"] == [c["node"]]
    assert ("mine", 1) not in w.agents[c["node"]].templates


def test_projects_are_isolated(store: Store) -> None:
    w = make_world(store)
    other = w.fleet.create_project(w.admin, "globex")["id"]
    them = w.fleet.authenticate(
        "Bearer " + w.fleet.create_token(w.admin, "project", project_id=other)["token"]
    )
    mine = w.fleet.copy(w.project, "demo")
    w.fleet.snapshot(w.who, mine["id"], "private")
    for call in (w.fleet.get_container, w.fleet.delete_container, w.fleet.stop):
        with pytest.raises(NotFound):
            call(them, mine["id"])
    assert w.fleet.list_containers(them)["items"] == []
    with pytest.raises(Forbidden):
        w.fleet.list_containers(them, project=w.project)
    with pytest.raises(NotFound):
        w.fleet.copy(other, "private")
    assert [t["name"] for t in w.fleet.list_templates(them)] == ["demo"]
    assert {t["name"] for t in w.fleet.list_templates(w.admin)} == {"demo", "private"}
    with pytest.raises(Forbidden):
        w.fleet.list_nodes(them)


def test_tokens_are_stored_hashed(store: Store) -> None:
    w = make_world(store)
    with store.read() as s:
        rows = s.scalars(select(Token)).all()
    stored = " ".join(f"{r.prefix} {r.hash}" for r in rows)
    assert w.admin_token not in stored and w.project_token not in stored
    assert all(len(r.hash) == 64 for r in rows)
    record = next(t for t in w.fleet.list_tokens(w.admin) if t["scope"] == "project")
    w.fleet.revoke_token(w.admin, record["id"])
    with pytest.raises(Exception, match="revoked"):
        w.fleet.authenticate(f"Bearer {w.project_token}")


def test_copy_into_a_missing_project_with_a_key_is_not_found(store: Store) -> None:
    w = make_world(store)
    with pytest.raises(NotFound, match="project 999"):
        w.fleet.copy(999, "demo", idempotency_key="evt_1")
