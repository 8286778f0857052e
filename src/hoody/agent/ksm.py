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


_ksmd_pid: list[str] = []  # found once: ksmd is a kernel thread that never restarts


def _cpu_seconds(pid: str) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat[stat.find("(") + 1 : stat.rfind(")")] != "ksmd":
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ksmd_cpu_seconds() -> float:
    # Walking all of /proc costs tens of ms with thousands of tenant processes, and
    # heartbeats ask every 2 s: remember where ksmd is.
    if _ksmd_pid and (found := _cpu_seconds(_ksmd_pid[0])) is not None:
        return found
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (found := _cpu_seconds(pid)) is not None:
            _ksmd_pid[:] = [pid]
            return found
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
