"""A real node agent for the control plane tests: the agent's own Starlette app
(`hoody.agent.api.create_app`) over a `Node` with the fake drivers (the ones that pass
the drivers' contract suites), reached in-process through an httpx transport:

    agent = LocalAgent("n1", tmp)
    client = AgentClient(agent.url, agent.token, transport=agent.transport)

What a test sets is what a host would do: `memory_total`/`disk_free` are the machine's
figures (`FixedHost`), `use(tid, bytes)` is what a tenant's cgroup says (FakeRuntime),
`fail("create_tenant", err)` makes a storage step fail (FakeStorage), `down = True`
makes every request fail as an unreachable agent would (the transport). Nothing here
answers a route itself: every answer comes from the agent's API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from hoody.agent.api import create_app
from hoody.agent.client import AgentClient
from hoody.agent.config import NodeConfig
from hoody.agent.engine import Node, TemplateSource
from hoody.agent.host import HostFacts
from hoody.agent.network.fake import FakeFirewall, FakeNetwork
from hoody.agent.node_info import headroom, measure_now
from hoody.agent.runtime.fake import FakeRuntime
from hoody.agent.state import NodeStore
from hoody.agent.storage.fake import FakeStorage
from hoody.errors import HoodyError

__all__ = ["AppTransport", "FixedHost", "LocalAgent", "local_agents"]

_GIB = 1 << 30


class FixedHost(HostFacts):
    """A machine of the given size whose memory is all available."""

    def __init__(self, memory_total: int, disk_free: int) -> None:
        self.memory_total = memory_total
        self.disk_free = disk_free

    def meminfo(self) -> dict[str, int]:
        return {"MemTotal": self.memory_total, "MemAvailable": self.memory_total}

    def disk(self, path: Path) -> tuple[int, int] | None:
        return self.disk_free, self.disk_free


class AppTransport(httpx.BaseTransport):
    """Runs each request through an ASGI app in an event loop of its own (the callers
    are plain threads, several at once), unless the agent is `down`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.down = False
        self.copies = 0  # copies the agent made (201 answers to .../copy)
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused (the agent is down)", request=request)
        request.read()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            response = asyncio.run(self._send(request))
        else:  # called from inside an event loop: run beside it
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                response = pool.submit(asyncio.run, self._send(request)).result()
        made = response.status_code == 201 and request.url.path.endswith("/copy")
        if request.method == "POST" and made:
            with self._lock:
                self.copies += 1
        return response

    async def _send(self, request: httpx.Request) -> httpx.Response:
        answer = await httpx.ASGITransport(app=self.app).handle_async_request(request)
        body = await answer.aread()
        return httpx.Response(answer.status_code, headers=answer.headers, content=body)


def _rootfs(target: Path) -> None:
    (target / "bin").mkdir()
    (target / "bin" / "sh").write_text("#!fake\n")


class LocalAgent:
    def __init__(
        self,
        name: str,
        root: Path | None = None,
        *,
        token: str = "agent-secret",
        memory_total: int = 8 * _GIB,
        disk_free: int = 100 * _GIB,
        templates: Iterable[tuple[str, int]] = (("demo", 1),),
        subnet: int = 1,
    ) -> None:
        self.name = name
        self.token = token
        self.url = f"http://{name}.agent.invalid"
        if root is None:
            root = Path(tempfile.mkdtemp(prefix=f"agent-{name}-"))
            self._owned: Path | None = root
        else:
            self._owned = None
        config = NodeConfig(
            name=name,
            state_dir=root / "state",
            run_dir=root / "run",
            pool=root / "pool",
            pool_image=None,
            subnet=str(ipaddress.ip_network(f"10.{subnet}.0.0/16")),
        )
        config.log_dir.mkdir(parents=True)
        self.host = FixedHost(memory_total, disk_free)
        self.storage = FakeStorage(root / "storage")
        self.runtime = FakeRuntime()
        self.node = Node(
            config=config,
            store=NodeStore(config.db_path),
            storage=self.storage,
            network=FakeNetwork(config.network),
            firewall=FakeFirewall(config.network),
            runtime=self.runtime,
            host=self.host,
        )
        self.node.reconcile()  # as the app's startup does: the drivers get ready
        self.transport = AppTransport(create_app(self.node, token))
        for tname, version in templates:
            self.add_template(tname, version)

    def close(self) -> None:
        self.node.store.close()
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)

    # what a test sets

    @property
    def down(self) -> bool:
        return self.transport.down

    @down.setter
    def down(self, value: bool) -> None:
        self.transport.down = value

    def fail(self, step: str, error: HoodyError | None) -> None:
        """Make storage step `step` (a FakeStorage method) raise `error` (None: stop)."""
        if error is None:
            self.storage.failing.pop(step, None)
        else:
            self.storage.failing[step] = error

    def use(self, tid: str, working_set: int) -> None:
        """What tenant `tid`'s cgroup says it uses (bytes) from now on."""
        self.runtime.used[tid] = working_set

    def set_state(self, tid: str, state: str) -> None:
        """Put the node's record of `tid` in `state`, as a crash in the middle would."""
        self.node.store.update_tenant(tid, status=state)

    def add_template(self, name: str, version: int, memory_mib: int = 256) -> dict[str, Any]:
        assert version == self.node.store.next_template_version(name), "versions come in order"
        rec = self.node.create_template(
            name,
            TemplateSource(_rootfs, "test files"),
            args=["/bin/sh"],
            limits={"cpu": 1.0, "memory_mib": memory_mib, "pids": 256, "disk_mib": 1024},
        )
        return rec.to_json()

    # what a test reads

    @property
    def copies(self) -> int:
        return self.transport.copies

    @property
    def tenants(self) -> dict[str, dict[str, Any]]:
        return {t.id: t.to_json() for t in self.node.tenants()}

    @property
    def templates(self) -> set[tuple[str, int]]:
        return {(t.name, t.version) for t in self.node.store.templates()}

    @property
    def overcommit(self) -> float:
        return self.node.config.overcommit

    @property
    def received(self) -> list[tuple[str, int, int | None]]:
        """(template, version, parent version here) of every version received."""
        return [
            (ref.template, ref.version, parent.version if parent else None)
            for ref, parent in self.storage.received
        ]

    def template_list(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.node.store.templates()]

    def headroom(self) -> dict[str, Any]:
        """The agent's own headroom, measured now (its rounds otherwise run every 2 s)."""
        measure_now(self.node)
        return headroom(self.node)

    def client(self) -> AgentClient:
        return AgentClient(self.url, self.token, transport=self.transport)


def local_agents(agents: Iterable[LocalAgent]) -> Any:
    """An AgentFactory for `Fleet(agents=…)` that reaches these agents by their url."""
    by_url = {a.url: a for a in agents}

    def factory(url: str, token: str) -> AgentClient:
        agent = by_url.get(url)
        if agent is None:
            return AgentClient(url, token, transport=httpx.MockTransport(_unreachable))
        return AgentClient(url, token, transport=agent.transport)

    return factory


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused (no agent there)", request=request)
