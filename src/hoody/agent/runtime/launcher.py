"""The agent's launcher: the process that starts each tenant's runtime and is the
parent of every tenant's init.

`runc run --detach` exits once the tenant runs, and the kernel gives the orphaned
init to the nearest child subreaper above it, else to the host's PID 1. Left to
PID 1, a node's hundreds of tenant inits are hundreds of children of the host's init,
whose work grows with its children (on this VM its init took half a core with 1,000 of
them). The launcher (`_launcher_server.py`, a small stdlib-only process) is that
subreaper: the agent asks it to start `runc run`, the tenant's init becomes its child,
and it reaps each one when it exits.

It outlives the agent: when the agent goes, the launcher takes no more requests but
stays while it has children, so a restarted agent's tenants are not handed to the
host's init; the new agent starts a launcher of its own.

Runs are concurrent: each request has an id, and one reader thread hands each answer
to the caller waiting for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from hoody.errors import HostError

log = logging.getLogger(__name__)

_SERVER = Path(__file__).with_name("_launcher_server.py")
_KILL_GRACE = 10.0  # after a SIGKILL, how long its exit may take to be reported


class Launcher:
    """Starts the launcher process on first use, and again if it died.

    `ready(pid)` is called with each new launcher's pid before its first run (the agent
    sets its scheduling there, which every process it starts inherits)."""

    def __init__(self, ready: Callable[[int], None] | None = None) -> None:
        self._ready = ready
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        # run id → (the launcher it was sent to, its exit code to come)
        self._waiting: dict[
            int, tuple[subprocess.Popen[bytes], concurrent.futures.Future[int]]
        ] = {}
        self._ids = itertools.count(1)

    def run(
        self,
        argv: Sequence[str],
        out: Path,
        *,
        prctl: Sequence[tuple[int, int]] = (),
        setns: Sequence[tuple[Path, int]] = (),
        rlimits: Sequence[tuple[int, int, int]] = (),
        timeout: float,
    ) -> int:
        """Run `argv` as the launcher's child, stdout and stderr appended to `out`,
        and return its exit code (-N: killed by signal N). After `timeout` s it is
        killed and subprocess.TimeoutExpired raised.

        The child first makes each `prctl`, joins each namespace of `setns` (path,
        CLONE_NEW* type) in order, and sets each of `rlimits` (resource, soft, hard)."""
        run = next(self._ids)
        done: concurrent.futures.Future[int] = concurrent.futures.Future()
        request = {
            "run": run,
            "argv": list(argv),
            "out": str(out),
            "prctl": list(prctl),
            "setns": [[str(path), kind] for path, kind in setns],
            "rlimits": list(rlimits),
        }
        with self._lock:
            server = self._server()
            try:
                self._send(server, request)
            except OSError:
                # It died since the last run: its reader fails what it was running.
                server = self._server(restart=True)
                self._send(server, request)
            self._waiting[run] = (server, done)
        try:
            return done.result(timeout)
        except concurrent.futures.TimeoutError:
            with self._lock, contextlib.suppress(OSError):
                if self._proc is not None:
                    self._send(self._proc, {"kill": run})
            with contextlib.suppress(concurrent.futures.TimeoutError, HostError):
                done.result(_KILL_GRACE)
            raise subprocess.TimeoutExpired(list(argv), timeout) from None
        finally:
            with self._lock:
                self._waiting.pop(run, None)

    def start(self) -> None:
        """Start the launcher now rather than at the first run (its Python takes tens
        of milliseconds to start)."""
        with self._lock:
            self._server()

    def close(self) -> None:
        """Let the launcher go: it stays until its last child has exited."""
        with self._lock:
            server, self._proc = self._proc, None
        if server is not None and server.stdin is not None:
            with contextlib.suppress(OSError):
                server.stdin.close()

    @property
    def pid(self) -> int | None:
        """The running launcher's pid, if one has started."""
        server = self._proc
        return server.pid if server is not None and server.poll() is None else None

    def _send(self, server: subprocess.Popen[bytes], message: dict[str, object]) -> None:
        assert server.stdin is not None
        server.stdin.write(json.dumps(message).encode() + b"\n")
        server.stdin.flush()

    def _server(self, restart: bool = False) -> subprocess.Popen[bytes]:
        """The launcher process, started if there is none (under self._lock)."""
        if self._proc is not None and (restart or self._proc.poll() is not None):
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc = None
        if self._proc is None:
            # -I -S: the standard library only, nothing of the agent's environment.
            try:
                server = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(_SERVER)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            except OSError as exc:
                raise HostError(f"cannot start the tenant launcher ({_SERVER}): {exc}") from exc
            if self._ready is not None:
                self._ready(server.pid)
            threading.Thread(
                target=self._read, args=(server,), name="launcher-reader", daemon=True
            ).start()
            self._proc = server
        return self._proc

    def _read(self, server: subprocess.Popen[bytes]) -> None:
        """Hand each answer to its caller; when the launcher is gone, fail the runs it
        had not answered."""
        assert server.stdout is not None
        for line in server.stdout:
            answer = json.loads(line)
            with self._lock:
                _, done = self._waiting.get(int(answer["run"]), (server, None))
            if done is None or done.done():
                continue
            if "error" in answer:
                done.set_exception(
                    HostError(
                        f"the tenant launcher could not start the runtime "
                        f"({answer['error']}); the host is out of processes or memory"
                    )
                )
            else:
                done.set_result(int(answer["code"]))
        server.stdout.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(1.0)  # reaped here while the agent runs; else init reaps it
        with self._lock:
            if self._proc is server:
                self._proc = None
            orphaned = [done for sent, done in self._waiting.values() if sent is server]
        if orphaned:
            log.error("the tenant launcher (%s) exited; starting a new one", _SERVER)
        for done in orphaned:
            if not done.done():
                done.set_exception(
                    HostError(
                        f"the tenant launcher ({_SERVER}) exited during this start; "
                        "see the agent's log and retry"
                    )
                )
