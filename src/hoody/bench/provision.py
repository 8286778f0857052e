"""Provision latency: from the copy request to the tenant's first HTTP 200 on its address.

`provision` asks one node agent directly; `provision_fleet` asks the control plane,
which places each copy on one of N local node agents (each its own process with its
own pool and network, joined by heartbeats), as a signup webhook would.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from hoody.agent.templates import DEMO_ARGS, DEMO_NAME
from hoody.bench.fleet import scratch_fleet
from hoody.bench.scratch import scratch_node
from hoody.control.client import Client
from hoody.errors import HoodyError

__all__ = ["CpuSince", "provision", "provision_fleet", "wait_http_ok"]


def wait_http_ok(url: str, timeout: float = 10.0) -> float:
    """Poll `url` until it answers 200; return the monotonic time it did.

    Raw sockets, not an HTTP client: polling every 2 ms from several threads must not
    eat the CPU the tenants being measured need.
    """
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=1.0) as conn:
                conn.sendall(request)
                if conn.recv(64).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                    return time.monotonic()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.002)


class CpuSince:
    """The machine's CPU time since this was made (/proc/stat). On a shared VM,
    latency that moves with the stolen share is the neighbours', not hoody's; and at a
    fixed concurrency latency follows the CPU each copy costs, which `busy_seconds`
    measures with far less noise than a percentile of latencies."""

    def __init__(self) -> None:
        self.start = _cpu_times()

    def fraction(self) -> float:
        """The share of the time the hypervisor gave to other guests (steal)."""
        now = _cpu_times()
        total = sum(now) - sum(self.start)
        return round((now[7] - self.start[7]) / total, 3) if total > 0 else 0.0

    def busy_seconds(self) -> float:
        """CPU seconds this machine worked, all processes and the kernel: user, nice,
        system, irq and softirq (idle, iowait and steal are not work done here)."""
        now = _cpu_times()
        ticks = sum(now[i] - self.start[i] for i in (0, 1, 2, 5, 6))
        return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> list[int]:
    """user nice system idle iowait irq softirq steal, summed over the CPUs, in ticks."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def provision(count: int = 20, concurrency: int = 4, storage: str = "overlay") -> dict[str, Any]:
    with scratch_node("bp", storage_mode=storage, process=True) as scratch:
        scratch.demo_template()
        # One warm-up copy so the template's files are in page cache, as on a live node.
        warm = scratch.client.copy("demo-app")
        wait_http_ok(warm["url"])
        scratch.client.delete(warm["id"])

        def one(_: int) -> tuple[float, float]:
            t0 = time.monotonic()
            rec = scratch.client.copy("demo-app")
            t1 = time.monotonic()
            return (t1 - t0) * 1000, (wait_http_ok(rec["url"]) - t0) * 1000

        times: list[float] = []
        api: list[float] = []  # the copy call alone: the rest is the tenant booting
        errors: list[str] = []
        cpu = CpuSince()
        with ThreadPoolExecutor(concurrency) as pool:
            for fut in [pool.submit(one, i) for i in range(count)]:
                try:
                    copied, answered = fut.result()
                except (HoodyError, TimeoutError, httpx.HTTPError) as exc:
                    errors.append(str(exc))
                else:
                    api.append(copied)
                    times.append(answered)
        stole, busy = cpu.fraction(), cpu.busy_seconds()
    return {
        "benchmark": "provision",
        "storage": storage,
        "count": count,
        "concurrency": concurrency,
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_ms": round(statistics.median(times), 1) if times else None,
        "p99_ms": round(percentile(times, 0.99), 1) if times else None,
        "min_ms": round(min(times), 1) if times else None,
        "max_ms": round(max(times), 1) if times else None,
        "copy_call_p50_ms": round(statistics.median(api), 1) if api else None,
        "copy_call_max_ms": round(max(api), 1) if api else None,
        "cpu_stolen_fraction": stole,
        # Everything the machine did while the copies ran (agent, runc, the tenants'
        # first starts, this client's polling), per copy.
        "cpu_ms_per_copy": round(busy * 1000 / count, 1),
    }


def provision_fleet(
    count: int = 20, concurrency: int = 4, nodes: int = 3, storage: str = "overlay"
) -> dict[str, Any]:
    """The provision measurement through the control plane against `nodes` agents.

    demo-app is built on the first node and reaches the others by replication (timed
    too); one warm-up copy per node puts its files in page cache, as on a live fleet.
    """
    with scratch_fleet(nodes, storage_mode=storage) as fleet:
        t0 = time.monotonic()
        with fleet.nodes[0].client() as agent:
            agent.create_template(DEMO_NAME, {"demo": True}, args=DEMO_ARGS)
        built = time.monotonic()
        while not _everywhere(fleet.admin.templates(), DEMO_NAME, nodes):
            if time.monotonic() > built + 600:
                raise TimeoutError("demo-app did not reach every node within 600 s")
            time.sleep(0.2)
        replicated = time.monotonic()
        project = fleet.admin.create_project("bench")["id"]
        # The admin token: a scratch fleet has no router, and only admins are told a
        # tenant's address on its node (project tokens get the router's URL).
        with Client(fleet.url, fleet.admin_token, project=project) as client:
            for warm in [client.copy(DEMO_NAME) for _ in range(nodes)]:
                wait_http_ok(warm["url"])
                client.delete(warm["id"])

            def one(_: int) -> tuple[float, float, str]:
                t0 = time.monotonic()
                rec = client.copy(DEMO_NAME)
                t1 = time.monotonic()
                return (t1 - t0) * 1000, (wait_http_ok(rec["url"]) - t0) * 1000, rec["node"]

            times: list[float] = []
            api: list[float] = []
            spread: Counter[str] = Counter()
            errors: list[str] = []
            stolen = CpuSince()
            with ThreadPoolExecutor(concurrency) as pool:
                for fut in [pool.submit(one, i) for i in range(count)]:
                    try:
                        copied, answered, node = fut.result()
                    except (HoodyError, TimeoutError, httpx.HTTPError) as exc:
                        errors.append(str(exc))
                    else:
                        api.append(copied)
                        times.append(answered)
                        spread[node] += 1
            stole = stolen.fraction()
    return {
        "benchmark": "provision",
        "through": "control plane",
        "fleet": nodes,
        "storage": storage,
        "count": count,
        "concurrency": concurrency,
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_ms": round(statistics.median(times), 1) if times else None,
        "p99_ms": round(percentile(times, 0.99), 1) if times else None,
        "min_ms": round(min(times), 1) if times else None,
        "max_ms": round(max(times), 1) if times else None,
        "copy_call_p50_ms": round(statistics.median(api), 1) if api else None,
        "copy_call_max_ms": round(max(api), 1) if api else None,
        "target_p50_ms": 200,
        "cpu_stolen_fraction": stole,
        "per_node": dict(sorted(spread.items())),
        "template_build_s": round(built - t0, 1),
        "template_replication_s": round(replicated - built, 1),
    }


def _everywhere(templates: list[dict[str, Any]], name: str, nodes: int) -> bool:
    """Whether some version of template `name` is ready on `nodes` nodes."""
    for t in templates:
        for v in t["versions"]:
            if t["name"] == name and sum(n["state"] == "ready" for n in v["nodes"]) == nodes:
                return True
    return False
