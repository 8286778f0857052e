"""Warm workers per (project, script version), and the lifecycle of an invocation.

A key is (project, script, version, limits, network permissions): a new version, new
limits or new allowed hosts get fresh workers, and projects never share one. Each
worker serves one invocation at a time; up to `limits.workers` run side by side per
key, so one looping invocation never holds up the next request to the same script.
After an invocation its worker settles (ctx.waitUntil work, console output) before it
serves again; a worker that broke a limit or died is closed and the next request
starts a new one. Idle workers are closed after `idle_ttl`, and old versions' idle
workers as soon as a newer version is used.

Spares: once a project has started a worker, the pool keeps one more process of that
project started and warmed up, with no script yet (`Worker.start_spare`), under the
same uid, cgroup limits, heap flag and network permissions a worker of the project
gets; the next worker the project needs (a new version, a second concurrent
invocation, a replacement) takes it and loads its script into it instead of paying
for a Deno start (`Worker.take`). A spare serves one script and is a worker like any
other from then on; a new spare is started after the invocation that used one. It
costs one idle Deno process per active project (its memory is in `hoody bench exec`),
is closed after `idle_ttl` unused, when the project's limits or allowed hosts change,
and first when the host-wide worker cap needs room.

All of it runs on one event loop (the control plane's), so no locks beyond asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hoody.exec.limits import Limits
from hoody.exec.sandbox import Sandbox, ScriptFiles
from hoody.exec.worker import Outcome, ScriptFailed, Worker, failure_outcome

__all__ = ["Key", "Pool"]

log = logging.getLogger(__name__)

SETTLE_WAIT = 0.05


@dataclass(frozen=True)
class Key:
    project: int
    name: str
    version: int
    limits: Limits
    net: tuple[str, ...]

    @property
    def spare(self) -> tuple[int, Limits, tuple[str, ...]]:
        """What a spare for this key must match: everything but the script."""
        return (self.project, self.limits, self.net)


SpareKey = tuple[int, Limits, tuple[str, ...]]


class Pool:
    def __init__(
        self,
        sandbox: Sandbox,
        *,
        idle_ttl: float = 300.0,
        max_workers: int = 64,
        spares: bool = True,
    ) -> None:
        self.sandbox = sandbox
        self.spares = spares
        self.idle_ttl = idle_ttl
        # Across all projects: a warm worker holds 10-30 MB, so this bounds Exec's
        # memory on the control plane's host whatever the number of scripts.
        self.max_workers = max_workers
        self._idle: dict[Key, list[Worker]] = {}
        self._busy: dict[Key, int] = {}
        self._settling: dict[Key, int] = {}  # busy workers that already answered
        self._freed: dict[Key, asyncio.Condition] = {}
        self._load_errors: dict[tuple[int, str, int], ScriptFailed] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.started = 0  # workers spawned for a script, for tests and the benchmark
        self.spares_started = 0
        self._workers: set[Worker] = set()  # every live worker, busy, idle or spare
        self._spares: dict[SpareKey, asyncio.Task[Worker | None]] = {}

    async def invoke(
        self,
        key: Key,
        files: Callable[[], Awaitable[ScriptFiles]],
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        env: dict[str, str],
        done: Callable[[Outcome], Awaitable[None]],
    ) -> Outcome:
        """Run one invocation on a warm worker (started if needed). Returns as soon as
        the script answered; `done(outcome)` is awaited later, with the console output,
        once the worker has settled."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap())
        loaded = self._load_errors.get((key.project, key.name, key.version))
        if loaded is not None:
            out = failure_outcome(loaded)
            self._spawn(done(out))
            return out
        start = time.monotonic()
        try:
            worker, cold = await self._acquire(key, files)
        except ScriptFailed as exc:
            out = failure_outcome(exc)
            out.duration_ms = (time.monotonic() - start) * 1000
            out.cold = True
            self._spawn(done(out))
            return out
        out = await worker.invoke(method, url, headers, body, env)
        out.cold = cold
        out.duration_ms = (time.monotonic() - start) * 1000
        self._spawn(self._finish(key, worker, out, done))
        if cold:
            # After the answer, so the new spare's start does not compete with it.
            self._refill(key)
        return out

    async def _finish(
        self, key: Key, worker: Worker, out: Outcome, done: Callable[[Outcome], Awaitable[None]]
    ) -> None:
        if out.settled and not worker.broken:
            await self._release(key, worker)
            await done(out)
            return
        self._settling[key] = self._settling.get(key, 0) + 1
        try:
            out.console += await worker.settle(timeout=key.limits.wall_ms / 1000)
            if worker.broken:
                tail = worker.stderr_tail()
                if tail and out.outcome != "ok":
                    out.console.append(f"[worker stderr] {tail[-1000:]}")
        finally:
            self._settling[key] -= 1
            await self._release(key, worker)
        await done(out)

    async def _acquire(
        self, key: Key, files: Callable[[], Awaitable[ScriptFiles]]
    ) -> tuple[Worker, bool]:
        freed = self._freed.setdefault(key, asyncio.Condition())
        waited = False
        async with freed:
            while True:
                idle = self._idle.get(key)
                if idle:
                    worker = idle.pop()
                    self._busy[key] = self._busy.get(key, 0) + 1
                    return worker, False
                if self._settling.get(key, 0) and not waited:
                    # A worker that has answered is about to be free (settling takes
                    # well under a millisecond unless ctx.waitUntil work is pending):
                    # wait for it briefly rather than start a process (~35 ms).
                    waited = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(freed.wait(), SETTLE_WAIT)
                    continue
                if self._count(key) < key.limits.workers:
                    self._busy[key] = self._busy.get(key, 0) + 1
                    break
                await freed.wait()
        self._retire_older(key)
        try:
            script = await files()
            spare = await self._from_spare(key, script)
            if spare is not None:
                return spare, True
            self._make_room()
            worker = Worker(
                self.sandbox,
                script,
                key.project,
                key.limits,
                list(key.net),
                f"w{os.getpid()}-{next(self._ids)}",
            )
            self.started += 1
            self._workers.add(worker)
            try:
                await worker.start()
            except BaseException:
                await self._close(worker)
                raise
        except ScriptFailed as exc:
            if exc.outcome == "load_error":
                self._load_errors[(key.project, key.name, key.version)] = exc
            await self._release(key, None)
            raise
        except BaseException:
            await self._release(key, None)
            raise
        return worker, True

    async def _from_spare(self, key: Key, script: ScriptFiles) -> Worker | None:
        """The project's spare with `script` loaded into it; None when there is no
        usable spare (then a worker is started for the script)."""
        task = self._spares.pop(key.spare, None)
        if task is None:
            return None
        spare = await task  # usually long ready; if still starting, nearly so
        if spare is None or spare.broken or spare.proc is None or spare.proc.returncode is not None:
            if spare is not None:
                await self._close(spare)
            return None
        try:
            await spare.take(script)
        except BaseException:
            await self._close(spare)
            raise
        return spare

    def _refill(self, key: Key) -> None:
        """Start a spare for `key`'s project unless one is there (or starting), and
        close the project's spares that no longer match its limits or hosts."""
        if not self.spares or key.spare in self._spares:
            return
        for other in [k for k in self._spares if k[0] == key.project]:
            self._spawn(self._close_spare(self._spares.pop(other)))
        if len(self._workers) >= self.max_workers:
            return  # a spare never pushes out a warm worker
        spare = Worker(
            self.sandbox,
            None,
            key.project,
            key.limits,
            list(key.net),
            f"s{os.getpid()}-{next(self._ids)}",
        )
        self._workers.add(spare)
        self.spares_started += 1

        async def start() -> Worker | None:
            try:
                await spare.start_spare()
            except Exception as exc:
                log.warning("a spare Exec worker of project %d did not start: %s", key.project, exc)
                await self._close(spare)
                return None
            spare.idle_since = time.monotonic()
            return spare

        self._spares[key.spare] = asyncio.ensure_future(start())

    async def _close_spare(self, task: asyncio.Task[Worker | None]) -> None:
        spare = await task
        if spare is not None:
            await self._close(spare)

    def _make_room(self) -> None:
        """Close the longest-idle worker when the host-wide cap is reached; refuse
        (503) when every worker is busy."""
        if len(self._workers) < self.max_workers:
            return
        for skey, task in list(self._spares.items()):  # spares go first
            if task.done() and not task.cancelled():
                spare = self._spares.pop(skey).result()
                if spare is not None:
                    self._workers.discard(spare)
                    self._spawn(self._close(spare))
                    return
        idle = [(w.idle_since, k, w) for k, ws in self._idle.items() for w in ws]
        if not idle:
            raise ScriptFailed(
                f"all {self.max_workers} Exec workers of this control plane are busy; "
                "retry shortly",
                503,
                "busy",
            )
        _, key, oldest = min(idle, key=lambda t: t[0])
        self._idle[key].remove(oldest)
        self._workers.discard(oldest)
        self._spawn(self._close(oldest))

    def _count(self, key: Key) -> int:
        return self._busy.get(key, 0) + len(self._idle.get(key, []))

    async def _release(self, key: Key, worker: Worker | None) -> None:
        if worker is not None:
            if worker.broken:
                await self._close(worker)
            else:
                worker.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(worker)
        freed = self._freed[key]
        async with freed:
            self._busy[key] -= 1
            freed.notify()

    def _retire_older(self, key: Key) -> None:
        """Close idle workers of this script's other versions and settings."""
        for other in list(self._idle):
            if other != key and (other.project, other.name) == (key.project, key.name):
                for worker in self._idle.pop(other):
                    self._spawn(self._close(worker))

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self.idle_ttl))
            now = time.monotonic()
            for _key, idle in list(self._idle.items()):
                for worker in [w for w in idle if now - w.idle_since > self.idle_ttl]:
                    idle.remove(worker)
                    self._spawn(self._close(worker))
            for skey, task in list(self._spares.items()):
                if not task.done():
                    continue
                spare = None if task.cancelled() else task.result()
                if spare is None or now - spare.idle_since > self.idle_ttl:
                    self._spares.pop(skey)
                    self._spawn(self._close_spare(task))

    async def _close(self, worker: Worker) -> None:
        self._workers.discard(worker)
        await worker.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("exec background work failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, project: int, name: str) -> None:
        """A script was deleted or redeployed: close its idle workers now."""
        for key in list(self._idle):
            if (key.project, key.name) == (project, name):
                for worker in self._idle.pop(key):
                    self._spawn(self._close(worker))

    async def aclose(self) -> None:
        """Close every worker, wait for background work, remove the sandbox."""
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        self._idle.clear()
        for starting in self._spares.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(starting, 30)
        self._spares.clear()
        for worker in list(self._workers):
            await self._close(worker)
        await asyncio.to_thread(self.sandbox.remove)
