"""A tenant's user namespace, owned by the tenant's own owner uid (see hoody.agent.ids).

The kernel charges what a namespace's processes use (inotify instances and watches,
mqueue bytes, pending signals, processes, nested namespaces) up the chain to the uid
that created the namespace, and caps the namespace's total by that creator's rlimits at
creation. So the namespace is made by a short-lived holder process:

    fork → rlimits set (the tenant's ceilings) → uid/gid := owner, no groups
         → unshare(CLONE_NEWUSER) → exit

and, while the holder is an unreaped zombie (its credentials, and so its namespace,
are still reachable through /proc), root opens the namespace and writes uid_map/gid_map
from outside (the owner could only map itself), then reaps it: the open fd keeps the
namespace alive for the idmapped mounts and for the runtime, which joins it by path
(`/proc/<agent>/fd/<n>`; runc 1.1 then writes no maps). Once the container's processes
are in it, the namespace lives as long as they do. A holder costs one fork and no exec
(an exec'd holder waiting on a pipe took 34 ms p50 with the host at load 18).

The rlimits here matter because host root on some hosts (this sandbox's VM) lacks
CAP_SYS_RESOURCE, and in a namespace it does not own it cannot raise them later; the
runtime could not even set RLIMIT_NOFILE there ("error setting rlimit type 7"), which
is why the OCI config carries no rlimits and NOFILE is set on the runtime process.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

from hoody.agent.ids import TenantIds
from hoody.agent.runtime import UserNamespace
from hoody.agent.spec import Limits
from hoody.errors import HostError
from hoody.syscalls import CLONE_NEWUSER, unshare

__all__ = ["NOFILE", "ceilings", "user_namespace"]

# Open files per process in a tenant (set on the runtime process, inherited).
NOFILE = 1024
# Per tenant, whatever uids its processes switch to: queued signals (each a kernel
# object), POSIX message queue bytes (the kernel's per-user default) and locked memory.
SIGPENDING = 4096
MSGQUEUE = 819_200
MEMLOCK = 8 << 20


def ceilings(limits: Limits) -> dict[int, int]:
    """The rlimits a tenant's namespace is capped by, for every uid in it together.

    The pids cgroup is the tenant's process cap (and counts what it refused);
    RLIMIT_NPROC, counted per owner, is a backstop at twice that, which also holds
    for a tenant process outside its cgroup.
    """
    return {
        resource.RLIMIT_NPROC: 2 * limits.pids,
        resource.RLIMIT_SIGPENDING: SIGPENDING,
        resource.RLIMIT_MSGQUEUE: MSGQUEUE,
        resource.RLIMIT_MEMLOCK: MEMLOCK,
    }


@contextlib.contextmanager
def user_namespace(ids: TenantIds, limits: Limits) -> Iterator[UserNamespace]:
    """A new user namespace owned by `ids.owner`, mapping tenant ids 0..size-1 to
    `ids.base`..; yields it open (the fd is closed on exit; the namespace lives on
    while anything else holds it). Raises HostError when the kernel refuses."""
    rlimits = ceilings(limits)
    pid = os.fork()
    if pid == 0:  # the holder: no exec, no Python beyond these calls, then gone
        code = 0
        try:
            for kind, value in rlimits.items():
                resource.setrlimit(kind, (value, value))
            os.setgroups([])
            os.setresgid(ids.owner, ids.owner, ids.owner)
            os.setresuid(ids.owner, ids.owner, ids.owner)
            unshare(CLONE_NEWUSER, "user namespace")
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    fd = -1
    try:
        # Exited but not reaped: its /proc entries (and so its namespace) stay
        # reachable until waitpid below, and no holder process outlives this call.
        status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        if status is None or status.si_status != 0:
            code = status.si_status if status is not None else -1
            raise HostError(
                f"could not create a user namespace owned by uid {ids.owner}: "
                f"{os.strerror(code) if code > 0 else 'holder failed'}; check "
                "`sysctl user.max_user_namespaces` and that user namespaces are enabled"
            )
        try:
            fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(ids.map_line())
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            raise HostError(
                f"could not map host ids {ids.base}..{ids.base + ids.size - 1} into a tenant "
                f"user namespace: {exc.strerror}; another process may hold that range"
            ) from exc
    finally:
        os.waitpid(pid, 0)
    try:
        # Another process reaches the namespace through our fd table (root may open
        # that magic link), though the holder is gone.
        yield UserNamespace(fd, Path(f"/proc/{os.getpid()}/fd/{fd}"))
    finally:
        os.close(fd)
