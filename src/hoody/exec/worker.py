"""One warm Deno process serving one script version on a unix socket.

`Worker.start()` spawns it (sandbox.py decides as whom, where and with what) and
returns once its script is loaded, or raises `ScriptFailed` with the script's load
error (file, line, column). `start_spare()` spawns one for the project before its
script is known and warms it up; `take()` then gives it a script, as `start()`
would. `invoke()` runs one invocation under the limits: the wall clock and the CPU
time are watched here and end in SIGKILL of the process group; the V8 heap
(--max-old-space-size) and total memory (the memory cgroup) are the kernel's and
V8's, and are recognised afterwards. `settle()` waits for ctx.waitUntil work and
returns the invocation's console output. A worker that broke a limit or died is
never used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hoody.errors import HoodyError
from hoody.exec.limits import Limits
from hoody.exec.sandbox import Cgroup, Sandbox, ScriptFiles, child_setup, project_ids

__all__ = ["Outcome", "ScriptFailed", "Worker", "failure_outcome"]

_CPUS = os.cpu_count() or 1
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "date",
        "x-hoody-error",
        "x-hoody-console",
    }
)


# httpx builds a TLS context from certifi's bundle for every transport it is not given
# one: 10-30 ms per worker start on this VM (200 ms under load), for a plain-HTTP unix
# socket. One context, never used for TLS, serves every worker.
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class ScriptFailed(HoodyError):
    """An invocation that ended without the script's own response."""

    code = "script_failed"

    def __init__(self, message: str, status: int = 500, outcome: str = "crashed") -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.code = f"script_{outcome}"


@dataclass
class Outcome:
    """What one invocation came to, and what it cost."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    outcome: str = "ok"  # ok | threw | bad_response | timeout | cpu | memory | heap | crashed …
    error: str = ""
    duration_ms: float = 0.0
    cpu_ms: float = 0.0
    peak_memory_bytes: int = 0
    cold: bool = False
    console: list[str] = field(default_factory=list)
    settled: bool = False  # the console came with the answer; no waitUntil work pending


class Worker:
    def __init__(
        self,
        sandbox: Sandbox,
        files: ScriptFiles | None,
        project: int,
        limits: Limits,
        net: list[str],
        wid: str,
    ) -> None:
        self.sandbox = sandbox
        self.files = files  # None: a spare, until take()
        self.spare_folder: Path | None = None
        self.project = project
        self.limits = limits
        self.net = net
        self.id = wid
        self.cgroup = Cgroup(sandbox.cgroup_parent, wid)
        self.proc: asyncio.subprocess.Process | None = None
        self.socket: Path | None = None
        self.http: httpx.AsyncClient | None = None
        self.broken = False  # broke a limit or died: never reuse
        self.served = 0
        self.idle_since = time.monotonic()
        self._stderr: deque[bytes] = deque(maxlen=64)
        self._drain: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def display(self) -> str:
        if self.files is None:
            return f"a spare Exec worker of project {self.project}"
        return self.files.display

    async def start(self) -> None:
        """Spawn for `files` and wait until its script is loaded. ScriptFailed
        (load_error) when the script does not load; (crashed) when the process dies
        first; (timeout) when it is not ready within the wall clock."""
        assert self.files is not None
        await self._spawn(self.files.folder, "now")
        await self._load(self.files)

    async def start_spare(self) -> None:
        """Spawn without a script, in a folder of its own, and warm it up: it then
        waits for `take()`. Everything a worker for a script has (uid, cgroups,
        limits, permissions) is set here already, for its project."""
        self.spare_folder = self.sandbox.spare_folder(self.project)
        await self._spawn(self.spare_folder, "spare")
        line = await self._line()
        if line != b"listening":
            raise await self._start_failed(line)
        # One request on the socket before any script's: V8 compiles the HTTP path
        # on both ends now, and the keep-alive connection is there for the first
        # invocation.
        assert self.http is not None
        (await self.http.get("/_hoody/settle")).raise_for_status()

    async def take(self, files: ScriptFiles) -> None:
        """Give a spare its script (linked into its folder) and wait until it is
        loaded; raises as `start()` does."""
        assert self.spare_folder is not None and self.files is None
        self.files = self.sandbox.take_script(self.spare_folder, files)
        await self._load(self.files)

    async def _spawn(self, folder: Path, mode: str) -> None:
        uid, gid = project_ids(self.project)
        socket_dir = self.sandbox.socket_dir(self.project, self.id)
        self.socket = socket_dir / "w.sock"
        self.cgroup.create(self.limits.memory_mib << 20)
        project_dir = self.sandbox.project_dir(self.project)
        self.proc = await asyncio.create_subprocess_exec(
            *self.sandbox.argv(project_dir, folder, self.socket, self.limits, self.net, mode),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.sandbox.env(self.project),
            cwd=str(folder),
            start_new_session=True,
            preexec_fn=child_setup(self.cgroup.procs_files, uid, gid),
        )
        assert self.proc.stderr is not None
        self._drain.append(asyncio.create_task(self._keep_stderr(self.proc.stderr)))
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket), verify=_NO_TLS),
            base_url="http://worker",
            timeout=None,
        )

    async def _line(self) -> bytes:
        """The bootstrap's next line on stdout, within the start-up time allowed."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async with asyncio.timeout(max(self.limits.wall_ms / 1000, 10)):
                return (await self.proc.stdout.readline()).strip()
        except TimeoutError:
            self.kill()
            raise ScriptFailed(
                f"{self.display} did not start within its wall-clock limit", 504, "timeout"
            ) from None

    async def _load(self, files: ScriptFiles) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        job = json.dumps({"url": files.entry.as_uri(), "display": files.display})
        try:
            self.proc.stdin.write(job.encode() + b"\n")
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died: the next line says nothing, and _start_failed says why
        line = await self._line()
        while line == b"listening":
            line = await self._line()
        if line != b"ready":
            raise await self._start_failed(line)
        # Later stdout is the script's own Deno.stdout writes: drain and drop.
        assert self.proc.stdout is not None
        self._drain.append(asyncio.create_task(self._discard(self.proc.stdout)))

    async def _start_failed(self, line: bytes) -> ScriptFailed:
        self.kill()
        await self.wait()
        try:
            message = str(json.loads(line)["load_error"])
        except (ValueError, KeyError, TypeError):
            return ScriptFailed(
                f"the worker for {self.display} died while starting: "
                f"{self.stderr_tail() or 'no output'}",
                502,
                "crashed",
            )
        return ScriptFailed(_load_message(self.display, message), 500, "load_error")

    async def _keep_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._stderr.append(line[:2000])

    async def _discard(self, stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    def stderr_tail(self) -> str:
        return b"".join(self._stderr).decode(errors="replace").strip()[-2000:]

    async def invoke(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        env: dict[str, str],
    ) -> Outcome:
        """Run one invocation under the limits. Never raises for what the script did:
        a limit, a throw or a crash comes back as an Outcome with a 5xx."""
        assert self.http is not None
        self.served += 1
        self.cgroup.reset_peak()
        cpu0 = self.cgroup.cpu_ns()
        oom0 = self.cgroup.oom_kills()
        start = time.monotonic()
        meta = json.dumps({"url": url, "env": env}, separators=(",", ":"))
        call = asyncio.create_task(
            self._call(method, [*headers, ("x-hoody-invocation", meta)], body)
        )
        failure = await self._watch(call, start, cpu0)
        out: Outcome
        if failure is not None:
            call.cancel()
            out = failure_outcome(failure)
        else:
            try:
                out = call.result()
            except ScriptFailed as exc:
                out = failure_outcome(exc)
            except (httpx.TransportError, httpx.ProtocolError):
                out = failure_outcome(await self._died(oom0))
        out.duration_ms = (time.monotonic() - start) * 1000
        out.cpu_ms = (self.cgroup.cpu_ns() - cpu0) / 1e6
        out.peak_memory_bytes = self.cgroup.peak_bytes()
        return out

    async def _watch(
        self, call: asyncio.Task[Outcome], start: float, cpu0: int
    ) -> ScriptFailed | None:
        """Wait for `call` within the wall clock and the CPU budget. The CPU is read
        only when the budget could have been spent by now (all cores busy), so a fast
        invocation costs no polling at all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.wall_ms / 1000
        budget_ns = self.limits.cpu_ms * 1_000_000
        check_at = loop.time() + self.limits.cpu_ms / 1000 / _CPUS
        while True:
            wait = max(0.0, min(deadline, check_at) - loop.time())
            done, _ = await asyncio.wait({call}, timeout=wait)
            if done:
                return None
            now = loop.time()
            if now >= deadline:
                self.kill()
                return ScriptFailed(
                    f"{self.display} ran past its wall-clock limit "
                    f"({self.limits.wall_ms} ms) and was stopped",
                    504,
                    "timeout",
                )
            used = self.cgroup.cpu_ns() - cpu0
            if used >= budget_ns:
                self.kill()
                return ScriptFailed(
                    f"{self.display} used more than its CPU time limit "
                    f"({self.limits.cpu_ms} ms) and was stopped",
                    503,
                    "cpu",
                )
            check_at = now + max(0.01, (budget_ns - used) / 1e9 / _CPUS)

    async def _call(self, method: str, headers: list[tuple[str, str]], body: bytes) -> Outcome:
        assert self.http is not None
        request = self.http.build_request(method, "/", headers=headers, content=body)
        response = await self.http.send(request, stream=True)
        try:
            chunks = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.limits.response_bytes:
                    raise ScriptFailed(
                        f"{self.display} answered with more than "
                        f"{self.limits.response_bytes} bytes (its response_bytes limit)",
                        502,
                        "too_large",
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        kind = response.headers.get("x-hoody-error")
        out_headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in response.headers.raw
            if k.decode("latin-1").lower() not in _HOP
        ]
        out = Outcome(response.status_code, out_headers, b"".join(chunks))
        packed = response.headers.get("x-hoody-console")
        if packed is not None:
            try:
                data = json.loads(urllib.parse.unquote(packed))
                out.console = [str(x) for x in data["console"]]
                out.settled = True
            except (ValueError, KeyError, TypeError):
                out.console = ["[hoody: unreadable console output]"]
        if kind:
            out.outcome = kind
            out.error = out.body.decode(errors="replace")[:500]
        return out

    async def _died(self, oom_before: int) -> ScriptFailed:
        """Why the process went away mid-invocation: memory cgroup, V8 heap or crash."""
        self.broken = True
        code = await self.wait()
        tail = self.stderr_tail()
        if self.cgroup.oom_kills() > oom_before:
            return ScriptFailed(
                f"{self.display} used more than its memory limit "
                f"({self.limits.memory_mib} MiB) and was stopped",
                503,
                "memory",
            )
        if "out of memory" in tail.lower() or "heap limit" in tail.lower():
            return ScriptFailed(
                f"{self.display} ran out of V8 heap ({self.limits.heap_mib} MiB) and was stopped",
                503,
                "heap",
            )
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        last = tail.splitlines()[-1] if tail else "no output"
        return ScriptFailed(
            f"the worker of {self.display} died ({how}): {last[:300]}", 502, "crashed"
        )

    async def settle(self, timeout: float) -> list[str]:
        """Wait for ctx.waitUntil work; the invocation's console output. Kills the
        worker when that work outlives `timeout`."""
        if self.broken or self.http is None:
            return []
        try:
            async with asyncio.timeout(timeout):
                r = await self.http.get("/_hoody/settle")
            data = r.json()
            lines = [str(x) for x in data.get("console", [])]
            if data.get("truncated"):
                lines.append("[hoody: console output over 64 KiB was dropped]")
            return lines
        except TimeoutError:
            self.kill()
            return ["[hoody: ctx.waitUntil work ran past the wall-clock limit; stopped]"]
        except (httpx.HTTPError, ValueError):
            self.broken = True
            return []

    def kill(self) -> None:
        """SIGKILL the worker's process group (it cannot catch that, unlike SIGTERM)."""
        self.broken = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def wait(self) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                return await self.proc.wait()
        return self.proc.returncode

    async def close(self) -> None:
        """Kill, reap, and remove its socket folder and cgroups."""
        self.kill()
        await self.wait()
        for task in self._drain:
            task.cancel()
        if self.http is not None:
            await self.http.aclose()
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.unlink()
            with contextlib.suppress(OSError):
                self.socket.parent.rmdir()
        if self.spare_folder is not None:
            self.sandbox.free_spare_folder(self.project, self.spare_folder)
            self.spare_folder = None
        await asyncio.to_thread(self.cgroup.remove)


def failure_outcome(exc: ScriptFailed) -> Outcome:
    body = json.dumps(exc.to_json()).encode()
    return Outcome(
        exc.status,
        [("content-type", "application/json")],
        body,
        outcome=exc.outcome,
        error=exc.message,
    )


def _load_message(display: str, raw: str) -> str:
    """Deno's load error on one line: the first line and the `at file:line:col` one."""
    lines = [x.strip() for x in raw.splitlines() if x.strip()]
    at = next((x for x in reversed(lines) if x.startswith("at ")), "")
    head = lines[0] if lines else "unknown error"
    return f"{display} does not load: {head}" + (f" ({at})" if at and at not in head else "")
