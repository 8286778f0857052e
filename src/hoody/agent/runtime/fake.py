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
import os
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

    def open_exec(
        self,
        tid: str,
        argv: list[str],
        *,
        tty: bool = False,
        env: dict[str, str] | None = None,
        cols: int = 80,
        rows: int = 24,
    ) -> CannedExec:
        """`exec`'s answer as a session: its output on pipes, already exited. `cat`
        answers with its stdin (so a session's input can be tested)."""
        if argv == ["cat"]:
            self.state(tid)
            return CannedExec(None, tty)
        return CannedExec(self.exec(tid, argv), tty)

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


class CannedExec:
    """An exec session over pipes; with `result` None it echoes stdin until EOF."""

    def __init__(self, result: ExecResult | None, tty: bool) -> None:
        self.tty = tty
        self.size = (80, 24)
        out_r, self._out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdout_fd, self.stderr_fd = out_r, (None if tty else err_r)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        self._err_r = err_r
        self._code = 0
        self._done = threading.Event()
        if result is not None:
            os.write(self._out_w, (result.stdout + (result.stderr if tty else "")).encode())
            if not tty:
                os.write(err_w, result.stderr.encode())
            self._code = result.exit_code
            self._finish()
        os.close(err_w)

    def _finish(self) -> None:
        if not self._done.is_set():
            os.close(self._out_w)
            self._done.set()

    def write_stdin(self, data: bytes) -> None:
        if not self._done.is_set():
            os.write(self._out_w, data)

    def close_stdin(self) -> None:
        self._finish()

    def resize(self, cols: int, rows: int) -> None:
        self.size = (cols, rows)

    def wait(self, timeout: float | None = None) -> int | None:
        return self._code if self._done.wait(timeout) else None

    def kill(self) -> None:
        self._code = 137
        self._finish()

    def close(self) -> None:
        self._finish()
        for fd in (self.stdout_fd, self._err_r):
            with contextlib.suppress(OSError):
                os.close(fd)
