"""Memory pressure: read from PSI, and relieved by putting the idlest tenants to sleep.

The kernel's pressure stall information (/proc/pressure/memory) counts the time tasks
waited on memory: reclaim, refaults of pages just evicted, compaction. It rises well
before the OOM killer acts, which is what makes it the signal to act on. Its `total`
counter (microseconds of `some` stall) is read once a second; the share of that second
spent stalled is the node's pressure. Pressure is *sustained* once every second of the
last `pressure_seconds` was at or above `pressure_pct`.

Under sustained pressure a node takes no new tenants (copies are refused, heartbeats
say so and placement skips the node) and puts its idlest running tenants to sleep in
the stopped mode (which frees their memory), a few each second, until the pressure
ends. A tenant is idle when its processes used (almost) no CPU for
`pressure_idle_seconds`; busy tenants keep running however many there are.

This host family (cgroup v1 hybrid) has PSI only system-wide, so that is what is
read on every host: the node's own tenants are the bulk of a server's memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hoody.errors import HoodyError

if TYPE_CHECKING:
    from hoody.agent.engine import Node

__all__ = ["PSI_PATH", "MemoryPressure", "PressureRelief", "Psi", "read_psi"]

log = logging.getLogger(__name__)

PSI_PATH = Path("/proc/pressure/memory")
# A tenant using less CPU than this share of a core is idle (an idle web app blocked
# in accept uses none at all).
_BUSY_CPU_SHARE = 0.005


@dataclass(frozen=True)
class Psi:
    """One reading of /proc/pressure/memory."""

    some_avg10: float  # % of the last 10 s some task stalled on memory (kernel average)
    full_avg10: float  # % of it all non-idle tasks stalled at once
    some_total_us: int  # microseconds of `some` stall since boot
    full_total_us: int


def read_psi(path: Path = PSI_PATH) -> Psi | None:
    """The current PSI reading, or None when the kernel has no PSI (psi=0)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    values: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        values[kind] = {k: float(v) for k, _, v in (p.partition("=") for p in pairs)}
    some, full = values.get("some", {}), values.get("full", {})
    return Psi(
        some.get("avg10", 0.0),
        full.get("avg10", 0.0),
        int(some.get("total", 0)),
        int(full.get("total", 0)),
    )


class MemoryPressure:
    """Sustained memory pressure, from PSI samples taken about once a second.

    `read` is injectable (tests); it returns None on a kernel without PSI, and then
    the node is never under pressure.
    """

    def __init__(
        self,
        pct: float = 10.0,
        seconds: float = 5.0,
        read: Callable[[], Psi | None] = read_psi,
    ) -> None:
        self.pct = pct
        self.seconds = seconds
        self._read = read
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None
        self._above_since: float | None = None
        self.stall_pct = 0.0  # share of the last sampled interval some task stalled
        self.avg10 = 0.0
        self.available = read() is not None
        self._now = time.monotonic()

    def sample(self, now: float | None = None) -> float:
        """Read PSI; returns the share (%) of the time since the last sample that some
        task stalled on memory."""
        now = time.monotonic() if now is None else now
        psi = self._read()
        with self._lock:
            self._now = now
            if psi is None:
                self.stall_pct, self._above_since = 0.0, None
                return 0.0
            self.avg10 = psi.some_avg10
            last, self._last = self._last, (now, psi.some_total_us)
            if last is None or now <= last[0]:
                return self.stall_pct
            self.stall_pct = min(100.0, (psi.some_total_us - last[1]) / (now - last[0]) / 1e4)
            if self.stall_pct >= self.pct:
                if self._above_since is None:
                    self._above_since = last[0]
            else:
                self._above_since = None
            return self.stall_pct

    @property
    def sustained(self) -> bool:
        with self._lock:
            since = self._above_since
            return since is not None and self._now - since >= self.seconds

    def describe(self) -> str:
        return (
            f"memory pressure: tasks stalled on memory {self.stall_pct:.0f}% of the last "
            f"second (PSI some avg10 {self.avg10:.1f}%), at or above {self.pct:g}% for "
            f"{self.seconds:g} s"
        )

    def headroom(self) -> dict[str, Any]:
        """The figures a heartbeat carries (numbers only)."""
        return {
            "memory_pressure_pct": round(self.stall_pct, 2),
            "memory_pressure_avg10": self.avg10,
            "memory_pressure_threshold_pct": self.pct,
            "memory_pressured": 1 if self.sustained else 0,
        }


class PressureRelief:
    """Tracks which tenants are idle and, under sustained pressure, puts the idlest to
    sleep. `once` is called about every second by the agent (api.py)."""

    def __init__(
        self, node: Node, pressure: MemoryPressure, idle_after: float = 60.0, batch: int = 4
    ) -> None:
        self.node = node
        self.pressure = pressure
        self.idle_after = idle_after
        self.batch = batch
        # tenant → (CPU seconds at the last look, when it last used CPU), monotonic
        self._seen: dict[str, tuple[float, float]] = {}
        self._last = 0.0
        self._said_none_idle = False

    def track(self, now: float) -> dict[str, float]:
        """Update each running tenant's last activity; returns tid → idle seconds."""
        elapsed = now - self._last if self._last else 0.0
        self._last = now
        idle: dict[str, float] = {}
        seen: dict[str, tuple[float, float]] = {}
        for tid, desired, status in self.node.store.lifecycle(awake=True):
            if status != "running" or desired != "running":
                continue
            cpu = self.node.runtime.cpu_time(tid)
            before = self._seen.get(tid)
            if before is None or cpu - before[0] > _BUSY_CPU_SHARE * max(elapsed, 1.0):
                active = now  # new to us, or it used CPU since the last look
            else:
                active = before[1]
            seen[tid] = (cpu, active)
            idle[tid] = now - active
        self._seen = seen
        return idle

    def once(self, now: float | None = None) -> list[str]:
        """One round: sample PSI, track activity, and under sustained pressure put up
        to `batch` of the idlest tenants to sleep (stopped). Returns their ids."""
        now = time.monotonic() if now is None else now
        self.pressure.sample(now)
        idle = self.track(now)
        if not self.pressure.sustained:
            self._said_none_idle = False
            return []
        candidates = sorted(
            (tid for tid, seconds in idle.items() if seconds >= self.idle_after),
            key=lambda tid: -idle[tid],
        )
        slept = []
        for tid in candidates[: self.batch]:
            try:
                self.node.sleep(tid, "stopped")
            except HoodyError as exc:
                log.warning("could not put %s to sleep under memory pressure: %s", tid, exc)
                continue
            slept.append(tid)
        if slept:
            log.warning(
                "%s; put %d idle tenant(s) to sleep: %s",
                self.pressure.describe(),
                len(slept),
                ", ".join(slept),
            )
        elif not candidates and not self._said_none_idle:
            self._said_none_idle = True  # once per episode, not every second
            log.warning(
                "%s; no tenant has been idle for %g s, none put to sleep",
                self.pressure.describe(),
                self.idle_after,
            )
        return slept
