"""What a node tells about itself: capabilities, headroom and KSM, for the CLI and fleet."""

from __future__ import annotations

import os
import shutil
from typing import Any

from hoody.agent import ksm
from hoody.agent.engine import Node

__all__ = ["headroom", "node_info"]


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def headroom(node: Node) -> dict[str, Any]:
    """Memory free after the limits already promised, CPU, disk and tenant count."""
    tenants = [t for t in node.tenants() if t.status != "deleting"]
    mem = _meminfo()
    promised = sum(t.limits.memory_mib for t in tenants if t.desired == "running") << 20
    disk = shutil.disk_usage(node.config.pool) if node.config.pool.exists() else None
    return {
        "tenants": len(tenants),
        "running": sum(1 for t in tenants if t.status == "running"),
        "memory_total_bytes": mem.get("MemTotal", 0),
        "memory_available_bytes": mem.get("MemAvailable", 0),
        "memory_promised_bytes": promised,
        "memory_headroom_bytes": max(0, mem.get("MemTotal", 0) - promised),
        "cpus": os.cpu_count() or 1,
        "cpu_promised": round(sum(t.limits.cpu for t in tenants if t.desired == "running"), 2),
        "load_1m": os.getloadavg()[0],
        "disk_total_bytes": disk.total if disk else 0,
        "disk_free_bytes": disk.free if disk else 0,
    }


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
        "headroom": headroom(node),
        "ksm": ksm.stats(),
    }
