"""API latency over a store of N container records (records only, no containers).

A scratch control plane (its own SQLite file, or its own database on a given
PostgreSQL server, removed afterwards) is filled with N container records, served by
uvicorn on a loopback port, and timed through HTTP with a project token:

    list_p50_ms         GET /api/v1/containers (one page of 50)   target <= 50 ms
    get_p50_ms          GET /api/v1/containers/{cid}              target <= 10 ms
    copy_record_p50_ms  the control plane's own share of a copy, in process: placement
                        and the record (`Fleet.reserve`), then recording what the node
                        made (`Fleet.finish`); no node is called

The three nodes are records too: joined, with heartbeats saying they hold template
`demo` and have room for every tenant.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import uvicorn
from sqlalchemy import create_engine, insert, text

from hoody.agent.spec import TenantSpec
from hoody.control.api import create_app
from hoody.control.db import Container, Store
from hoody.control.service import Fleet

__all__ = ["bench_api"]

TARGETS = {"list_p50_ms": 50.0, "get_p50_ms": 10.0}


@contextlib.contextmanager
def _scratch_database(url: str | None) -> Iterator[str]:
    if url is None or url.startswith("sqlite"):
        tmp = tempfile.mkdtemp(prefix="hoody-bench-api-")
        try:
            yield f"sqlite:///{tmp}/control.db"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    name = f"hoody_bench_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the scratch control plane did not start within 10 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _time(n: int, call: Callable[[int], httpx.Response]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        response = call(i)
        out.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    return out


def _fill(store: Store, project: int, count: int) -> list[str]:
    now = time.time()
    ids = [f"demo-b{i:07d}" for i in range(count)]
    rows = [
        {
            "id": cid,
            "project_id": project,
            "template": "demo",
            "version": 1,
            "node": f"n{i % 3 + 1}",
            "state": "running",
            "ip": f"10.{i % 3 + 1}.{i // 250 % 250}.{i % 250 + 2}",
            "url": f"http://10.0.0.1:8080/{cid}",
            "placement": "bench record",
            "memory_mib": 256,
            "disk_mib": 1024,
            "limits": {"memory_mib": 256},
            "meta": {"customer": f"cus_{i}", "plan": "pro" if i % 2 else "free"},
            "created_at": now,
        }
        for i, cid in enumerate(ids)
    ]
    with store.write() as s:
        for start in range(0, len(rows), 2000):
            s.execute(insert(Container), rows[start : start + 2000])
    return ids


def bench_api(
    tenants: int = 10000, samples: int = 200, database_url: str | None = None
) -> dict[str, Any]:
    """Run the measurement; returns p50/p99 of each in ms and whether targets held."""
    headroom = {"memory_total_bytes": 1 << 50, "disk_free_bytes": 1 << 50, "tenants": 0}
    with _scratch_database(database_url) as url:
        store = Store(url)
        fleet = Fleet(store)
        try:
            admin_token = fleet.bootstrap_admin()
            assert admin_token
            admin = fleet.authenticate(f"Bearer {admin_token}")
            project = fleet.create_project(admin, "bench")["id"]
            token = fleet.create_token(admin, "project", project_id=project)["token"]
            for name in ("n1", "n2", "n3"):
                # Unreachable addresses: nothing here calls a node.
                fleet.join(admin, name, f"http://{name}.invalid:7070", "unused")
                fleet.heartbeat(admin, name, headroom, [{"name": "demo", "version": 1}])
            t0 = time.perf_counter()
            ids = _fill(store, project, tenants)
            fill_s = time.perf_counter() - t0
            rng = random.Random(7)
            headers = {"Authorization": f"Bearer {token}"}
            with (
                _serve(create_app(fleet, monitor=False)) as base,
                httpx.Client(base_url=base, headers=headers, timeout=30) as http,
            ):
                http.get("/api/v1/containers").raise_for_status()  # warm up
                lists = _time(samples, lambda i: http.get("/api/v1/containers?limit=50"))
                gets = _time(samples, lambda i: http.get(f"/api/v1/containers/{rng.choice(ids)}"))
            copies = []
            for i in range(samples):
                spec = TenantSpec(metadata={"i": i})
                t0 = time.perf_counter()
                res = fleet.reserve(project, "demo", spec)
                fleet.finish(res, {"state": "running", "ip": f"10.9.{i // 250}.{i % 250 + 2}"})
                copies.append((time.perf_counter() - t0) * 1000)
        finally:
            fleet.close()
            store.close()
    result: dict[str, Any] = {
        "tenants": tenants,
        "samples": samples,
        "database": url.split(":", 1)[0],
        "fill_seconds": round(fill_s, 2),
        "list_p50_ms": _p(lists, 0.5),
        "list_p99_ms": _p(lists, 0.99),
        "get_p50_ms": _p(gets, 0.5),
        "get_p99_ms": _p(gets, 0.99),
        "copy_record_p50_ms": _p(copies, 0.5),
        "copy_record_p99_ms": _p(copies, 0.99),
        "list_mean_ms": round(statistics.fmean(lists), 2),
    }
    result["targets_met"] = all(result[k] <= v for k, v in TARGETS.items())
    return result
