"""Runtime: an OCI runtime (runc or crun) driven through its CLI and a generated bundle.

The tenant's processes run in their own user, pid, mount, ipc, uts and cgroup
namespaces and join the network namespace the network layer made. Tenant root maps to
an unprivileged host uid range. stdout/stderr go straight to a per-tenant log file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from hoody.agent.spec import Limits

__all__ = ["ContainerSpec", "ContainerState", "ExecResult", "Runtime", "RuntimeCaps"]


@dataclass(frozen=True)
class RuntimeCaps:
    name: str  # "runc" or "crun"
    cgroup: Literal["v1", "v2"]
    memory_merge: bool  # PR_SET_MEMORY_MERGE works (KSM opt-in per template)


@dataclass(frozen=True)
class ContainerSpec:
    tid: str
    rootfs: Path
    args: tuple[str, ...]
    limits: Limits
    netns: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    uid_base: int = 100000
    uid_size: int = 65536
    ksm: bool = False


@dataclass(frozen=True)
class ContainerState:
    status: Literal["running", "stopped", "absent"]
    pid: int = 0


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


class Runtime(Protocol):
    """Contract: tests/contract/test_runtime.py."""

    caps: RuntimeCaps

    def start(self, spec: ContainerSpec) -> int:
        """Create and start the container detached; return its init pid on the host.

        A stopped leftover of the same id is removed first. Leaves nothing on failure.
        """

    def state(self, tid: str) -> ContainerState: ...

    def stop(self, tid: str, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`, then remove; harmless when absent."""

    def exec(self, tid: str, argv: list[str], timeout: float = 60.0) -> ExecResult:
        """Run argv inside the running tenant and collect its output."""

    def list(self) -> list[str]:
        """Container ids this runtime knows (running or stopped)."""

    def memory_events(self, tid: str) -> dict[str, int]:
        """Counters of the tenant's cgroup: {"oom_kill": n, "pids_max_hit": n, ...}."""
