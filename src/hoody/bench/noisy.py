"""Noisy neighbour: one tenant's latency while another spins at its CPU limit.

Two demo-app tenants with the same limits on a scratch node. The neighbour runs
`spinners` busy processes inside its limit; the victim is measured two ways:

- wake-up latency inside the victim: how late a 1 ms sleep returns (what every request,
  timer and lock hand-off in the tenant waits for);
- HTTP from the host: sequential `GET /healthz`, each on a fresh connection, with a
  short pause in between (a request stream that leaves the CPU idle in between, as most
  tenants' traffic does). The client runs in `hoody-services` with the agent, as the
  router does (`hoody.services`): it stands for a browser elsewhere, not for one more
  host process competing with the tenants.

Rounds alternate quiet (neighbour idle) and noisy (neighbour spinning), so both are
measured under whatever else the machine is doing at that time; each figure is the
median over rounds of that round's percentile.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hoody import services
from hoody.agent.runtime.cpus import held_cpusets
from hoody.agent.spec import LimitsSpec, TenantSpec
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import CGROUP_ROOT, ScratchNode, scratch_node

__all__ = ["measure", "noisy"]

# Forks `n` processes that spin until `seconds` have passed, then waits for them.
_SPIN = (
    "import os, sys, time\n"
    "n, seconds = int(sys.argv[1]), float(sys.argv[2])\n"
    "end = time.monotonic() + seconds\n"
    "for _ in range(n):\n"
    "    if os.fork() == 0:\n"
    "        while time.monotonic() < end:\n"
    "            pass\n"
    "        os._exit(0)\n"
    "for _ in range(n):\n"
    "    os.wait()\n"
)

# Sleeps 1 ms `n` times; prints the milliseconds each sleep overran, sorted.
_WAKEUPS = (
    "import json, sys, time\n"
    "late = []\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    start = time.perf_counter()\n"
    "    time.sleep(0.001)\n"
    "    late.append((time.perf_counter() - start - 0.001) * 1000)\n"
    "print(json.dumps(sorted(late)))\n"
)


def _http_latencies(url: str, count: int, gap: float) -> list[float]:
    """`count` sequential GETs of `url` (fresh connection each, `gap` s apart): the
    milliseconds each took, from connect to the server closing."""
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        with socket.create_connection(address, timeout=5.0) as conn:
            conn.sendall(request)
            while conn.recv(4096):
                pass
        samples.append((time.perf_counter() - start) * 1000)
        time.sleep(gap)
    return samples


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_seconds(scratch: ScratchNode, tid: str) -> float:
    """CPU time the tenant's cgroup has used (v1 cpuacct, v2 cpu.stat)."""
    rel = Path(scratch.node.config.cgroup_parent) / tid
    v1 = CGROUP_ROOT / "cpuacct" / rel / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for line in (CGROUP_ROOT / rel / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1]) / 1e6
    return 0.0


def measure(
    scratch: ScratchNode,
    victim: str,
    neighbour: str,
    *,
    rounds: int = 3,
    wakeups: int = 1500,
    requests: int = 500,
    spinners: int = 4,
    gap: float = 0.003,
) -> dict[str, Any]:
    """Alternate quiet and noisy rounds on tenant `victim` with `neighbour` spinning.

    Returns {"quiet": {...}, "noisy": {...}} with wake-up p50/p99 (`wakeup_*_ms`, how
    late a 1 ms sleep in the victim returned), HTTP p50/p99 (`http_*_ms`, 0 when
    `requests` is 0) and the neighbour's CPU use in cores, each the median over rounds.
    """
    url = str(scratch.client.tenant(victim)["url"]) + "healthz"
    if requests:
        _http_latencies(url, 20, gap)  # warm up
    per_round: dict[str, list[dict[str, float]]] = {"quiet": [], "noisy": []}

    def one_round(kind: str) -> dict[str, float]:
        used0, t0 = _cpu_seconds(scratch, neighbour), time.monotonic()
        probe = scratch.client.exec(
            victim, ["/usr/bin/python3", "-c", _WAKEUPS, str(wakeups)], timeout=120
        )
        late: list[float] = json.loads(probe["stdout"])
        http = _http_latencies(url, requests, gap) if requests else [0.0]
        cores = (_cpu_seconds(scratch, neighbour) - used0) / (time.monotonic() - t0)
        return {
            "wakeup_p50_ms": _percentile(late, 0.50),
            "wakeup_p99_ms": _percentile(late, 0.99),
            "http_p50_ms": _percentile(http, 0.50),
            "http_p99_ms": _percentile(http, 0.99),
            "neighbour_cores": cores,
        }

    seconds = wakeups * 0.0015 + requests * (gap + 0.003) + 10
    spin_argv = ["/usr/bin/python3", "-c", _SPIN, str(spinners), str(seconds)]
    for _ in range(rounds):
        per_round["quiet"].append(one_round("quiet"))
        spin = _background(lambda: scratch.client.exec(neighbour, spin_argv, timeout=seconds + 60))
        time.sleep(1.0)  # the spinners are up and at their limit
        per_round["noisy"].append(one_round("noisy"))
        spin.join()
    result: dict[str, Any] = {}
    for kind, results in per_round.items():
        result[kind] = {
            key: round(statistics.median(r[key] for r in results), 3) for key in results[0]
        }
    for key in ("wakeup_p99_ms", "http_p99_ms"):
        result[key.replace("_ms", "_increase_ms")] = round(
            result["noisy"][key] - result["quiet"][key], 3
        )
    return result


def _background(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def noisy(
    rounds: int = 5, requests: int = 500, wakeups: int = 1500, spinners: int = 4, cpu: float = 1.0
) -> dict[str, Any]:
    """The benchmark on a scratch node of its own (agent in its own process)."""
    # The client stands for a browser on another machine: it runs weighed like hoody's
    # own processes (the router, the agents), not as one more host process.
    with services.joined(), scratch_node("bn", process=True) as scratch:
        scratch.demo_template()
        victim = scratch.client.copy("demo-app", TenantSpec(limits=LimitsSpec(cpu=cpu)))
        neighbour = scratch.client.copy("demo-app", TenantSpec(limits=LimitsSpec(cpu=cpu)))
        wait_http_ok(victim["url"] + "healthz")
        wait_http_ok(neighbour["url"] + "healthz")
        result = measure(
            scratch,
            victim["id"],
            neighbour["id"],
            rounds=rounds,
            wakeups=wakeups,
            requests=requests,
            spinners=spinners,
        )
        node = scratch.node
        held = dict(held_cpusets(CGROUP_ROOT, node.runtime.caps.cgroup, node.config.cgroup_parent))
        return {
            "benchmark": "noisy",
            "cpu_limit": cpu,
            # The cores each runs on (`hoody.agent.runtime.cpus`); "" when not pinned.
            "cpus": {
                "victim": held.get(victim["id"], ""),
                "neighbour": held.get(neighbour["id"], ""),
            },
            "spinners": spinners,
            "rounds": rounds,
            "host_cpus": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 1),
            **result,
        }
