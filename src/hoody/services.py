"""hoody's own processes get their CPU share while tenants spin.

Every request to a tenant passes through the router, and every copy, wake and exec
through the control plane and an agent. Tenants sit under one parent cgroup weighed
like 16 busy processes (`hoody.agent.runtime.oci.PARENT_CPU_SHARES`), so that a
tenant at its quota cannot use up the group's share; a process in the host's root
cgroup weighs one. While a tenant spins at its limit, a host process therefore waits
behind the tenants' whole group. Measured with `hoody bench noisy` (a tenant's HTTP
p99 from a host client while its neighbour spins four processes at its 1-CPU quota,
2-core VM): +18.6 ms with the client in the root cgroup, +3.1 ms with it in a cgroup
weighed like the tenants' parent.

So the router, the control plane and the agents (`hoody up`, `hoody server`,
`hoody router`, `hoody node serve`) move themselves into `hoody-services`, weighed
like the tenants' parent: under contention hoody's request path gets as much CPU as
all tenants together, and no more. What they start for tenants leaves it: runc moves
the tenant into its own cgroups, and Exec workers join cgroups of their own
(`hoody.exec.sandbox.Cgroup`, the cpu controller included).

Best effort: without root, or under systemd (which owns the unit's cgroup; give the
unit `CPUWeight=` instead), the process stays where it is and says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SERVICES", "SERVICES_CPU_SHARES", "join", "joined"]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SERVICES = "hoody-services"
SERVICES_CPU_SHARES = 1024 * 16  # v1 cpu.shares, as the tenants' parent; v2 scaled alike


def _v1(root: Path) -> bool:
    """Whether the host has a cgroup v1 cpu hierarchy (hybrid hosts included)."""
    return (root / "cpu").is_dir() and not (root / "cgroup.controllers").exists()


def _paths(root: Path) -> tuple[Path, Path, str]:
    """(the services cgroup, the file its weight goes in, that weight) for the host's
    cgroup version."""
    if _v1(root):
        group = root / "cpu" / SERVICES
        return group, group / "cpu.shares", str(SERVICES_CPU_SHARES)
    group = root / SERVICES
    return group, group / "cpu.weight", str(SERVICES_CPU_SHARES * 100 // 1024)


def _current(root: Path, pid: int) -> Path | None:
    """The cgroup (cpu hierarchy on v1) `pid` is in now, to return to."""
    try:
        lines = Path(f"/proc/{pid or os.getpid()}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = _v1(root)
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if v1 and "cpu" in controllers.split(","):
            return root / "cpu" / path.lstrip("/")
        if not v1 and controllers == "":
            return root / path.lstrip("/")
    return None


def join(pid: int = 0, root: Path = CGROUP_ROOT) -> str | None:
    """Move process `pid` (0: this one, all its threads) into `hoody-services`,
    creating and weighing it. Returns None once there, else why it stayed put."""
    if os.environ.get("INVOCATION_ID"):
        why = "started by systemd, which owns this unit's cgroup: set CPUWeight= on the unit"
    elif os.geteuid() != 0:
        why = "not root: cgroups are root's"
    else:
        group, weight_file, weight = _paths(root)
        try:
            group.mkdir(exist_ok=True)
            if weight_file.read_text().strip() != weight:
                weight_file.write_text(weight)
            (group / "cgroup.procs").write_text(str(pid or os.getpid()))
            return None
        except OSError as exc:
            why = f"cannot use {group}: {exc}"
    log.warning("hoody's processes keep the host's default CPU weight (%s)", why)
    return why


@contextlib.contextmanager
def joined(root: Path = CGROUP_ROOT) -> Iterator[str | None]:
    """This process in `hoody-services` for the block, then back where it was
    (benchmarks and tests that stand in for hoody's processes)."""
    before = _current(root, 0)
    why = join(root=root)
    try:
        yield why
    finally:
        if why is None and before is not None:
            with contextlib.suppress(OSError):
                (before / "cgroup.procs").write_text(str(os.getpid()))
            remove_if_empty(root)


def remove_if_empty(root: Path = CGROUP_ROOT) -> None:
    """Remove `hoody-services` once no process is in it: benchmarks' scratch agents
    join it and leave it behind. A busy one stays (the kernel refuses: EBUSY), and
    the next process to join makes it again."""
    with contextlib.suppress(OSError):
        _paths(root)[0].rmdir()
