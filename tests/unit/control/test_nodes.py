"""Joining nodes: a name belongs to one server at a time."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from hoody.control.db import Node, Store, Token
from hoody.errors import Conflict, Forbidden
from tests.control_support import World, make_world


def test_a_second_server_cannot_take_the_name_of_a_node_that_is_up(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}})
    with pytest.raises(Conflict, match="hoody node init --name"):
        w.fleet.join(w.admin, "n1", "http://10.0.0.9:7070", "other-token")
    # The same server rejoining (after a restart) is fine.
    w.fleet.join(w.admin, "n1", w.agents["n1"].url, w.agents["n1"].token)
    # A node that moved joins again once it is down.
    with w.store.write() as s:
        s.execute(update(Node).where(Node.name == "n1").values(health="down"))
    joined = w.fleet.join(w.admin, "n1", "http://10.0.0.9:7070", "other-token")
    assert joined["node"]["url"] == "http://10.0.0.9:7070"


def _node_row(w: World, name: str) -> tuple[str, str, str]:
    with w.store.read() as s:
        node = s.scalar(select(Node).where(Node.name == name))
        assert node is not None
        return node.url, node.agent_token, node.health


def _live_node_tokens(w: World, name: str) -> list[int]:
    with w.store.read() as s:
        return list(
            s.scalars(select(Token.id).where(Token.node_name == name, Token.revoked.is_(False)))
        )


def test_a_join_token_registers_new_nodes_only(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}})
    joiner = w.fleet.authenticate(f"Bearer {w.fleet.create_token(w.admin, 'join')['token']}")
    # n1 is down: before, any join-token holder could point it at their own server.
    with w.store.write() as s:
        s.execute(update(Node).where(Node.name == "n1").values(health="down"))
    before, tokens = _node_row(w, "n1"), _live_node_tokens(w, "n1")
    with pytest.raises(Conflict, match="own credential") as err:
        w.fleet.join(joiner, "n1", "http://10.0.0.9:7070", "attacker-token")
    assert err.value.status == 409 and "node.token" in err.value.message
    assert _node_row(w, "n1") == before and _live_node_tokens(w, "n1") == tokens
    # A new name is what a join token is for.
    joined = w.fleet.join(joiner, "n9", "http://10.0.0.9:7070", "t9")
    assert joined["token"].startswith("hdy_") and joined["node"]["name"] == "n9"


def test_a_node_rejoins_with_its_own_credential_even_at_a_new_url(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}, "n2": {}})
    joiner = w.fleet.authenticate(f"Bearer {w.fleet.create_token(w.admin, 'join')['token']}")
    first = w.fleet.join(joiner, "n3", "http://10.0.0.3:7070", "t3")
    own = w.fleet.authenticate(f"Bearer {first['token']}")
    # Restarted at another address while still marked up: its credential proves it.
    again = w.fleet.join(own, "n3", "http://10.0.0.33:7070", "t3-new")
    assert again["token"] is None and again["node"]["url"] == "http://10.0.0.33:7070"
    assert _node_row(w, "n3") == ("http://10.0.0.33:7070", "t3-new", "up")
    assert w.fleet.heartbeat(own, "n3", {})["name"] == "n3"  # the same token still works


def test_one_nodes_credential_cannot_register_another(store: Store) -> None:
    w = make_world(store, nodes={"n1": {}})
    joiner = w.fleet.authenticate(f"Bearer {w.fleet.create_token(w.admin, 'join')['token']}")
    a = w.fleet.authenticate(
        f"Bearer {w.fleet.join(joiner, 'na', 'http://10.0.0.1:1', 'ta')['token']}"
    )
    before, tokens = _node_row(w, "n1"), _live_node_tokens(w, "n1")
    with pytest.raises(Forbidden, match="node na's credential"):
        w.fleet.join(a, "n1", "http://10.0.0.9:7070", "attacker-token")
    with pytest.raises(Forbidden):
        w.fleet.join(a, "brand-new", "http://10.0.0.9:7070", "attacker-token")
    assert _node_row(w, "n1") == before and _live_node_tokens(w, "n1") == tokens
    assert [n["name"] for n in w.fleet.list_nodes(w.admin)] == ["n1", "na"]
