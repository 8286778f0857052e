"""What a node tells about itself: capabilities, headroom (what its tenants use and
what it can still take, see hoody.agent.usage) and KSM, for the CLI and fleet."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

from hoody.agent import ksm
from hoody.agent.engine import Node
from hoody.agent.storage import TemplateVersionRef
from hoody.agent.usage import TenantUse, TtlCache, learn, node_figures, request_of, reserve_bytes
from hoody.errors import HoodyError

__all__ = ["configure", "headroom", "measure", "measure_now", "node_info", "tenant_usage"]

log = logging.getLogger(__name__)

_MIB = 1 << 20
# How often a frozen tenant's memory is read again: it can only shrink (reclaim).
FROZEN_TTL = 60.0


class _Meter:
    """Measures one node's tenants on a thread of its own, every 2 s or four times as
    long as a round took (so at most about a fifth of a core): a heartbeat sends the
    latest round and its age and never waits for 1,000 cgroups to be read. Measured
    inline, 900 tenants took 4.3 s on this loaded 2-core VM, longer than the heartbeat
    interval, and the node was marked down while it worked."""

    def __init__(self, node: Node) -> None:
        self._node = weakref.ref(node)
        self.disk = TtlCache()
        self.frozen = TtlCache(FROZEN_TTL)
        self._latest: tuple[float, list[TenantUse]] | None = None
        self._lock = threading.Lock()
        self._running = False

    def get(self, node: Node) -> tuple[list[TenantUse], float]:
        """(the latest measurement, its age in seconds); the first one is taken now."""
        with self._lock:
            latest = self._latest
            start = not self._running
            self._running = True
        if start:
            threading.Thread(target=self._loop, name="hoody-usage", daemon=True).start()
        if latest is None:
            began = time.monotonic()
            uses = measure(node, self.disk, self.frozen)
            with self._lock:
                if self._latest is None:
                    self._latest = (began, uses)
            return uses, time.monotonic() - began
        return latest[1], time.monotonic() - latest[0]

    def now(self, node: Node) -> list[TenantUse]:
        """Measure now and make it the latest round."""
        began = time.monotonic()
        uses = measure(node, self.disk, self.frozen)
        with self._lock:
            self._latest = (began, uses)
        return uses

    def _loop(self) -> None:
        try:
            while True:
                node = self._node()
                if node is None:
                    return  # the node is gone
                began = time.monotonic()
                uses = measure(node, self.disk, self.frozen)
                del node
                took = time.monotonic() - began
                with self._lock:
                    self._latest = (began, uses)
                time.sleep(max(2.0, 4 * took))
        except Exception as exc:  # a closed store (node shutting down): start again later
            log.debug("measuring tenants stopped: %s", exc)
        finally:
            with self._lock:
                self._running = False


_meters: weakref.WeakKeyDictionary[Node, _Meter] = weakref.WeakKeyDictionary()
_meters_lock = threading.Lock()


def _meter(node: Node) -> _Meter:
    with _meters_lock:
        meter = _meters.get(node)
        if meter is None:
            meter = _meters[node] = _Meter(node)
        return meter


def measure(
    node: Node, cache: TtlCache | None = None, frozen: TtlCache | None = None
) -> list[TenantUse]:
    """Every tenant (but those being deleted) as measured now: working set, own disk
    bytes (re-read every 30 s with `cache`), limit and explicit request.

    A frozen tenant keeps its memory and cannot add to it (nothing of it runs): its
    working set is re-read every `frozen.ttl` s only, per sleep. A stopped one has no
    cgroup and is not read at all. At 2,000 tenants, 1,800 asleep, reading every
    sleeper's cgroup every round was the agent's largest cost at rest."""
    cache = cache or TtlCache()
    frozen = frozen or TtlCache(0.0)
    uses, asleep = [], []
    for t in node.tenants():
        if t.status == "deleting":
            continue
        request = t.limits.memory_request_mib
        if t.status == "creating" or (t.status == "sleeping" and t.asleep != "frozen"):
            memory = 0
        elif t.status == "sleeping":
            key = f"{t.id}@{t.slept_at}"  # a new sleep is measured anew
            memory = frozen.get(key, lambda _, tid=t.id: node.runtime.working_set(tid))
            asleep.append(key)
        else:
            memory = node.runtime.working_set(t.id)
        uses.append(
            TenantUse(
                tid=t.id,
                template=t.template,
                version=t.version,
                running=t.desired == "running",
                limit=t.limits.memory_mib * _MIB,
                request=request * _MIB if request is not None else None,
                memory=memory,
                disk=cache.get(t.id, node.storage.tenant_usage),
            )
        )
    cache.keep(u.tid for u in uses)
    frozen.keep(asleep)
    return uses


def headroom(node: Node) -> dict[str, Any]:
    """What the node has and what its tenants use: memory (total, requested, measured,
    committed, reserve, overcommit, free), CPU, disk, tenant count, and per template
    version what its running tenants use (`templates`, for learned requests)."""
    uses, age = _meter(node).get(node)
    mem = node.host.meminfo()
    total = mem.get("MemTotal", 0)
    learned = learn(uses)
    promised = sum(u.limit for u in uses if u.running)
    disk = node.host.disk(node.config.pool)
    tenants = node.tenants()
    figures = node_figures(
        uses,
        memory_total=total,
        overcommit=node.config.overcommit,
        reserve=reserve_bytes(node.config.memory_reserve, total),
        learned=learned,
    )
    templates = []
    for t in node.store.templates():
        known = learned.get((t.name, t.version))
        request = t.limits.memory_request_mib
        probe = TenantUse("", t.name, t.version, True, t.limits.memory_mib * _MIB, None, 0, 0)
        templates.append(
            {
                "name": t.name,
                "version": t.version,
                "tenants": known.tenants if known else 0,
                "memory_p90_bytes": known.memory_p90 if known else 0,
                "disk_p90_bytes": known.disk_p90 if known else 0,
                "memory_request_bytes": request * _MIB
                if request is not None
                else request_of(probe, learned),
                "request_source": "template"
                if request is not None
                else ("learned" if known else "limit"),
            }
        )
    return {
        "tenants": len(uses),
        "running": sum(1 for t in tenants if t.status == "running"),
        "memory_total_bytes": total,
        "memory_available_bytes": mem.get("MemAvailable", 0),
        "memory_promised_bytes": promised,
        "memory_headroom_bytes": max(0, figures["memory_free_bytes"]),
        **figures,
        "cpus": os.cpu_count() or 1,
        "cpu_promised": round(sum(t.limits.cpu for t in tenants if t.desired == "running"), 2),
        "load_1m": os.getloadavg()[0],
        "disk_total_bytes": disk[0] if disk else 0,
        "disk_free_bytes": disk[1] if disk else 0,
        # How old the measured figures are: copies made since are not in them.
        "measured_age_seconds": round(age, 2),
        "templates": templates,
        "sleeping": sum(1 for t in tenants if t.status == "sleeping"),
        **(node.pressure.headroom() if node.pressure is not None else {}),
        **_usage_or_nothing(node, uses),
    }


def _usage_or_nothing(node: Node, uses: list[TenantUse]) -> dict[str, Any]:
    """`usage`, but a failed measurement must never cost the node its heartbeat (a
    node whose heartbeats fail is marked down): it is logged and left out."""
    try:
        return usage(node, uses)
    except Exception:
        log.exception("measuring tenant use failed; heartbeat sent without it")
        return {}


# Template sizes need a filesystem sync to be exact, which can block for seconds while
# a template is being received, and they change only when a version is made or
# removed: measured at most once a minute, on a thread of their own, never on the
# heartbeat's path (a heartbeat late by 8 s marks the node down).
_TEMPLATE_SIZES_TTL = 60.0
_sizes: dict[int, tuple[float, dict[tuple[str, int], int]]] = {}
_measuring: set[int] = set()
_template_sizes_lock = threading.Lock()
_ksmd_seen: dict[int, tuple[float, float]] = {}


def _template_sizes(node: Node) -> dict[tuple[str, int], int]:
    """The last measured sizes at once; a new measurement starts when they are stale."""
    key = id(node)
    present = {(t.name, t.version) for t in node.store.templates()}
    with _template_sizes_lock:
        at, sizes = _sizes.get(key, (0.0, {}))
        stale = time.monotonic() - at >= _TEMPLATE_SIZES_TTL or set(sizes) != present
        if stale and key not in _measuring:
            _measuring.add(key)
            threading.Thread(
                target=_measure, args=(node, present), name="template-sizes", daemon=True
            ).start()
        return dict(sizes)


def _measure(node: Node, present: set[tuple[str, int]]) -> None:
    key = id(node)
    try:
        sizes = {pair: _version_size(node, *pair) for pair in present}
        with _template_sizes_lock:
            _sizes[key] = (time.monotonic(), sizes)
    finally:
        with _template_sizes_lock:
            _measuring.discard(key)


def _version_size(node: Node, name: str, version: int) -> int:
    # A version being received or removed is listed before (or after) its subvolume
    # exists: it counts as 0 until the next measurement, and never fails a heartbeat.
    try:
        return node.storage.version_size(TemplateVersionRef(name, version), None)
    except (HoodyError, OSError):
        return 0


def usage(node: Node, uses: list[TenantUse]) -> dict[str, Any]:
    """Sums of what `measure` found, for the fleet's dashboard: tenant_memory_bytes
    (working sets of the running tenants), tenant_disk_bytes (their own bytes, each
    one's delta from its template), template_disk_bytes (the template versions on
    this node, stored once), shared_disk_bytes (what the tenants read from those
    templates without owning it: a full copy each would cost this), and KSM profit
    next to ksmd's CPU.
    """
    sizes = _template_sizes(node)
    k = ksm.stats()
    now, cpu = time.monotonic(), float(k["ksmd_cpu_seconds"])
    with _template_sizes_lock:
        before = _ksmd_seen.get(id(node))
        _ksmd_seen[id(node)] = (now, cpu)
    percent = (
        round(100 * (cpu - before[1]) / (now - before[0]), 2)
        if before and now - before[0] > 0.5
        else 0.0
    )
    return {
        "tenant_memory_bytes": sum(u.memory for u in uses),
        "tenant_disk_bytes": sum(u.disk for u in uses),
        "template_disk_bytes": sum(sizes.values()),
        "shared_disk_bytes": sum(sizes.get((u.template, u.version), 0) for u in uses),
        "ksm_profit_bytes": int(k["profit_mib"] * (1 << 20)),
        "ksmd_cpu_seconds": cpu,
        "ksmd_cpu_percent": max(0.0, percent),  # of one CPU, since the previous report
    }


def configure(
    node: Node, *, overcommit: float | None = None, memory_reserve: str | None = None
) -> dict[str, Any]:
    """Change the node's placement settings (saved in node.json); returns node_info."""
    changes: dict[str, Any] = {}
    if overcommit is not None:
        changes["overcommit"] = overcommit
    if memory_reserve is not None:
        changes["memory_reserve"] = memory_reserve
    if changes:
        config = node.config.with_(**changes)  # validates
        config.save()
        node.config = config
    return node_info(node)


def measure_now(node: Node) -> None:
    """Take a measuring round now, so that the next headroom includes every tenant made
    or changed until this moment (rounds otherwise run every 2 s on their own)."""
    _meter(node).now(node)


def tenant_usage(node: Node) -> dict[str, list[int]]:
    """Each tenant's measured [working set bytes, own disk bytes] from the node's
    latest measuring round (the one headroom reports): what heartbeats send now and
    then for the dashboard's tenant table."""
    uses, _ = _meter(node).get(node)
    return {u.tid: [u.memory, u.disk] for u in uses}


def node_info(node: Node) -> dict[str, Any]:
    return {
        "name": node.config.name,
        "subnet": node.config.subnet,
        "storage_mode": node.config.storage_mode,
        "runtime": {
            "name": node.runtime.caps.name,
            "cgroup": node.runtime.caps.cgroup,
            "memory_merge": node.runtime.caps.memory_merge,
        },
        "storage": {
            "modes": list(node.storage.caps.modes),
            "disk_limit": node.storage.caps.disk_limit,
        },
        "overcommit": node.config.overcommit,
        "memory_reserve": node.config.memory_reserve,
        "headroom": headroom(node),
        "sleeping": node.sleepers(),
        "ksm": ksm.stats(),
    }
