"""A tenant's user namespace, owned by the tenant's own owner uid (see hoody.agent.ids).

The kernel charges what a namespace's processes use (inotify instances and watches,
mqueue bytes, pending signals, processes, nested namespaces) up the chain to the uid
that created the namespace, and caps the namespace's total by that creator's rlimits at
creation. So the namespace is made by a short-lived holder process:

    fork → rlimits set (the tenant's ceilings) → uid/gid := owner, no groups
         → unshare(CLONE_NEWUSER) → exec `cat` (waits on a pipe of ours)

then root writes uid_map/gid_map from outside (the owner could only map itself), opens
the namespace and lets the holder go: the open fd keeps the namespace alive for the
idmapped mounts and for the runtime, which joins it by path (`/proc/<agent>/fd/<n>`;
runc 1.1 then writes no maps). Once the container's processes are in it, the namespace
lives as long as they do. A holder costs one fork and exec, a few milliseconds.

The rlimits here matter because host root on some hosts (this sandbox's VM) lacks
CAP_SYS_RESOURCE, and in a namespace it does not own it cannot raise them later; the
runtime could not even set RLIMIT_NOFILE there ("error setting rlimit type 7"), which
is why the OCI config carries no rlimits and NOFILE is set on the runtime process.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hoody import proc
from hoody.agent.ids import TenantIds
from hoody.agent.runtime import UserNamespace
from hoody.agent.spec import Limits
from hoody.errors import HostError, MissingDependency
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
    cat = shutil.which("cat")
    if cat is None:
        raise MissingDependency("`cat` is not installed; run `apt-get install coreutils`")
    rlimits = ceilings(limits)

    def become_holder() -> None:
        # After the uid switch (subprocess does that first): lowering needs no privilege.
        for kind, value in rlimits.items():
            resource.setrlimit(kind, (value, value))
        unshare(CLONE_NEWUSER, "user namespace")

    try:
        holder = subprocess.Popen(
            [cat],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            user=ids.owner,
            group=ids.owner,
            extra_groups=[],
            preexec_fn=become_holder,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostError(
            f"could not create a user namespace owned by uid {ids.owner}: {exc}; check "
            "`sysctl user.max_user_namespaces` and that user namespaces are enabled"
        ) from exc
    fd = -1
    try:
        try:
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{holder.pid}/{name}", "w") as f:
                    f.write(ids.map_line())
            fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise HostError(
                f"could not map host ids {ids.base}..{ids.base + ids.size - 1} into a tenant "
                f"user namespace: {exc.strerror}; another process may hold that range"
            ) from exc
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # cat reads EOF and exits
        try:
            proc.wait(holder, 10.0)
        except BaseException:
            holder.kill()
            holder.wait()
            raise
    try:
        # Another process reaches the namespace through our fd table (root may open
        # that magic link), even though the holder is gone.
        yield UserNamespace(fd, Path(f"/proc/{os.getpid()}/fd/{fd}"))
    finally:
        os.close(fd)
