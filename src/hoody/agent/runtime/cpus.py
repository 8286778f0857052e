"""Which CPUs a tenant runs on: a tenant limited to fewer cores than the host has runs
on ceil(limit) of them, chosen to spread the tenants evenly (as Incus pins a
`limits.cpu` count and balances).

Why (measured with `hoody bench noisy` on this 2-core VM, HZ=250): a tenant spinning
four processes at its 1-CPU quota, free to run anywhere, takes both cores at once for
half of every quota period. A neighbour's request then shares a core with the spinner
for its whole CPU burst, and the kernel interleaves the two only at its 4 ms tick:
the neighbour's HTTP p99 rose by 3.8-6.3 ms. With the spinner on one core and the
neighbour on the other it rose by 0.1 ms. Pinned to the *same* core it still rose by
3.4 ms: the placement is what helps, so tenants are spread, not packed.

The price: a tenant cannot borrow an idle core outside its set, so on a host with
more busy tenants than cores some wait while another core idles. A tenant whose limit
covers every core is not pinned at all.

The placement lives in the agent's memory; after a restart it is read back from the
running tenants' cpuset cgroups (`adopt`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["CpuPlacer", "cpu_list", "has_cpuset", "held_cpusets", "parse_cpu_list"]


def cpu_list(cpus: Iterable[int]) -> str:
    """ "0,2-3" for {0, 2, 3}: the kernel's (and OCI's) cpuset syntax."""
    out: list[str] = []
    run: list[int] = []
    for cpu in sorted(set(cpus)):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_cpu_list(text: str) -> set[int]:
    """{0, 2, 3} for "0,2-3"; ValueError when it is not a cpuset list."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


class CpuPlacer:
    """Tenants → CPUs of `host_cpus`, each tenant's share of a core counted on the
    CPUs it holds. Thread-safe (tenants start in parallel)."""

    def __init__(self, host_cpus: Iterable[int]) -> None:
        self.host_cpus = sorted(set(host_cpus))
        self._held: dict[str, tuple[tuple[int, ...], float]] = {}  # tid → (cpus, share each)
        self._lock = threading.Lock()

    def place(self, tid: str, cores: float) -> str | None:
        """The cpuset for tenant `tid` limited to `cores` (None: not pinned, its limit
        covers every core), recorded as held until `release`."""
        want = math.ceil(cores - 1e-9)
        if want >= len(self.host_cpus):
            self.release(tid)
            return None
        with self._lock:
            self._held.pop(tid, None)
            load = self._loads()
            chosen = tuple(sorted(sorted(self.host_cpus, key=lambda c: (load[c], c))[:want]))
            self._held[tid] = (chosen, cores / want)
        return cpu_list(chosen)

    def adopt(self, tid: str, cpus: str, cores: float | None = None) -> None:
        """Count a running tenant's existing cpuset (read back after a restart); a set
        that covers every host CPU is no pin and is ignored, and a tenant placed here
        already keeps its placement (and its share)."""
        held = tuple(sorted(parse_cpu_list(cpus) & set(self.host_cpus)))
        if not held or len(held) >= len(self.host_cpus):
            return
        share = (cores if cores is not None else len(held)) / len(held)
        with self._lock:
            self._held.setdefault(tid, (held, share))

    def release(self, tid: str) -> None:
        with self._lock:
            self._held.pop(tid, None)

    def loads(self) -> dict[int, float]:
        """Cores' worth of tenant limits pinned on each CPU."""
        with self._lock:
            return self._loads()

    def _loads(self) -> dict[int, float]:
        load = dict.fromkeys(self.host_cpus, 0.0)
        for cpus, share in self._held.values():
            for cpu in cpus:
                load[cpu] += share
        return load


def has_cpuset(root: Path, cgroup: str) -> bool:
    """Whether tenants can be given CPUs: the cpuset controller is mounted (v1) or
    offered at the root (v2)."""
    if cgroup == "v1":
        return (root / "cpuset").is_dir()
    try:
        return "cpuset" in (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def held_cpusets(root: Path, cgroup: str, parent: str) -> Iterator[tuple[str, str]]:
    """(tenant id, cpuset) of every tenant cgroup under `parent` with processes in it."""
    base = root / "cpuset" / parent if cgroup == "v1" else root / parent
    with contextlib.suppress(OSError):
        for group in base.iterdir():
            with contextlib.suppress(OSError):
                if group.is_dir() and (group / "cgroup.procs").read_text().strip():
                    yield group.name, (group / "cpuset.cpus").read_text().strip()
