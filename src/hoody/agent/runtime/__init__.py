"""Runtime: an OCI runtime (runc or crun) driven through its CLI and a generated bundle.

The tenant's processes run in their own user, pid, mount, ipc, uts and cgroup
namespaces and join the network namespace the network layer made. The user namespace
is made first (`Runtime.user_namespace`), owned by the tenant's own owner uid and
mapping its ids to its own host range (hoody.agent.ids), so the storage can mount the
tenant's files through the same mapping before the container joins it.
stdout/stderr go straight to a per-tenant log file.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from hoody.agent.ids import TenantIds
from hoody.agent.spec import Limits

__all__ = [
    "EVENT_KEYS",
    "ContainerSpec",
    "ContainerState",
    "ExecResult",
    "ExecSession",
    "Runtime",
    "RuntimeCaps",
    "UserNamespace",
]

# The keys of Runtime.memory_events, always all present.
EVENT_KEYS = (
    "oom_kill",  # processes the OOM killer took
    "memory_max_hit",  # charges refused at the memory limit, as the kernel counts them
    "pids_max_hit",  # forks refused by the pids limit
    "memory_bytes",  # memory in use now
    "memory_peak_bytes",  # most memory in use since start
    "pids",  # processes and threads now
)


@dataclass(frozen=True)
class RuntimeCaps:
    """What the runtime on this host can do; callers test these, not the name."""

    name: str  # "runc" or "crun"
    cgroup: Literal["v1", "v2"]  # where the controllers are (a hybrid host counts as v1)
    memory_merge: bool  # PR_SET_MEMORY_MERGE works (KSM opt-in per template)
    cgroupns: bool = True  # the kernel has cgroup namespaces (tenants see only their own)
    freezer: bool = True  # tenants can be frozen (v1 freezer hierarchy, or v2 cgroup.freeze)


@dataclass(frozen=True)
class UserNamespace:
    """A tenant's user namespace while it is being set up: `fd` is open in this
    process (for idmapped mounts), `path` is where another process (the runtime) can
    join it."""

    fd: int
    path: Path


@dataclass(frozen=True)
class ContainerSpec:
    tid: str
    rootfs: Path
    args: tuple[str, ...]
    limits: Limits
    netns: Path
    log_path: Path
    ids: TenantIds  # owner and host range of the tenant's user namespace
    userns: Path  # that namespace, made by Runtime.user_namespace: the container joins it
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    ksm: bool = False
    # Run the node's minimal init (tini) as PID 1 in front of `args`, so orphans are
    # reaped and signals forwarded; False when the template's entrypoint is an init.
    init: bool = True


@dataclass(frozen=True)
class ContainerState:
    """running: the init process is alive (a paused container counts as running);
    stopped: the runtime still knows the container but its init has exited (or it was
    created and never started); absent: the runtime does not know the id.
    `pid` is the host pid of the init process, 0 unless running."""

    status: Literal["running", "stopped", "absent"]
    pid: int = 0


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


class ExecSession(Protocol):
    """A command running in a tenant with its streams open (session.ProcessExec).

    `stdout_fd` (with a TTY: the terminal, stderr included) and `stderr_fd` are
    non-blocking; read them until EOF (b"", or EIO for a terminal)."""

    tty: bool
    stdout_fd: int
    stderr_fd: int | None

    def write_stdin(self, data: bytes) -> None: ...

    def close_stdin(self) -> None: ...

    def resize(self, cols: int, rows: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    """Contract: tests/contract/runtime.py (RuntimeContract), passed by OciRuntime
    (tests/integration/test_runtime_oci.py) and FakeRuntime (tests/unit/agent)."""

    caps: RuntimeCaps

    def ensure_ready(self) -> None:
        """Start (or restart) what tenants use from the host beyond the runtime: the
        node's lxcfs, and the launcher their inits are children of. Cheap when all is
        up; the agent calls it on start and on every supervisor round. Never raises
        for a missing optional part (it logs)."""

    def teardown(self) -> None:
        """Stop what ensure_ready started and remove its mounts; call once no tenant
        is left. Harmless when nothing runs."""

    def user_namespace(
        self, ids: TenantIds, limits: Limits
    ) -> AbstractContextManager[UserNamespace]:
        """A new user namespace owned by `ids.owner` that maps tenant ids
        0..ids.size-1 to host ids ids.base.., its totals (processes, pending signals,
        mqueue bytes, ...) capped for `limits`; usable within the `with` block.

        Every start needs one (spec.userns). Raises HostError when the kernel refuses.
        Leaves nothing behind once the block ends and nothing joined it.
        """

    def start(self, spec: ContainerSpec) -> int:
        """Create and start the container detached; return its init pid on the host.

        A stopped leftover of the same id is removed first. Raises Conflict when a
        container of that id is running, HostError when the runtime refuses (the
        message carries its error). Leaves nothing on failure.
        """

    def state(self, tid: str) -> ContainerState:
        """Cheap enough to poll: no subprocess on the common path."""

    def stop(self, tid: str, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`, then remove; harmless when absent.

        Afterwards state(tid) is absent and the tenant's cgroup is gone. Note that a
        container's init (pid 1 in its namespace) ignores SIGTERM unless it installed a
        handler, so such a tenant takes the whole `timeout` to stop.
        """

    def freeze(self, tid: str) -> None:
        """Freeze every process of the running tenant in its cgroup: they keep their
        memory and get no CPU until `thaw`. Returns once all are frozen; harmless when
        frozen already. Raises NotFound when absent, Conflict when stopped, HostError
        when the freezer does not take within a few seconds (the tenant is thawed)."""

    def thaw(self, tid: str) -> None:
        """Let a frozen tenant run again; harmless when it is not frozen or absent."""

    def frozen(self, tid: str) -> bool:
        """True while the tenant's cgroup is frozen (False when absent or stopped).
        A frozen tenant's state is still running; `stop` works on it."""

    def exec(self, tid: str, argv: list[str], timeout: float = 60.0) -> ExecResult:
        """Run argv inside the running tenant (as its root, with its env and cwd) and
        collect its output. Raises NotFound when absent, Conflict when stopped,
        HostError after killing the command when it outlives `timeout`."""

    def open_exec(
        self,
        tid: str,
        argv: list[str],
        *,
        tty: bool = False,
        env: dict[str, str] | None = None,
        cols: int = 80,
        rows: int = 24,
    ) -> ExecSession:
        """Start argv in the running tenant with its streams open (session.py): output
        readable as it comes, stdin writable, a pseudo-terminal with `tty`. No time
        limit; the caller `kill`s and always `close`s it. Raises as `exec` does."""

    def list(self) -> list[str]:
        """Container ids this runtime knows (running or stopped)."""

    def cpu_time(self, tid: str) -> float:
        """CPU seconds the tenant's processes used since it started (its cgroup's
        counter); 0.0 when it has no cgroup. Cheap: read for every tenant each round."""

    def memory_events(self, tid: str) -> dict[str, int]:
        """Counters of the tenant's cgroup, one per EVENT_KEYS entry; all zero when
        the tenant has no cgroup (stopped or absent)."""

    def working_set(self, tid: str) -> int:
        """Bytes the tenant uses that the kernel could not simply drop: its cgroup's
        memory usage minus inactive file cache (what kubelet calls the working set).
        0 when it has no cgroup. Placement counts this, not the limit."""
