"""Placement is pure: a fleet snapshot in, a node and its explanation out."""

from __future__ import annotations

import pytest

from hoody.control.placement import NodeView, Request, place
from hoody.errors import Exhausted, InvalidInput

GIB = 1 << 30
REQ = Request("demo", 1, memory_mib=256, disk_mib=1024)


def node(name: str, free_gib: float, **kw: object) -> NodeView:
    args: dict[str, object] = {
        "memory_total": 16 * GIB,
        "memory_promised": int((16 - free_gib) * GIB),
        "disk_free": 100 * GIB,
    }
    args.update(kw)
    return NodeView(name, **args)  # type: ignore[arg-type]


def test_spread_picks_most_headroom_and_explains() -> None:
    p = place([node("a", 4), node("b", 10), node("c", 6)], REQ)
    assert p.node == "b"
    assert p.strategy == "spread"
    assert p.explanation.startswith("spread: b has the most memory headroom")
    assert "a 4.0 GiB free" in p.explanation and "c 6.0 GiB free" in p.explanation


def test_pack_picks_least_headroom_that_fits() -> None:
    p = place([node("a", 4), node("b", 10), node("c", 0.1)], REQ, "pack")
    assert p.node == "a"  # c cannot fit 256 MiB
    assert "least (best fit)" in p.explanation
    assert "c (full (memory" in p.explanation


def test_pack_fills_one_node_before_the_next() -> None:
    nodes = {"a": 2 * GIB, "b": 2 * GIB}
    chosen = []
    for _ in range(12):
        views = [
            NodeView(n, memory_total=2 * GIB, memory_promised=2 * GIB - free, disk_free=GIB * 50)
            for n, free in nodes.items()
        ]
        p = place(views, REQ, "pack")
        nodes[p.node] -= 256 << 20
        chosen.append(p.node)
    assert chosen[:8] == ["a"] * 8 and chosen[8:] == ["b"] * 4


def test_spread_alternates_between_equal_nodes() -> None:
    nodes = {"a": 0, "b": 0}
    for _ in range(10):
        views = [
            NodeView(n, memory_total=8 * GIB, memory_promised=p, tenants=p >> 28)
            for n, p in nodes.items()
        ]
        nodes[place(views, REQ).node] += 256 << 20
    assert nodes == {"a": 5 * (256 << 20), "b": 5 * (256 << 20)}


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        (node("x", 10, health="down"), "down (missed heartbeats)"),
        (node("x", 10, cordon="cordoned"), "cordoned"),
        (node("x", 10, cordon="draining"), "draining"),
        (node("x", 10, has_template=False), "does not have template demo v1"),
        (node("x", 0.1), "full (memory"),
        (node("x", 10, disk_free=GIB // 2), "full (disk"),
        (node("x", 10, tenants=5, max_tenants=5), "full (5 of 5 tenants)"),
    ],
)
def test_unusable_nodes_are_skipped_with_a_reason(view: NodeView, reason: str) -> None:
    p = place([view, node("ok", 1)], REQ)
    assert p.node == "ok"
    assert p.skipped["x"].startswith(reason)
    with pytest.raises(Exhausted) as err:
        place([view], REQ)
    assert reason in err.value.message and "hoody node serve --join" in err.value.message


def test_no_nodes_and_bad_strategy() -> None:
    with pytest.raises(Exhausted, match="no nodes"):
        place([], REQ)
    with pytest.raises(InvalidInput, match="spread or pack"):
        place([node("a", 1)], REQ, "random")  # type: ignore[arg-type]
