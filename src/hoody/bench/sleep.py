"""Sleep: N tenants registered on one node, the idle ones asleep, and how long the first
request to a sleeping tenant takes to be answered through the router.

Everything goes through the product: a control plane process, one node agent process
(a scratch node), a router process; tenants are made with the API, fall asleep by
their idle timeout (the router reports activity, the control plane sleeps them), and
are woken by a request through the router. `active` tenants get a request every few
seconds meanwhile, so they stay awake. Half the idle tenants sleep stopped, half
frozen; a wake is timed from sending a request to a sleeping tenant to its 200.

The router runs with a router token, as in production, and sums where each wake's
time went (its /metrics). It wakes tenants at their node (`woken_at_node` counts
those) and asks the control plane only when the node does not; `breakdown_ms` gives
the mean per wake of each hop:

    router_to_control_plane   the router's HTTP call, less the control plane's answer
                              (0 for a wake at the node)
    control_plane             its own share: auth, database, threads (0 likewise)
    to_agent                  the HTTP call to the node agent, from the router or the
                              control plane, less the node's work
    node                      the node's wake: a thaw, or the tenant's start
    tenant_port               the wake answered → the tenant's port took the connection
    first_answer              the rest: request → tenant → first byte back to the client

The router's sums are read between wakes too, so each wake's hops are known alone:
`breakdown_p95_ms` is each hop's p95 and `slowest_ms` the hops of the five slowest
wakes, which say whether a slow tail waits on hoody or on the CPU.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hoody import proc
from hoody.agent.spec import LimitsSpec, SleepSpec, TenantSpec
from hoody.agent.templates import DEMO_ARGS, DEMO_NAME
from hoody.bench.density import memory_in_use
from hoody.bench.fleet import ScratchFleet, scratch_fleet
from hoody.bench.provision import percentile
from hoody.bench.scratch import SCRATCH_BIG_SLOTS, free_port
from hoody.errors import Exhausted, HostError

__all__ = ["sleep_bench"]

_CLI = [sys.executable, "-c", "from hoody.cli.main import main; main()"]
_MIB = 1 << 20
# Id slots beyond the tenants: the warm-up copy and a little slack.
_SPARE_SLOTS = 8
MAX_REGISTERED = SCRATCH_BIG_SLOTS - _SPARE_SLOTS
_PHASES = ("control_plane", "agent", "node", "port")


def _get(port: int, cid: str, timeout: float = 30.0) -> tuple[int, float]:
    """(status, seconds) of one GET / to `cid` through the router on a new connection."""
    request = f"GET /healthz HTTP/1.1\r\nHost: {cid}.localhost:{port}\r\nConnection: close\r\n\r\n"
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request.encode())
        head = conn.recv(64)
    took = time.perf_counter() - start
    try:
        return int(head.split(b" ", 2)[1]), took
    except (IndexError, ValueError):
        return 0, took


@contextlib.contextmanager
def _router(fleet: ScratchFleet) -> Iterator[tuple[int, int]]:
    """A `hoody router` process with a router token of its own, as in production (an
    admin token would also pass checks a router token fails)."""
    port = free_port()
    token = fleet.admin.create_token("router", description="bench sleep")["token"]
    argv = [*_CLI, "router", "--listen", f"127.0.0.1:{port}", "--domain", "localhost"]
    argv += ["--api", fleet.url, "--token", token]
    log = fleet.control_dir / "router.log"
    with log.open("ab") as out:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise HostError(f"the router did not start; see {log}") from None
                time.sleep(0.1)
        yield port, child.pid
    finally:
        proc.stop(child)


def _states(fleet: ScratchFleet) -> dict[str, tuple[str, str | None]]:
    return {
        c["id"]: (c["state"], c.get("sleep_mode"))
        for c in fleet.admin.iter_containers(project=_project(fleet), limit=500)
    }


def _project(fleet: ScratchFleet) -> int:
    return int(fleet.admin.ensure_project("bench-sleep")["id"])


def sleep_bench(
    registered: int = 200,
    active: int = 20,
    samples: int = 40,
    idle_seconds: int = 10,
    memory_mib: int | None = None,
    concurrency: int = 4,
) -> dict[str, Any]:
    """Make `registered` tenants (`active` of them kept busy), let the others fall
    asleep, then time `samples` first requests to sleepers of each mode.

    `memory_mib`: each tenant's memory limit; None keeps demo-app's default (256 MiB),
    and placement counts what the tenants are measured to use, as it would in
    production. Copies placement refuses while it has not measured them yet (it
    counts each at its limit until the node's next usage report) are tried again."""
    if not 0 <= active < registered:
        raise HostError("give --active below --registered: the idle ones are what is measured")
    if registered > MAX_REGISTERED:
        raise HostError(
            f"a scratch node holds at most {MAX_REGISTERED} tenants; give --registered "
            f"{MAX_REGISTERED} or fewer"
        )
    fleet_ctx = scratch_fleet(1, pool_size="40G", id_slots=registered + _SPARE_SLOTS)
    with fleet_ctx as fleet, _router(fleet) as (port, router_pid):
        parts = {
            "control_plane": fleet.control.pid,
            "agent": fleet.nodes[0].process.pid if fleet.nodes[0].process else 0,
            "router": router_pid,
            # This process: the active tenants' requests and the timed wakes. On a
            # small machine it competes with the tenants it measures.
            "bench": os.getpid(),
            # The host's init: the parent of every orphan on the machine, which tenants'
            # inits were before the launcher adopted them (agent/runtime/launcher.py).
            "host_init": 1,
        }
        tenants_cgroup = fleet.nodes[0].config.cgroup_parent
        with fleet.nodes[0].client() as agent:
            agent.create_template(DEMO_NAME, {"demo": True}, args=DEMO_ARGS)
        project = _project(fleet)
        deadline = time.monotonic() + 120
        while not any(t["name"] == DEMO_NAME for t in fleet.admin.templates()):
            if time.monotonic() > deadline:
                raise HostError("the demo-app template did not reach the control plane")
            time.sleep(0.5)
        mem_empty = memory_in_use()

        retried = {"copies": 0}
        # The active tenants are made first and driven from the moment they exist:
        # making 2,000 tenants takes many times their idle timeout, and an active
        # tenant left alone that long would be asleep when the wakes are measured.
        busy: list[str] = []
        stop = threading.Event()
        driven = {"requests": 0, "errors": 0}

        def drive() -> None:
            # Each active tenant gets a request about every 5 s: awake and in use.
            while not stop.is_set():
                if not busy:
                    stop.wait(0.5)
                    continue
                now_busy = list(busy)
                for cid in now_busy:
                    if stop.wait(5.0 / len(now_busy)):
                        return
                    try:
                        status, _ = _get(port, cid, timeout=10)
                        driven["requests"] += 1
                        driven["errors"] += status != 200
                    except OSError:
                        driven["errors"] += 1

        def make(i: int) -> str:
            busy_one = i < active
            spec = TenantSpec(
                metadata={"public": True, "bench": "busy" if busy_one else "idle"},
                limits=LimitsSpec(memory_mib=memory_mib) if memory_mib else None,
                sleep=SleepSpec(
                    idle_seconds=120 if busy_one else idle_seconds,
                    mode="frozen" if i % 2 else "stopped",
                ),
            )
            deadline = time.monotonic() + 120
            while True:
                try:
                    rec = fleet.admin.copy(DEMO_NAME, spec, project=project)
                    if busy_one:
                        busy.append(str(rec["id"]))
                    return str(rec["id"])
                except Exhausted:
                    # Refused at the limit before the node measured its tenants' use.
                    if time.monotonic() > deadline:
                        raise
                    retried["copies"] += 1
                    time.sleep(1.0)

        driver = threading.Thread(target=drive, name="bench-active", daemon=True)
        if active:
            driver.start()
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                cids = list(pool.map(make, range(registered)))
            made_in = time.monotonic() - started
            idle = cids[active:]
            deadline = time.monotonic() + idle_seconds + 120 + registered * 0.2
            while True:
                states = _states(fleet)
                asleep = sum(1 for cid in idle if states.get(cid, ("",))[0] == "sleeping")
                if asleep == len(idle):
                    break
                if time.monotonic() > deadline:
                    raise HostError(f"only {asleep} of {len(idle)} idle tenants fell asleep")
                time.sleep(1.0)
            time.sleep(2.0)  # the router's table (0.5 s) and the node settle
            # What the registered tenants cost at rest: CPU over 10 s, the active ones
            # driven, nobody woken.
            rest = _Cores(parts, tenants_cgroup)
            time.sleep(10.0)
            at_rest = rest.cores()
            during = _Cores(parts, tenants_cgroup)
            states = _states(fleet)
            awake_busy = sum(1 for cid in busy if states[cid][0] == "running")
            mem_asleep = memory_in_use()
            by_mode: dict[str, list[str]] = {"stopped": [], "frozen": []}
            for cid in idle:
                state, mode = states[cid]
                if state == "sleeping" and mode in by_mode:
                    by_mode[mode].append(cid)
            wakes: dict[str, list[float]] = {}
            failures: dict[str, dict[str, int]] = {}
            asking: dict[str, float] = {}
            at_node: dict[str, int] = {}
            breakdown: dict[str, dict[str, float]] = {}
            tails: dict[str, dict[str, Any]] = {}
            load = [round(os.getloadavg()[0], 2)]
            for mode, pool_cids in by_mode.items():
                times, failed = [], collections.Counter[str]()
                hops: list[dict[str, float]] = []  # each single wake's hops: the tail's
                first = metrics = _router_wakes(port)
                for cid in pool_cids[:samples]:
                    status, took = _get(port, cid)
                    if status == 200:
                        times.append(took * 1000)
                    else:  # 0: no answer at all
                        failed[str(status)] += 1
                    now = _router_wakes(port)
                    if status == 200 and now["count"] - metrics["count"] == 1:
                        one = {k: (now[k] - metrics[k]) * 1000 for k in now}
                        hops.append(_breakdown(one, [took * 1000]))
                    metrics = now
                # The router's own time from asking for the wake to its answer.
                woken = metrics["count"] - first["count"]
                at_node[mode] = round(metrics["at_node"] - first["at_node"])
                if woken > 0:
                    per = {k: (metrics[k] - first[k]) / woken * 1000 for k in metrics}
                    asking[mode] = per["sum"]
                    breakdown[mode] = _breakdown(per, times)
                    tails[mode] = _tail(hops)
                wakes[mode], failures[mode] = times, dict(failed)
                load.append(round(os.getloadavg()[0], 2))
            while_waking = during.cores()
        finally:
            stop.set()
            if active:
                driver.join(timeout=15)
        node_headroom = fleet.admin.nodes()[0]["headroom"]
        return {
            "benchmark": "sleep",
            "registered": registered,
            "active": active,
            "active_awake": awake_busy,
            "asleep": {mode: len(c) for mode, c in by_mode.items()},
            "made_seconds": round(made_in, 1),
            "copies_retried": retried["copies"],
            "idle_seconds": idle_seconds,
            "memory_limit_mib": memory_mib or "demo-app default",
            **{
                mode: {
                    **_summary(times, failures[mode]),
                    "wake_call_mean_ms": round(asking.get(mode, 0.0), 1),
                    "woken_at_node": at_node.get(mode, 0),
                    "breakdown_ms": breakdown.get(mode, {}),
                    **tails.get(mode, {}),
                }
                for mode, times in wakes.items()
            },
            "load_1m_during_wakes": load,
            # CPU in cores by part ("bench": this client); "host" is everything on the
            # machine, "stolen" what the hypervisor ran elsewhere meanwhile.
            "cores_at_rest": at_rest,
            "cores_while_waking": while_waking,
            "node_memory_in_use_mib": round(mem_asleep / _MIB),
            "tenants_memory_mib": round((mem_asleep - mem_empty) / _MIB),
            "node_memory_available_mib": round(
                node_headroom.get("memory_available_bytes", 0) / _MIB
            ),
            "active_requests": driven["requests"],
            "active_errors": driven["errors"],
        }


class _Cores:
    """CPU used since it was made, in cores: by hoody's processes (`parts`: name →
    pid, threads included), by all tenants (their parent cgroup), by the host, and
    stolen from it by the hypervisor."""

    def __init__(self, parts: dict[str, int], tenants_cgroup: str) -> None:
        self.parts, self.tenants_cgroup = parts, tenants_cgroup
        self.start, self.used = time.monotonic(), self._used()

    def _used(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        used = {}
        for name, pid in self.parts.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                used[name] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            except (OSError, IndexError, ValueError):
                used[name] = 0.0
        used["tenants"] = _cgroup_cpu_seconds(self.tenants_cgroup)
        # user nice system idle iowait irq softirq steal (guest time is in user).
        cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        used["host"] = (sum(cpu) - cpu[3] - cpu[4] - cpu[7]) / tick
        # What the hypervisor gave other guests while this VM's CPUs wanted to run:
        # on a shared machine it explains a slow wake that no part of hoody took.
        used["stolen"] = cpu[7] / tick
        return used

    def cores(self) -> dict[str, float]:
        now, used = time.monotonic(), self._used()
        took = max(1e-6, now - self.start)
        return {k: round((used[k] - self.used[k]) / took, 2) for k in used}


def _cgroup_cpu_seconds(parent: str) -> float:
    v1 = Path("/sys/fs/cgroup/cpuacct", parent, "cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    with contextlib.suppress(OSError):
        for line in Path("/sys/fs/cgroup", parent, "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
    return 0.0


def _breakdown(per: dict[str, float], times: list[float]) -> dict[str, float]:
    """The mean wake's hops (ms) from the router's per-wake sums `per` and the
    client's timings `times`; see the module."""
    ask = per["sum"]
    total = statistics.fmean(times) if times else 0.0
    hops = {
        "router_to_control_plane": ask - per["control_plane"] - per["agent"] - per["node"],
        "control_plane": per["control_plane"],
        "to_agent": per["agent"],
        "node": per["node"],
        "tenant_port": per["port"],
        "first_answer": total - ask - per["port"],
    }
    return {k: round(v, 1) for k, v in hops.items()}


def _tail(hops: list[dict[str, float]]) -> dict[str, Any]:
    """Where the slow wakes' time went: each hop's p95 over single wakes, and the
    hops of the five slowest. A mean cannot tell a slow node from a busy CPU."""
    if not hops:
        return {}
    slowest = sorted(hops, key=lambda h: sum(h.values()), reverse=True)[:5]
    return {
        "breakdown_p95_ms": {k: round(percentile([h[k] for h in hops], 0.95), 1) for k in hops[0]},
        "slowest_ms": slowest,
    }


def _router_wakes(port: int) -> dict[str, float]:
    """The router's wake sums from its /metrics: count (wakes), at_node (of those, at
    their node), sum (seconds spent asking for them), and seconds per phase."""
    request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    values = dict.fromkeys(("count", "at_node", "sum", *_PHASES), 0.0)
    for line in data.decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        if key == "hoody_router_wakes_at_node_total":
            values["at_node"] = float(value)
        elif key.startswith("hoody_router_wake_seconds_"):
            values[key.removeprefix("hoody_router_wake_seconds_")] = float(value)
        elif key.startswith('hoody_router_wake_phase_seconds_total{phase="'):
            values[key.split('"')[1]] = float(value)
    return values


def _summary(times: list[float], failed: dict[str, int]) -> dict[str, Any]:
    return {
        "wakes": len(times),
        "failed": sum(failed.values()),
        "failed_by_status": failed,
        "wake_p50_ms": round(statistics.median(times), 1) if times else None,
        "wake_p95_ms": round(percentile(times, 0.95), 1) if times else None,
        "wake_max_ms": round(max(times), 1) if times else None,
    }
