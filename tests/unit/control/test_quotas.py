"""Per-project quotas (tenants, memory limits, disk limits): set by admins, shown to
the project, enforced by copies in the reservation's transaction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from hoody.agent.spec import TenantSpec
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Container, IdempotencyKey, Store
from hoody.control.service import Fleet
from hoody.errors import Forbidden, InvalidInput, NotFound, QuotaExceeded
from tests.control_support import World, make_world
from tests.local_agent import local_agents


def _rows(w: World) -> int:
    """Container rows that are not deleted tombstones."""
    with w.store.read() as s:
        q = select(func.count()).select_from(Container).where(Container.state != "deleted")
        return int(s.scalar(q) or 0)


def _tenants(w: World) -> int:
    return sum(len(a.tenants) for a in w.agents.values())


def test_a_project_has_no_quota_until_an_admin_sets_one(store: Store) -> None:
    w = make_world(store)
    shown = w.fleet.get_project(w.who, w.project)
    assert shown["quota"] == {"max_tenants": None, "max_memory_mib": None, "max_disk_mib": None}
    assert shown["usage"] == {"tenants": 0, "memory_mib": 0, "disk_mib": 0}
    w.fleet.copy(w.project, "demo")
    assert w.fleet.get_project(w.who, w.project)["usage"] == {
        "tenants": 1,
        "memory_mib": 256,
        "disk_mib": 1024,
    }
    with pytest.raises(Forbidden, match="admin token"):
        w.fleet.set_project(w.who, w.project, {"max_tenants": 100})
    other = w.fleet.create_project(w.admin, "globex")["id"]
    with pytest.raises(Forbidden, match="its own project"):
        w.fleet.get_project(w.who, other)
    with pytest.raises(NotFound):
        w.fleet.set_project(w.admin, 999, {"max_tenants": 1})
    for bad in ({"max_tenants": -1}, {"max_tenants": True}, {"max_cpu": 1}, {"max_disk_mib": "1G"}):
        with pytest.raises(InvalidInput):
            w.fleet.set_project(w.admin, w.project, bad)  # type: ignore[arg-type]
    assert w.fleet.get_project(w.admin, w.project)["quota"]["max_tenants"] is None


def test_the_tenant_quota_refuses_the_next_copy_and_leaves_nothing(store: Store) -> None:
    w = make_world(store)
    out = w.fleet.set_project(w.admin, w.project, {"max_tenants": 2})
    assert out["quota"]["max_tenants"] == 2
    a = w.fleet.copy(w.project, "demo")
    w.fleet.copy(w.project, "demo")
    with pytest.raises(QuotaExceeded) as err:
        w.fleet.copy(w.project, "demo", idempotency_key="evt_3")
    message = err.value.message
    assert err.value.status == 403 and err.value.code == "quota_exceeded"
    assert "tenant quota: 2 of 2" in message and "hoody project set" in message
    assert "delete containers" in message
    assert _rows(w) == 2 and _tenants(w) == 2
    with w.store.read() as s:  # the key is released: a retry after a delete works
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    # Another project is not limited by this one's quota.
    other = w.fleet.create_project(w.admin, "globex")["id"]
    w.fleet.copy(other, "demo")
    w.fleet.delete_container(w.admin, a["id"])
    assert w.fleet.copy(w.project, "demo", idempotency_key="evt_3")["state"] == "running"
    # Removing the quota (None) lets copies through again.
    w.fleet.set_project(w.admin, w.project, {"max_tenants": None})
    w.fleet.copy(w.project, "demo")
    assert w.fleet.get_project(w.admin, w.project)["usage"]["tenants"] == 3


def test_memory_and_disk_quotas_count_the_limits(store: Store) -> None:
    w = make_world(store)
    w.fleet.set_project(w.admin, w.project, {"max_memory_mib": 600, "max_disk_mib": 4096})
    w.fleet.copy(w.project, "demo")  # 256 MiB memory, 1024 MiB disk (the template's)
    w.fleet.copy(w.project, "demo")
    with pytest.raises(QuotaExceeded) as err:
        w.fleet.copy(w.project, "demo")
    assert "memory quota is 600 MiB" in err.value.message
    assert "hold 512 MiB and this copy asks 256 MiB" in err.value.message
    assert "limits.memory_mib" in err.value.message and "--max-memory 768M" in err.value.message
    # A smaller limit fits; a learned or asked *request* does not change what counts.
    small = w.fleet.copy(
        w.project, "demo", TenantSpec(limits={"memory_mib": 64, "memory_request_mib": 8})
    )
    assert w.fleet.get_project(w.who, w.project)["usage"]["memory_mib"] == 576
    w.fleet.delete_container(w.admin, small["id"])
    w.fleet.set_project(w.admin, w.project, {"max_memory_mib": None})
    w.fleet.copy(w.project, "demo", TenantSpec(limits={"disk_mib": 1024}))  # 3072 of 4096
    with pytest.raises(QuotaExceeded, match="disk quota is 4096 MiB") as err:
        w.fleet.copy(w.project, "demo", TenantSpec(limits={"disk_mib": 2048}))
    assert "hold 3072 MiB and this copy asks 2048 MiB" in err.value.message
    assert "--max-disk 5G" in err.value.message
    assert _rows(w) == 3 and _tenants(w) == 3
    # A quota lowered below what the project holds keeps them; new copies wait.
    w.fleet.set_project(w.admin, w.project, {"max_tenants": 1})
    assert w.fleet.get_project(w.admin, w.project)["usage"]["tenants"] == 3
    with pytest.raises(QuotaExceeded, match="3 of 1"):
        w.fleet.copy(w.project, "demo")


def test_concurrent_copies_never_overshoot_the_quota(store: Store, tmp_path: Path) -> None:
    # Two Fleets, each with its own engine and pool: two control plane processes.
    w = make_world(store, nodes={"n1": {}, "n2": {}, "n3": {}})
    twin_store = Store(store.url, migrate=False)
    twin = Fleet(twin_store, agents=local_agents(w.agents.values()))
    try:
        w.fleet.set_project(w.admin, w.project, {"max_tenants": 5, "max_memory_mib": 10_000})
        start = threading.Barrier(12)

        def copy(fleet: Fleet) -> Any:
            start.wait()
            try:
                return fleet.copy(w.project, "demo")
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(copy, [w.fleet, twin] * 6))
        made = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        assert len(made) == 5 and len(refused) == 7, results
        assert _rows(w) == 5 and _tenants(w) == 5
    finally:
        twin.close()
        twin_store.close()


@pytest.fixture
def http(tmp_path: Path) -> Iterator[tuple[World, TestClient]]:
    store = Store(f"sqlite:///{tmp_path / 'control.db'}")
    world = make_world(store)
    with TestClient(create_app(world.fleet, monitor=False)) as tc:
        yield world, tc
    store.close()


def test_quotas_through_the_api(http: tuple[World, TestClient]) -> None:
    w, tc = http
    admin = Client("http://testserver", w.admin_token, http=TestClient(tc.app))
    mine = Client("http://testserver", w.project_token, http=TestClient(tc.app))
    out = admin.set_project(w.project, max_tenants=1, max_memory_mib=4096)
    assert out["quota"] == {"max_tenants": 1, "max_memory_mib": 4096, "max_disk_mib": None}
    assert admin.set_project(w.project, max_disk_mib=20480)["quota"]["max_tenants"] == 1
    mine.copy("demo")
    shown = mine.get_project(w.project)
    assert shown["usage"]["tenants"] == 1 and shown["quota"]["max_disk_mib"] == 20480
    assert [p["quota"]["max_tenants"] for p in admin.projects()] == [1]
    with pytest.raises(QuotaExceeded, match="tenant quota: 1 of 1"):
        mine.copy("demo")  # a project token hears the quota: it is its own project's
    with pytest.raises(Forbidden):
        mine.set_project(w.project, max_tenants=100)
    for body in ({"max_tenants": True}, {"max_tenants": -1}, {"max_cpu": 2}):
        r = tc.patch(
            f"/api/v1/projects/{w.project}",
            json=body,
            headers={"Authorization": f"Bearer {w.admin_token}"},
        )
        assert r.status_code == 400, r.text
    r = tc.patch(
        f"/api/v1/projects/{w.project}",
        json={"max_tenants": None},
        headers={"Authorization": f"Bearer {w.admin_token}"},
    )
    assert r.status_code == 200 and r.json()["quota"]["max_tenants"] is None
    assert r.json()["quota"]["max_memory_mib"] == 4096  # absent: unchanged
