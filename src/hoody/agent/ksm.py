"""KSM: opt-in page merging for one trust domain (a template), and its honest cost.

Merging across tenants opens page-dedup side channels, so it is off unless a
template asks for it; then its tenants' processes are marked with
PR_SET_MEMORY_MERGE (see the runtime) and ksmd must be running. `stats` reports the
profit the kernel computes next to the CPU ksmd burned to get it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["enable", "stats"]

KSM = Path("/sys/kernel/mm/ksm")


def _read_int(name: str) -> int:
    try:
        return int((KSM / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def enable() -> None:
    """Start ksmd; it only scans memory that asked to be merged."""
    if (KSM / "run").exists() and _read_int("run") != 1:
        (KSM / "run").write_text("1\n")


def _ksmd_cpu_seconds() -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        if name == "ksmd":
            fields = stat[stat.rfind(")") + 2 :].split()
            return (int(fields[11]) + int(fields[12])) / ticks
    return 0.0


def stats() -> dict[str, Any]:
    page = os.sysconf("SC_PAGE_SIZE")
    return {
        "running": _read_int("run") == 1,
        "profit_mib": round(_read_int("general_profit") / (1 << 20), 2),
        "pages_sharing": _read_int("pages_sharing"),
        "saved_mib": round(_read_int("pages_sharing") * page / (1 << 20), 2),
        "ksmd_cpu_seconds": round(_ksmd_cpu_seconds(), 2),
    }
