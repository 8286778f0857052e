"""Host-wide kernel settings a node with hundreds of tenants relies on.

Terminals: kernel.pty.max (4096 by default) is one pool for the whole host, of which
only the host's own devpts may use the last kernel.pty.reserve (1024). Each tenant's
devpts is capped (`bundle.PTYS`), so no tenant takes the host's terminals or a
neighbour's share, but the caps only add up if the pool holds them: it is raised to
the kernel's most (2^20). A terminal costs memory only while open, charged to the
tenant that opened it. It is only ever raised, never lowered.

Keys need nothing any more: the kernel counts them per host uid, and every tenant's
root is a host uid of its own (hoody.agent.ids), so runc's session keyring for each
container comes out of that tenant's own quota (200 keys per uid).

Each container start moves runc's init into the tenant's cgroups, and by default every
such move waits for an RCU grace period under one host-wide lock (cgroup's threadgroup
rwsem), so starts at concurrency 4 queue behind each other. The cgroup2 mount option
`favordynmods` (kernel >= 6.0) lifts that wait, at the cost of slightly dearer forks and
exits host-wide: the trade the kernel documents for hosts that move tasks between
cgroups often, which a node does on every start. It applies to every hierarchy, v1
included, once any cgroup2 mount (here `/sys/fs/cgroup` or the hybrid `unified`) has it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hoody import proc
from hoody.errors import HostError

__all__ = ["SYSCTLS", "HostFacts", "tune_host"]

log = logging.getLogger(__name__)

# sysctl (relative to /proc/sys) -> the least value a node needs.
SYSCTLS = {"kernel/pty/max": 1 << 20}


class HostFacts:
    """What a node reads about its machine for its headroom: memory (/proc/meminfo)
    and the size of the filesystem under its pool. A node is given another one when
    its figures must be chosen (the control plane's tests run real agents over fake
    drivers on machines of any size)."""

    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo in bytes (MemTotal, MemAvailable, ...)."""
        out = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
        return out

    def disk(self, path: Path) -> tuple[int, int] | None:
        """(total, free) bytes of the filesystem holding `path`; None if it is absent."""
        if not path.exists():
            return None
        usage = shutil.disk_usage(path)
        return usage.total, usage.free


def tune_host(
    sysctl_dir: Path = Path("/proc/sys"), mounts: Path = Path("/proc/self/mounts")
) -> dict[str, object]:
    """Raise each of SYSCTLS where it is lower and turn on `favordynmods` where a
    cgroup2 mount lacks it; return what was changed."""
    changed: dict[str, object] = {}
    for name, least in SYSCTLS.items():
        path = sysctl_dir / name
        try:
            current = int(path.read_text())
            if current < least:
                path.write_text(str(least))
                changed[name] = least
                log.info("%s raised to %d", name.replace("/", "."), least)
        except OSError as exc:  # a read-only /proc: tenants still start, with fewer ptys
            log.warning("cannot raise %s to %d: %s", name.replace("/", "."), least, exc)
    remounted = [str(t) for t in _cgroup2_without_favordynmods(mounts) if _favor_dynmods(t)]
    if remounted:
        changed["favordynmods"] = remounted
    return changed


def _cgroup2_without_favordynmods(mounts: Path) -> list[Path]:
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup2" and "favordynmods" not in fields[3]:
            found.append(Path(fields[1]))
    return found


def _favor_dynmods(target: Path) -> bool:
    # mount(8) keeps the mount's other options on a remount; mount(2) would drop them.
    try:
        proc.run(["mount", "-o", "remount,favordynmods", str(target)], timeout=30)
    except HostError as exc:  # an older kernel: starts are slower, nothing breaks
        log.warning("cannot turn on favordynmods on %s: %s", target, exc)
        return False
    log.info("cgroup2 at %s remounted with favordynmods", target)
    return True
