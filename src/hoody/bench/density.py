"""Density: what one more idle demo-app tenant costs in memory and disk.

Memory is the growth of anonymous memory + page cache + kernel memory (slab, page
tables, kernel stacks, per-cpu) from before the first tenant to when all N run and
answer, divided by N. Disk is the growth of the pool's used bytes, divided by N.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from hoody.agent import ksm
from hoody.agent.templates import DEMO_ARGS, DEMO_NAME
from hoody.bench.fleet import scratch_fleet
from hoody.bench.provision import _everywhere, wait_http_ok
from hoody.bench.scratch import scratch_node
from hoody.control.client import Client
from hoody.errors import HoodyError
from hoody.proc import run

__all__ = ["density", "density_api", "memory_in_use"]

_FIELDS = (
    "AnonPages",
    "Cached",
    "Buffers",
    "Shmem",
    "Slab",
    "KernelStack",
    "PageTables",
    "Percpu",
    "SecPageTables",
)


def _meminfo() -> dict[str, int]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0]) * 1024
    return values


def memory_in_use(values: dict[str, int] | None = None) -> int:
    """Bytes of anonymous + page cache + kernel memory, from /proc/meminfo."""
    values = values or _meminfo()
    # Shmem is counted inside Cached; leave it out of the sum.
    return sum(values.get(k, 0) for k in _FIELDS if k != "Shmem")


def _by_field(before: dict[str, int], after: dict[str, int], count: int) -> dict[str, float]:
    """KiB per tenant that each /proc/meminfo figure grew by: where the host-wide
    marginal memory went (Slab split into what the kernel can and cannot reclaim)."""
    keys = [k for k in _FIELDS if k != "Slab"] + ["SReclaimable", "SUnreclaim"]
    return {k: round((after.get(k, 0) - before.get(k, 0)) / max(1, count) / 1024, 1) for k in keys}


def _attributed(parent: str, pids: list[int]) -> int:
    """Bytes charged to the node's tenant cgroups (all of them: memory.usage of the
    parent, v1 or v2) plus the proportional set size of the given processes (control
    plane, agent). Unlike the host-wide figure, other work on a shared machine does
    not move it; kernel objects outside those cgroups (links, netns, nft) are missing."""
    total = 0
    for path in (
        Path("/sys/fs/cgroup/memory", parent, "memory.usage_in_bytes"),
        Path("/sys/fs/cgroup", parent, "memory.current"),
    ):
        if path.exists():
            total += int(path.read_text())
            break
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _pool_used(pool: Path) -> int:
    run(["btrfs", "filesystem", "sync", str(pool)])
    out = run(["btrfs", "filesystem", "usage", "-b", str(pool)]).stdout
    for line in out.splitlines():
        if line.strip().startswith("Used:"):
            return int(line.split()[-1])
    return 0


def _wait_for_ksm_scans(scans: int, timeout: float) -> None:
    """ksmd merges a page on its second sighting: wait for `scans` full passes."""
    counter = Path("/sys/kernel/mm/ksm/full_scans")
    start = int(counter.read_text())
    deadline = time.monotonic() + timeout
    while int(counter.read_text()) - start < scans and time.monotonic() < deadline:
        time.sleep(1)


def density(
    count: int = 50, storage: str = "overlay", use_ksm: bool = False, settle: float = 5.0
) -> dict[str, Any]:
    with scratch_node(
        "bd", storage_mode=storage, pool_size="20G", process=True, id_slots=count + 8
    ) as scratch:
        scratch.demo_template(ksm=use_ksm)
        warm = scratch.client.copy("demo-app")
        wait_http_ok(warm["url"])
        scratch.client.delete(warm["id"])
        time.sleep(1)
        info0 = _meminfo()
        mem0, disk0 = memory_in_use(info0), _pool_used(scratch.node.config.pool)
        ksm0 = ksm.stats()
        urls: list[str] = []
        with ThreadPoolExecutor(4) as pool:
            for rec in pool.map(lambda _: scratch.client.copy("demo-app"), range(count)):
                urls.append(rec["url"])
        for url in urls:
            wait_http_ok(url, timeout=30)
        time.sleep(settle)
        if use_ksm:
            _wait_for_ksm_scans(2, timeout=240)
        answering = 0
        with httpx.Client(timeout=2.0) as http:
            for url in urls:
                with contextlib.suppress(httpx.HTTPError):
                    answering += http.get(url).status_code == 200
        info1 = _meminfo()
        mem1, disk1 = memory_in_use(info1), _pool_used(scratch.node.config.pool)
        ksm1 = ksm.stats()
        return {
            "benchmark": "density",
            "storage": storage,
            "tenants": count,
            "answering": answering,
            "marginal_memory_mib": round((mem1 - mem0) / count / (1 << 20), 2),
            "marginal_by_field_kib": _by_field(info0, info1, count),
            "marginal_disk_mib": round((disk1 - disk0) / count / (1 << 20), 3),
            "ksm": use_ksm,
            "ksm_profit_mib": round(ksm1["profit_mib"] - (ksm0["profit_mib"] if use_ksm else 0), 2),
            "ksmd_cpu_seconds": round(ksm1["ksmd_cpu_seconds"] - ksm0["ksmd_cpu_seconds"], 2),
        }


def density_api(count: int = 50, storage: str = "overlay", concurrency: int = 4) -> dict[str, Any]:
    """As `density`, but every tenant is a copy through the control plane's API onto a
    fleet of one node (placement, the database and the agent all in the path), with
    demo-app's default limits (256 MiB). marginal_memory_mib is host-wide, as in
    `density` (the control plane and agent included; on a shared machine others' work
    moves it too); marginal_memory_attributed_mib counts only the tenants' cgroups and
    the control plane and agent processes. Reports how many copies placement accepted and the node's
    figures afterwards (committed, measured, and the estimate of further tenants)."""
    with scratch_fleet(1, pool_size="20G", storage_mode=storage, id_slots=count + 8) as fleet:
        node = fleet.nodes[0]
        with node.client() as agent:
            agent.create_template(DEMO_NAME, {"demo": True}, args=DEMO_ARGS)
        deadline = time.monotonic() + 120
        while not _everywhere(fleet.admin.templates(), DEMO_NAME, 1):  # its next heartbeat
            if time.monotonic() > deadline:
                raise TimeoutError("the control plane did not learn of demo-app within 120 s")
            time.sleep(0.2)
        project = fleet.admin.create_project("density")["id"]
        # The admin token: a scratch fleet has no router, and only admins are told a
        # tenant's address on its node (project tokens get the router's URL).
        with Client(fleet.url, fleet.admin_token, project=project, timeout=600) as client:
            warm = client.copy(DEMO_NAME)
            wait_http_ok(warm["url"])
            client.delete(warm["id"])
            time.sleep(1)
            pids = [p.pid for p in (fleet.control, node.process) if p is not None]
            parent = node.config.cgroup_parent
            info0 = _meminfo()
            mem0, disk0 = memory_in_use(info0), _pool_used(node.config.pool)
            own0 = _attributed(parent, pids)
            started = time.monotonic()
            urls: list[str] = []
            refused: list[str] = []

            def one(_: int) -> str | None:
                try:
                    return str(client.copy(DEMO_NAME)["url"])
                except HoodyError as exc:
                    refused.append(exc.message)
                    return None

            with ThreadPoolExecutor(concurrency) as pool:
                urls = [u for u in pool.map(one, range(count)) if u]
            copied = time.monotonic() - started
            for url in urls:
                wait_http_ok(url, timeout=60)
            time.sleep(5)
            answering = 0
            with httpx.Client(timeout=2.0) as http:
                for url in urls:
                    with contextlib.suppress(httpx.HTTPError):
                        answering += http.get(url).status_code == 200
            info1 = _meminfo()
            mem1, disk1 = memory_in_use(info1), _pool_used(node.config.pool)
            own1 = _attributed(parent, pids)
        with node.client() as agent:  # what one heartbeat's measurement costs the agent
            timed = time.monotonic()
            agent.node()
            headroom_ms = (time.monotonic() - timed) * 1000
        time.sleep(3)  # a heartbeat with every tenant measured
        state = fleet.admin.nodes()[0]
    mib = 1 << 20
    cap = state["capacity"]
    return {
        "benchmark": "density",
        "through": "api",
        "storage": storage,
        "tenants": count,
        "accepted": len(urls),
        "answering": answering,
        "refused": refused[:3],
        "marginal_memory_mib": round((mem1 - mem0) / max(1, len(urls)) / mib, 2),
        "marginal_by_field_kib": _by_field(info0, info1, len(urls)),
        "marginal_disk_mib": round((disk1 - disk0) / max(1, len(urls)) / mib, 3),
        "marginal_memory_attributed_mib": round((own1 - own0) / max(1, len(urls)) / mib, 2),
        "copy_seconds": round(copied, 1),
        "headroom_ms": round(headroom_ms, 1),
        "node": {
            "memory_total_mib": cap["memory_total_bytes"] // mib,
            "overcommit": cap["overcommit"],
            "memory_reserve_mib": cap["memory_reserve_bytes"] // mib,
            "memory_requested_mib": cap["memory_requested_bytes"] // mib,
            "memory_measured_mib": cap["memory_measured_bytes"] // mib,
            "memory_committed_mib": cap["memory_committed_bytes"] // mib,
            "memory_free_mib": cap["memory_free_bytes"] // mib,
            "estimates": state["estimates"],
        },
    }
