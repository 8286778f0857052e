"""A node's capacity as the control plane counts it: reported figures + pending copies."""

from __future__ import annotations

from typing import Any

import pytest

from hoody.control.capacity import (
    DEFAULT_DISK_NEED,
    Learned,
    Pending,
    estimate,
    learned,
    node_view,
    resolve_request,
)
from hoody.control.db import Node
from hoody.control.placement import NodeView

MIB = 1 << 20
GIB = 1 << 30


def row(name: str, headroom: dict[str, Any], health: str = "up") -> Node:
    return Node(
        name=name,
        url="http://x",
        agent_token="t",
        health=health,
        cordon="none",
        last_heartbeat=100.0,
        headroom=headroom,
    )


USAGE = [
    {"name": "demo", "version": 1, "tenants": 3, "memory_p90_bytes": 7 * MIB, "disk_p90_bytes": MIB}
]


def test_learned_is_the_largest_p90_among_up_nodes() -> None:
    nodes = [
        row("a", {"templates": USAGE}),
        row("b", {"templates": [{**USAGE[0], "memory_p90_bytes": 9 * MIB, "tenants": 1}]}),
        row("c", {"templates": [{**USAGE[0], "memory_p90_bytes": 99 * MIB}]}, health="down"),
    ]
    known = learned(nodes, "demo", 1)
    assert (known.memory, known.tenants) == (9 * MIB, 4)
    assert learned(nodes, "demo", 2) == Learned()


@pytest.mark.parametrize(
    ("asked", "template", "known", "want"),
    [
        (
            {"memory_request_mib": 32},
            {"memory_request_mib": 64},
            Learned(7 * MIB),
            (32 * MIB, "asked"),
        ),
        (
            {},
            {"memory_request_mib": 64, "memory_mib": 256.0},
            Learned(7 * MIB),
            (64 * MIB, "template"),
        ),
        ({}, {"memory_request_mib": None}, Learned(7 * MIB, 0, 3), (7 * MIB, "learned")),
        ({}, {}, Learned(), (256 * MIB, "limit")),
        ({}, {}, Learned(900 * MIB, 0, 3), (256 * MIB, "learned")),  # never above the limit
    ],
)
def test_request_resolution(
    asked: dict[str, Any], template: dict[str, Any], known: Learned, want: tuple[int, str]
) -> None:
    assert resolve_request(asked, template, known, 256) == want


def test_view_adds_copies_the_node_may_not_have_counted_yet() -> None:
    headroom = {
        "memory_total_bytes": 24 * GIB,
        "overcommit": 1.0,
        "memory_reserve_bytes": 2 * GIB,
        "memory_requested_bytes": GIB,
        "memory_measured_bytes": 3 * GIB,
        "memory_committed_bytes": 3 * GIB,
        "disk_total_bytes": 20 * GIB,
        "disk_free_bytes": 19 * GIB,
        "tenants": 300,
    }
    mine = Pending(tenants=305, requested=GIB, recent=(7 * MIB,) * 5, creating=2)
    view = node_view(
        row("a", headroom),
        mine,
        has_template=True,
        default_overcommit=1.0,
        pending_disk=2 * DEFAULT_DISK_NEED,
    )
    assert view.memory_committed == 3 * GIB + 35 * MIB
    assert view.memory_free == 24 * GIB - 2 * GIB - view.memory_committed
    assert view.disk_free == 19 * GIB - 128 * MIB
    assert view.disk_margin == 2 * GIB
    assert view.tenants == 305


@pytest.mark.parametrize(
    ("counted", "want"),
    [
        (300, 8 + 7 + 6),  # the three newest copies are not in its figures
        (303, 0),  # every copy is: the window's copies were made before it measured
        (310, 0),  # it still counts tenants deleted since
        (290, 8 + 7 + 6 + 5 + 4),  # never more than the copies made in the window
    ],
)
def test_only_copies_beyond_the_nodes_count_are_added(counted: int, want: int) -> None:
    # A node measured while a burst of copies was placed: counting every copy of the
    # window again made it look fuller than its peers, and spread sent it fewer (a
    # fleet test saw 12/11/7 of 30 copies with equal requests).
    headroom = {
        "memory_total_bytes": 24 * GIB,
        "memory_committed_bytes": 3 * GIB,
        "memory_counted_tenants": counted,
    }
    mine = Pending(tenants=303, requested=GIB, recent=(8 * MIB, 7 * MIB, 6 * MIB, 5 * MIB, 4 * MIB))
    view = node_view(row("a", headroom), mine, has_template=True, default_overcommit=1.0)
    assert view.memory_committed == 3 * GIB + want * MIB


def test_an_agent_that_reports_only_limits_is_counted_by_them() -> None:
    view = node_view(
        row("old", {"memory_total_bytes": 8 * GIB, "memory_promised_bytes": 4 * GIB}),
        Pending(),
        has_template=True,
        default_overcommit=1.0,
    )
    assert view.memory_committed == 4 * GIB
    assert view.memory_reserve == GIB - GIB // 5 + GIB // 5  # auto: 10 %, at least 1 GiB


@pytest.mark.parametrize(
    ("free", "disk_free", "max_tenants", "want"),
    [
        (10 * GIB, 100 * GIB, None, (10 * 1024 // 8, "memory")),
        (10 * GIB, GIB + 10 * MIB, None, (10, "disk")),
        (10 * GIB, 100 * GIB, 7, (2, "tenants")),
        (-GIB, 100 * GIB, None, (0, "memory")),
    ],
)
def test_estimate_of_further_tenants(
    free: int, disk_free: int, max_tenants: int | None, want: tuple[int, str]
) -> None:
    view = NodeView(
        "a",
        memory_total=free,
        memory_committed=0,
        disk_free=disk_free,
        disk_margin=GIB,
        tenants=5,
        max_tenants=max_tenants,
    )
    assert estimate(view, 8 * MIB, MIB) == want
