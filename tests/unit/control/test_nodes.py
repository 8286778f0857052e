"""Joining nodes: a name belongs to one server at a time."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from hoody.control.db import Node, Store
from hoody.errors import Conflict
from tests.control_support import make_world


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
