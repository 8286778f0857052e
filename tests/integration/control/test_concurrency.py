"""Correctness under concurrency, enforced by the database: several control plane
"processes" (separate Fleets, engines and connection pools) over one PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from hoody.agent.spec import TenantSpec
from hoody.control.db import Container, Store
from hoody.control.service import Fleet
from hoody.errors import Exhausted
from tests.control_support import World, empty, make_world
from tests.local_agent import local_agents


@pytest.fixture
def fleets(pg_url: str, pg_store: Store) -> Any:
    """Two fleets over the same database, as two control plane processes would be."""
    empty(pg_store)
    other = Store(pg_url)

    def build(**nodes: dict[str, Any]) -> tuple[World, Fleet]:
        world = make_world(pg_store, nodes=nodes)
        twin = Fleet(other, agents=local_agents(world.agents.values()))
        return world, twin

    yield build
    other.close()


def _race(calls: list[Any]) -> list[Any]:
    start = threading.Barrier(len(calls))

    def run(call: Any) -> Any:
        start.wait()
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_fifty_concurrent_copies_with_ten_keys_make_ten_containers(fleets: Any) -> None:
    world, twin = fleets(n1={}, n2={}, n3={})
    calls = [
        (
            lambda f=fleet, k=i % 10: f.copy(
                world.project, "demo", TenantSpec(metadata={"evt": k}), idempotency_key=f"evt_{k}"
            )
        )
        for i, fleet in enumerate([world.fleet, twin] * 25)
    ]
    results = _race(calls)
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    by_key: dict[int, set[str]] = {}
    for r in results:
        by_key.setdefault(r["metadata"]["evt"], set()).add(r["id"])
    assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 10
    with world.store.read() as s:
        assert s.scalar(select(func.count()).select_from(Container)) == 10
    assert sum(len(a.tenants) for a in world.agents.values()) == 10
    assert sum(a.copies for a in world.agents.values()) == 10


def test_concurrent_placements_never_overfill_a_node(fleets: Any) -> None:
    # 3 GiB less the 1 GiB host reserve, and 256 MiB tenants not measured yet (each
    # counts its limit): room for exactly 8 on each node, 16 in all.
    world, twin = fleets(n1={"memory_total": 3 << 30}, n2={"memory_total": 3 << 30})
    calls = [(lambda f=fleet: f.copy(world.project, "demo")) for fleet in [world.fleet, twin] * 12]
    results = _race(calls)
    made = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, Exhausted)]
    assert len(made) == 16 and len(refused) == 8, [
        r for r in results if isinstance(r, Exception) and not isinstance(r, Exhausted)
    ]
    assert Counter(r["node"] for r in made) == {"n1": 8, "n2": 8}
