"""FakeRuntime: containers as in-memory records, for engine tests without root.

It keeps the same contract as OciRuntime (tests/contract/runtime.py): start twice is a
Conflict, stop is harmless when absent, state is absent after stop. `exec` answers a
few commands the way a shell would (`echo`, `true`, `false`, `hostname`, `env`), the
`responses` given (keyed by the argv tuple) first, and 127 for anything else.
Tests can also make a container "exit" (`crash`) or count OOM kills (`events`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hoody.agent.ids import TenantIds
from hoody.agent.runtime import (
    EVENT_KEYS,
    ContainerSpec,
    ContainerState,
    ExecResult,
    RuntimeCaps,
    UserNamespace,
)
from hoody.agent.spec import Limits
from hoody.errors import Conflict, HostError, NotFound

__all__ = ["FakeRuntime"]


@dataclass
class _Container:
    spec: ContainerSpec
    pid: int
    running: bool = True
    frozen: bool = False
    cpu: float = 0.0
    events: dict[str, int] = field(default_factory=dict)


class FakeRuntime:
    def __init__(
        self,
        caps: RuntimeCaps | None = None,
        responses: dict[tuple[str, ...], ExecResult] | None = None,
    ) -> None:
        self.caps = caps or RuntimeCaps(name="fake", cgroup="v2", memory_merge=True)
        self.responses = dict(responses or {})
        self.containers: dict[str, _Container] = {}
        self.fail_start: set[str] = set()  # tids whose next start fails like runc would
        self.used: dict[str, int] = {}  # working set by tid (tests set what tenants use)
        self._pids = itertools.count(10_000)
        self._lock = threading.Lock()
        self.ready = False  # ensure_ready ran (and no teardown since)

    def ensure_ready(self) -> None:
        self.ready = True

    def teardown(self) -> None:
        self.ready = False

    @contextlib.contextmanager
    def user_namespace(self, ids: TenantIds, limits: Limits) -> Iterator[UserNamespace]:
        """No namespace: the fd is -1 (FakeStorage ignores it) and the path names the
        owner, so tests can see which ids a start used."""
        yield UserNamespace(-1, Path(f"/fake/userns/{ids.owner}-{ids.base}"))

    def start(self, spec: ContainerSpec) -> int:
        with self._lock:
            current = self.containers.get(spec.tid)
            if current is not None and current.running:
                raise Conflict(
                    f"container {spec.tid} is already running (pid {current.pid}); "
                    f"stop it first with `hoody stop {spec.tid}`"
                )
            if spec.tid in self.fail_start:
                self.fail_start.discard(spec.tid)
                raise HostError(f"fake could not start tenant {spec.tid}: injected failure")
            pid = next(self._pids)
            self.containers[spec.tid] = _Container(spec, pid)
            return pid

    def state(self, tid: str) -> ContainerState:
        with self._lock:
            current = self.containers.get(tid)
        if current is None:
            return ContainerState("absent")
        if not current.running:
            return ContainerState("stopped")
        return ContainerState("running", current.pid)

    def stop(self, tid: str, timeout: float = 5.0) -> None:
        with self._lock:
            self.containers.pop(tid, None)

    def freeze(self, tid: str) -> None:
        with self._lock:
            current = self.containers.get(tid)
            if current is None:
                raise NotFound(f"container {tid} does not exist; start the tenant first")
            if not current.running:
                raise Conflict(f"container {tid} is stopped; only a running tenant can freeze")
            current.frozen = True

    def thaw(self, tid: str) -> None:
        with self._lock:
            current = self.containers.get(tid)
            if current is not None:
                current.frozen = False

    def frozen(self, tid: str) -> bool:
        with self._lock:
            current = self.containers.get(tid)
            return current is not None and current.running and current.frozen

    def cpu_time(self, tid: str) -> float:
        with self._lock:
            current = self.containers.get(tid)
            return current.cpu if current is not None else 0.0

    def burn(self, tid: str, seconds: float) -> None:
        """Test hook: the tenant used `seconds` of CPU."""
        with self._lock:
            self.containers[tid].cpu += seconds

    def crash(self, tid: str, oom: bool = False) -> None:
        """Test hook: the tenant's init exits (by the OOM killer when `oom`)."""
        with self._lock:
            current = self.containers[tid]
            current.running = False
            if oom:
                current.events["oom_kill"] = current.events.get("oom_kill", 0) + 1

    def exec(self, tid: str, argv: list[str], timeout: float = 60.0) -> ExecResult:
        current = self.state(tid)
        if current.status == "absent":
            raise NotFound(f"container {tid} does not exist; start the tenant first")
        if current.status == "stopped":
            raise Conflict(f"container {tid} is stopped; start it with `hoody start {tid}`")
        if self.frozen(tid):
            raise Conflict(f"container {tid} is frozen; wake it with `hoody wake {tid}`")
        canned = self.responses.get(tuple(argv))
        if canned is not None:
            return canned
        spec = self.containers[tid].spec
        match argv:
            case ["echo", *words]:
                return ExecResult(0, " ".join(words) + "\n", "")
            case ["true"]:
                return ExecResult(0, "", "")
            case ["false"]:
                return ExecResult(1, "", "")
            case ["hostname"]:
                return ExecResult(0, f"{tid}\n", "")
            case ["env"]:
                env = {"HOSTNAME": tid, "HOME": "/root", **spec.env}
                return ExecResult(0, "".join(f"{k}={v}\n" for k, v in env.items()), "")
        return ExecResult(127, "", f"{argv[0] if argv else ''}: command not found\n")

    def list(self) -> list[str]:
        with self._lock:
            return sorted(self.containers)

    def working_set(self, tid: str) -> int:
        """`used[tid]` while it runs (tests set it), else 8 MiB; 0 when not running."""
        with self._lock:
            current = self.containers.get(tid)
            if current is None or not current.running:
                return 0
            return self.used.get(tid, 8 << 20)

    def memory_events(self, tid: str) -> dict[str, int]:
        events = dict.fromkeys(EVENT_KEYS, 0)
        with self._lock:
            current = self.containers.get(tid)
            if current is not None:
                events.update(current.events)
                if current.running:
                    events["pids"] = max(events["pids"], 1)
        return events
