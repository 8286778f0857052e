"""Template versions reach every node: planning, claims, parents, failures, and copies
that wait for a version still on its way (fake agents; tests/integration/control runs
the same over real btrfs send/receive)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from hoody.agent.spec import TenantSpec
from hoody.control.db import Node, Operation, Store, TemplateReplica
from hoody.control.service import Settings
from hoody.errors import Exhausted, HostError
from tests.control_support import World, make_world


def replicas(w: World, name: str = "demo") -> dict[int, dict[str, str]]:
    """{version: {node: state}} as the API shows it."""
    tmpl = w.fleet.get_template(w.admin, name)
    return {v["version"]: {n["node"]: n["state"] for n in v["nodes"]} for v in tmpl["versions"]}


def ops(w: World) -> list[dict[str, Any]]:
    with w.store.read() as s:
        rows = s.scalars(select(Operation).where(Operation.kind == "replicate"))
        return [{"state": o.state, "target": o.target, **o.result} for o in rows]


def settle(w: World) -> None:
    """Run replication rounds until nothing is left to send."""
    for _ in range(10):
        if not w.fleet.replicate_once(wait=True):
            return
    raise AssertionError("replication did not settle")


@pytest.fixture
def world(store: Store) -> World:
    return make_world(store, nodes={"n1": {}, "n2": {"templates": []}, "n3": {"templates": []}})


def test_a_version_reaches_every_node_then_the_next_as_a_difference(world: World) -> None:
    w = world
    assert replicas(w) == {1: {"n1": "ready"}}
    settle(w)
    assert replicas(w) == {1: {"n1": "ready", "n2": "ready", "n3": "ready"}}
    assert w.agents["n2"].received == [("demo", 1, None)]
    assert w.agents["n3"].received == [("demo", 1, None)]
    assert {o["state"] for o in ops(w)} == {"succeeded"}

    # A snapshot on n2 makes v2 there; it travels to n1 and n3 as the change from v1.
    c = w.fleet.copy(w.project, "demo", TenantSpec(name="c1"))
    node = c["node"]
    snap = w.fleet.snapshot(w.admin, "c1", "demo")
    assert snap["result"] == {"template": "demo", "version": 2, "node": node}
    settle(w)
    assert replicas(w)[2] == {"n1": "ready", "n2": "ready", "n3": "ready"}
    others = [n for n in ("n1", "n2", "n3") if n != node]
    for name in others:
        assert w.agents[name].received[-1] == ("demo", 2, 1)


def test_a_receiver_that_cannot_use_the_parent_gets_the_version_whole(store: Store) -> None:
    # n3 holds a v1 built on its own: the difference from n1's v1 does not apply there.
    w = make_world(store, nodes={"n1": {}, "n2": {"templates": []}, "n3": {}})
    settle(w)
    w.agents["n1"].add_template("demo", 2)
    w.heartbeat("n1")
    settle(w)
    assert w.agents["n3"].received[-1] == ("demo", 2, None)
    assert w.agents["n2"].received[-1] == ("demo", 2, 1)
    assert replicas(w)[2] == {"n1": "ready", "n2": "ready", "n3": "ready"}


def test_a_failed_transfer_leaves_no_claim_and_is_retried_later(store: Store) -> None:
    now = [1000.0]
    w = make_world(
        store,
        nodes={"n1": {}, "n2": {"templates": []}},
        settings=Settings(replication_retry=15),
        clock=lambda: now[0],
    )
    w.agents["n1"].fail("send_template_version", HostError("btrfs send: short write"))
    assert [t.target for t in w.fleet.replicate_once(wait=True)] == ["n2"]
    assert replicas(w) == {1: {"n1": "ready"}}
    (op,) = ops(w)
    assert op["state"] == "failed" and op["source"] == "n1"
    assert w.fleet.replicate_once(wait=True) == []  # not again within 15 s

    w.agents["n1"].fail("send_template_version", None)
    now[0] += 16
    settle(w)
    assert replicas(w) == {1: {"n1": "ready", "n2": "ready"}}


def test_a_claim_of_a_dead_process_is_dropped_and_sent_again(store: Store) -> None:
    now = [1000.0]
    w = make_world(store, nodes={"n1": {}, "n2": {"templates": []}}, clock=lambda: now[0])
    planned = w.fleet._plan()
    claimed = w.fleet._claim(planned[0])  # claimed by a process that then died
    assert claimed is not None
    assert replicas(w) == {1: {"n1": "ready", "n2": "receiving"}}
    assert w.fleet.replicate_once(wait=True) == []  # n2 is busy receiving
    w.heartbeat("n2")  # heartbeats leave a receiving replica alone
    assert replicas(w) == {1: {"n1": "ready", "n2": "receiving"}}
    now[0] += 61
    settle(w)
    assert replicas(w) == {1: {"n1": "ready", "n2": "ready"}}
    assert sorted(o["state"] for o in ops(w)) == ["failed", "succeeded"]


def test_deleting_a_template_while_it_travels_leaves_it_nowhere(world: World) -> None:
    w = world
    w.fleet.delete_template(w.admin, "demo")
    for name in ("n1", "n2", "n3"):
        assert not w.agents[name].templates
    assert w.fleet.replicate_once(wait=True) == []


def _receiving_only(w: World) -> None:
    """n1 holds demo v1 but is cordoned; n2 is receiving it; n3 is gone."""
    w.fleet.set_cordon(w.admin, "n1", "cordoned")
    with w.store.write() as s:
        s.execute(update(Node).where(Node.name == "n3").values(health="down"))
    planned = [t for t in w.fleet._plan() if t.target == "n2"]
    assert w.fleet._claim(planned[0]) is not None


def test_a_copy_waits_for_a_node_still_receiving_the_template(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}, "n2": {"templates": []}, "n3": {}})
    _receiving_only(w)
    result: dict[str, Any] = {}
    copying = threading.Thread(
        target=lambda: result.update(w.fleet.copy(w.project, "demo")), daemon=True
    )
    copying.start()
    time.sleep(0.8)
    assert copying.is_alive() and not result  # waiting, not failed
    w.agents["n2"].add_template("demo", 1)
    with w.store.write() as s:
        s.execute(
            update(TemplateReplica)
            .where(TemplateReplica.state == "receiving")
            .values(state="ready", progress=1.0)
        )
    copying.join(10)
    assert result["node"] == "n2" and result["state"] == "running"


def test_a_copy_gives_up_waiting_with_a_message_that_says_why(store: Store) -> None:
    w = make_world(
        store,
        nodes={"n1": {}, "n2": {"templates": []}, "n3": {}},
        settings=Settings(replica_wait=0.6),
    )
    _receiving_only(w)
    with pytest.raises(Exhausted, match="still on its way to n2"):
        w.fleet.copy(w.project, "demo")
    assert w.fleet.list_containers(w.who)["items"] == []
