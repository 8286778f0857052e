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
are in it, the namespace lives as long as they do.

Holders are forked by a small helper process of the agent's (`_holder_server.py`), not
by the agent: a fork copies the page tables of the whole forking process, 5.6 ms for
an 84 MiB process and 23 ms at 284 MiB on this VM, and the agent grows with its
tenants; the helper stays at a few MiB. Every copy and every wake of a stopped tenant
makes one holder. (An exec'd holder per tenant took 34 ms p50 with the host at load 18.)

The rlimits here matter because host root on some hosts (this sandbox's VM) lacks
CAP_SYS_RESOURCE, and in a namespace it does not own it cannot raise them later; the
runtime could not even set RLIMIT_NOFILE there ("error setting rlimit type 7"), which
is why the OCI config carries no rlimits and NOFILE is set on the runtime process.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from hoody.agent.ids import TenantIds
from hoody.agent.runtime import UserNamespace
from hoody.agent.spec import Limits
from hoody.errors import HostError

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


class _Holders:
    """The agent's holder-making helper process, started on first use and again if it
    died; requests are serialised (each takes about a millisecond)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def make(self, owner: int, rlimits: dict[int, int]) -> tuple[int, int]:
        """(pid, exit code) of a new holder, exited and unreaped."""
        line = json.dumps({"owner": owner, "rlimits": sorted(rlimits.items())}) + "\n"
        with self._lock:
            for _attempt in (1, 2):
                server = self._server()
                try:
                    assert server.stdin is not None and server.stdout is not None
                    server.stdin.write(line)
                    server.stdin.flush()
                    answer = server.stdout.readline()
                except OSError:
                    answer = ""
                if answer:
                    reply = json.loads(answer)
                    return int(reply["pid"]), int(reply["code"])
                self._stop()  # it died: a new one, once
        raise HostError(
            f"the helper that creates tenants' user namespaces ({_SERVER}) keeps failing; "
            "see the agent's log and check that the agent runs as root"
        )

    def reap(self, pid: int) -> None:
        """Reap holder `pid` and wait until it is (a helper that died took its
        holders with it: init reaps them)."""
        with self._lock, contextlib.suppress(OSError):
            server = self._proc
            if server is not None and server.stdin is not None and server.stdout is not None:
                server.stdin.write(json.dumps({"reap": pid}) + "\n")
                server.stdin.flush()
                server.stdout.readline()

    def _server(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            # -I -S: the standard library only, nothing of the agent's environment.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_SERVER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        return self._proc

    def _stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None


_SERVER = Path(__file__).with_name("_holder_server.py")
_holders = _Holders()


@contextlib.contextmanager
def user_namespace(ids: TenantIds, limits: Limits) -> Iterator[UserNamespace]:
    """A new user namespace owned by `ids.owner`, mapping tenant ids 0..size-1 to
    `ids.base`..; yields it open (the fd is closed on exit; the namespace lives on
    while anything else holds it). Raises HostError when the kernel refuses."""
    pid, code = _holders.make(ids.owner, ceilings(limits))
    fd = -1
    try:
        if code != 0:
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
        _holders.reap(pid)
    try:
        # Another process reaches the namespace through our fd table (root may open
        # that magic link), though the holder is gone.
        yield UserNamespace(fd, Path(f"/proc/{os.getpid()}/fd/{fd}"))
    finally:
        os.close(fd)
