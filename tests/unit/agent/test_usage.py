"""What tenants use → learned requests and the node's placement figures (pure)."""

from __future__ import annotations

import pytest

from hoody.agent.usage import (
    TenantUse,
    learn,
    node_figures,
    parse_reserve,
    percentile,
    request_of,
    reserve_bytes,
)
from hoody.errors import InvalidInput

MIB = 1 << 20
GIB = 1 << 30


def use(
    tid: str,
    memory_mib: int,
    *,
    running: bool = True,
    request: int | None = None,
    version: int = 1,
    disk: int = 0,
) -> TenantUse:
    return TenantUse(
        tid,
        "demo",
        version,
        running,
        256 * MIB,
        request * MIB if request is not None else None,
        memory_mib * MIB,
        disk,
    )


@pytest.mark.parametrize(
    ("values", "q", "want"),
    [
        ([], 0.9, 0),
        ([5], 0.9, 5),
        (list(range(1, 11)), 0.9, 9),
        (list(range(1, 101)), 0.9, 90),
        ([3, 1, 2], 0.5, 2),
        ([7, 7, 100], 0.9, 100),
    ],
)
def test_percentile_is_nearest_rank(values: list[int], q: float, want: int) -> None:
    assert percentile(values, q) == want


def test_learn_takes_the_p90_of_running_tenants_per_version() -> None:
    uses = [use(f"t{i}", m) for i, m in enumerate([4, 5, 5, 6, 6, 6, 7, 7, 8, 40])]
    uses += [use("stopped", 0, running=False), use("v2", 100, version=2)]
    learned = learn(uses)
    assert learned[("demo", 1)].tenants == 10
    assert learned[("demo", 1)].memory_p90 == 8 * MIB  # one outlier does not set it
    assert learned[("demo", 2)].memory_p90 == 100 * MIB


def test_request_is_explicit_else_learned_else_the_limit() -> None:
    learned = learn([use("a", 6), use("b", 6)])
    assert request_of(use("x", 0, request=32), learned) == 32 * MIB
    assert request_of(use("x", 0), learned) == 6 * MIB
    assert request_of(use("x", 0, version=9), learned) == 256 * MIB


def test_node_figures_count_max_of_request_and_use_of_tenants_that_should_run() -> None:
    uses = [
        use("steady", 6),  # learned request 6 MiB... p90 of (6, 50) is 50 MiB
        use("hog", 50, request=10),  # uses more than asked: its use counts
        use("idle", 2, request=40),  # asked more than it uses: its request counts
        use("off", 0, running=False, request=100),  # stopped: not counted
    ]
    f = node_figures(uses, memory_total=16 * GIB, overcommit=1.5, reserve=GIB)
    assert f["memory_capacity_bytes"] == 24 * GIB
    assert f["memory_measured_bytes"] == (6 + 50 + 2) * MIB
    # steady: no request of its own → learned p90 of its version (50 MiB)
    assert f["memory_requested_bytes"] == (50 + 10 + 40) * MIB
    assert f["memory_committed_bytes"] == (50 + 50 + 40) * MIB
    assert f["memory_free_bytes"] == 24 * GIB - GIB - 140 * MIB
    assert f["memory_counted_tenants"] == 3


@pytest.mark.parametrize(
    ("spec", "total", "want"),
    [
        ("auto", 24 * GIB, int(2.4 * GIB)),
        ("auto", 4 * GIB, GIB),
        ("auto", GIB, GIB // 2),
        ("10%", 20 * GIB, 2 * GIB),
        ("2G", 24 * GIB, 2 * GIB),
        ("512M", 0, 512 * MIB),
        ("1.5GiB", 0, int(1.5 * GIB)),
        ("0", 0, 0),
    ],
)
def test_reserve_sizes(spec: str, total: int, want: int) -> None:
    assert abs(reserve_bytes(spec, total) - want) <= 1


@pytest.mark.parametrize("spec", ["", "lots", "-1G", "100%", "5X", "%"])
def test_bad_reserve_is_refused_with_the_forms_that_work(spec: str) -> None:
    with pytest.raises(InvalidInput, match="reserve"):
        parse_reserve(spec)
