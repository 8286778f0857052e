"""Host-wide kernel settings a node with hundreds of tenants relies on.

Every tenant's root is the same unprivileged host uid (the node's `uid_base`), and the
kernel counts keys per uid: runc gives each container a session keyring, so with the
default quota (200 keys, 20000 bytes per non-root uid) the 201st tenant fails to start
("unable to create session key: disk quota exceeded"). The quota is raised to what the
kernel allows root; it is only ever raised, never lowered.

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
from pathlib import Path

from hoody import proc
from hoody.errors import HostError

__all__ = ["KEY_QUOTA", "tune_host"]

log = logging.getLogger(__name__)

# kernel.keys.* -> the least value a node needs (root's defaults).
KEY_QUOTA = {"maxkeys": 1_000_000, "maxbytes": 25_000_000}


def tune_host(
    sysctl_dir: Path = Path("/proc/sys/kernel/keys"), mounts: Path = Path("/proc/self/mounts")
) -> dict[str, object]:
    """Raise the per-uid key quota where it is lower and turn on `favordynmods` where
    a cgroup2 mount lacks it; return what was changed."""
    changed: dict[str, object] = {}
    for name, least in KEY_QUOTA.items():
        path = sysctl_dir / name
        try:
            current = int(path.read_text())
            if current < least:
                path.write_text(str(least))
                changed[name] = least
        except OSError as exc:  # no keys support, or a read-only /proc: tenants still start
            log.warning("cannot raise kernel.keys.%s to %d: %s", name, least, exc)
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
