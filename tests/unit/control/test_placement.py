"""Placement is pure: a fleet snapshot in, a node and its explanation out."""

from __future__ import annotations

import pytest

from hoody.control.placement import NodeView, Request, place
from hoody.errors import Exhausted, InvalidInput

GIB = 1 << 30
MIB = 1 << 20
REQ = Request("demo", 1, memory_mib=256, memory_request=256 * MIB, disk=64 * MIB)


def node(name: str, free_gib: float, **kw: object) -> NodeView:
    """A 16 GiB node, reserve 1 GiB, with `free_gib` left to give out."""
    committed = int((15 - free_gib) * GIB)
    args: dict[str, object] = {
        "memory_total": 16 * GIB,
        "memory_reserve": GIB,
        "memory_requested": committed,
        "memory_committed": committed,
        "disk_free": 100 * GIB,
        "disk_margin": GIB,
    }
    args.update(kw)
    return NodeView(name, **args)  # type: ignore[arg-type]


def test_spread_picks_most_memory_free_and_explains() -> None:
    p = place([node("a", 4), node("b", 10), node("c", 6)], REQ)
    assert p.node == "b"
    assert p.strategy == "spread"
    assert p.explanation.startswith("spread: b has the least of its memory committed (33 %")
    assert "256 MiB request (limit)" in p.explanation
    assert "a 4.0 GiB free" in p.explanation and "c 6.0 GiB free" in p.explanation


def test_pack_picks_least_memory_free_that_fits() -> None:
    p = place([node("a", 4), node("b", 10), node("c", 0.1)], REQ, "pack")
    assert p.node == "a"  # c cannot fit 256 MiB
    assert "least memory free (best fit)" in p.explanation
    assert "c (full (memory" in p.explanation


def test_pack_fills_one_node_before_the_next() -> None:
    committed = {"a": 0, "b": 0}
    chosen = []
    for _ in range(12):
        views = [
            NodeView(n, memory_total=2 * GIB, memory_committed=c, disk_free=50 * GIB)
            for n, c in committed.items()
        ]
        p = place(views, REQ, "pack")
        committed[p.node] += 256 * MIB
        chosen.append(p.node)
    assert chosen[:8] == ["a"] * 8 and chosen[8:] == ["b"] * 4


def test_spread_alternates_between_equal_nodes() -> None:
    committed = {"a": 0, "b": 0}
    for _ in range(10):
        views = [
            NodeView(n, memory_total=8 * GIB, memory_committed=c, tenants=c >> 28)
            for n, c in committed.items()
        ]
        committed[place(views, REQ).node] += 256 * MIB
    assert committed == {"a": 5 * 256 * MIB, "b": 5 * 256 * MIB}


def test_spread_does_not_let_kilobytes_of_use_decide_between_equal_nodes() -> None:
    views = [
        NodeView("a", memory_total=24 * GIB, memory_committed=40 * MIB + 7000, tenants=10),
        NodeView("b", memory_total=24 * GIB, memory_committed=40 * MIB, tenants=11),
        NodeView("c", memory_total=24 * GIB, memory_committed=39 * MIB, tenants=10),
    ]
    assert place(views, REQ).node == "a"  # fewest tenants, then name: not c's 1 MiB less
    views.append(NodeView("d", memory_total=24 * GIB, memory_committed=3 * GIB, tenants=1))
    assert place(views, REQ).node == "a", "d has fewer tenants but 12 % committed"


def test_limits_past_the_memory_fit_while_requests_and_use_do() -> None:
    # 24 GiB node, 1,000 tenants of 256 MiB limits (250 GiB) using 5 MiB each.
    busy = NodeView(
        "n",
        memory_total=24 * GIB,
        memory_reserve=2 * GIB,
        memory_requested=1000 * 5 * MIB,
        memory_measured=1000 * 5 * MIB,
        memory_committed=1000 * 5 * MIB,
        disk_free=10 * GIB,
        disk_margin=GIB,
        tenants=1000,
    )
    learned = Request("demo", 1, memory_mib=256, memory_request=5 * MIB, request_source="learned")
    assert place([busy], learned).node == "n"


# Each row: the node's figures (GiB) and the request (MiB), and the figure named.
MEMORY_CASES = [
    # committed, requested, measured, reserve, overcommit, request → refused by
    (15.9, 15.9, 2.0, 1.0, 1.0, 256, "refused by requested memory"),
    (15.9, 2.0, 15.9, 1.0, 1.0, 256, "refused by measured use"),
    (15.5, 15.5, 1.0, 1.0, 1.0, 256, "refused by the host reserve (1.0 GiB)"),
    (0.0, 0.0, 0.0, 1.0, 1.0, 17 * 1024, "refused by this tenant's request alone (17.0 GiB"),
    (0.0, 0.0, 0.0, 1.0, 1.0, 16 * 1024, "refused by the host reserve"),
    (15.0, 15.0, 2.0, 1.0, 1.5, 256, None),  # overcommit 1.5: 24 GiB to count
    (14.0, 14.0, 14.0, 1.0, 1.0, 1024, None),  # exactly full still fits
    (14.0, 14.0, 14.0, 1.0, 1.0, 1025, "refused by the host reserve"),
]


@pytest.mark.parametrize(
    ("committed", "requested", "measured", "reserve", "overcommit", "ask", "figure"),
    MEMORY_CASES,
)
def test_memory_refusals_name_the_figure(
    committed: float,
    requested: float,
    measured: float,
    reserve: float,
    overcommit: float,
    ask: int,
    figure: str | None,
) -> None:
    view = NodeView(
        "x",
        memory_total=16 * GIB,
        overcommit=overcommit,
        memory_reserve=int(reserve * GIB),
        memory_committed=int(committed * GIB),
        memory_requested=int(requested * GIB),
        memory_measured=int(measured * GIB),
        disk_free=100 * GIB,
    )
    req = Request("demo", 1, memory_mib=max(ask, 256), memory_request=ask * MIB)
    if figure is None:
        assert place([view], req).node == "x"
        return
    with pytest.raises(Exhausted) as err:
        place([view], req)
    assert f"x: full (memory, {figure}" in err.value.message
    assert "x " in err.value.message and "reserve" in err.value.message


def test_disk_counts_what_tenants_measure_plus_a_margin() -> None:
    # 3 GiB free, 1 GiB margin: 2 GiB of 64 MiB tenants fit; their 1 GiB limits do not matter.
    assert place([node("x", 10, disk_free=3 * GIB)], REQ).node == "x"
    big = Request("demo", 1, memory_mib=256, memory_request=256 * MIB, disk=int(2.5 * GIB))
    with pytest.raises(Exhausted) as err:
        place([node("x", 10, disk_free=3 * GIB)], big)
    assert "full (disk, refused by measured disk: 3.0 GiB free" in err.value.message
    assert "1.0 GiB margin" in err.value.message


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        (node("x", 10, health="down"), "down (missed heartbeats)"),
        (node("x", 10, cordon="cordoned"), "cordoned"),
        (node("x", 10, cordon="draining"), "draining"),
        (node("x", 10, has_template=False), "does not have template demo v1"),
        (node("x", 0.1), "full (memory"),
        (node("x", 10, disk_free=GIB), "full (disk"),
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
