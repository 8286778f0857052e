"""An in-memory node agent speaking the agent's HTTP API, for the control plane tests.

It keeps state (templates, tenants, used ids) the way `hoody.agent.engine.Node` does
and answers the same routes, auth and error shapes as `hoody.agent.api`, served
through an httpx transport so no socket is opened:

    agent = FakeAgent("n1")
    client = AgentClient(agent.url, agent.token, transport=agent.transport())

`down = True` makes every request fail as an unreachable agent would.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx

from hoody.agent.client import AgentClient
from hoody.agent.usage import TenantUse, learn, node_figures, parse_reserve, reserve_bytes
from hoody.errors import Conflict, HoodyError, HostError, InvalidInput, NotFound, Unauthorized

__all__ = ["FakeAgent", "fake_agents"]

_GIB = 1 << 30


class FakeAgent:
    def __init__(
        self,
        name: str,
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
        self.memory_total = memory_total
        self.disk_free = disk_free
        self.overcommit = 1.0
        self.memory_reserve = "auto"
        # What each tenant uses (working set, bytes); tests set it, else `default_use`.
        self.used: dict[str, int] = {}
        self.default_use = 8 << 20
        self.subnet = subnet
        self.down = False
        self.fail_copy: HoodyError | None = None
        self.copies = 0
        # (template, version, parent) of every version received, in order.
        self.received: list[tuple[str, int, int | None]] = []
        self.fail_send: HoodyError | None = None
        self.templates: dict[tuple[str, int], dict[str, Any]] = {}
        self.tenants: dict[str, dict[str, Any]] = {}
        self.used_ids: set[str] = set()
        self._lock = threading.Lock()
        for tname, version in templates:
            self.add_template(tname, version)

    def add_template(self, name: str, version: int, memory_mib: int = 256) -> dict[str, Any]:
        rec = {
            "name": name,
            "version": version,
            "created_at": time.time(),
            "args": ["/bin/sh"],
            "env": {},
            "port": 8080,
            "limits": {"cpu": 1.0, "memory_mib": memory_mib, "pids": 256, "disk_mib": 1024},
            "ksm": False,
        }
        self.templates[(name, version)] = rec
        return rec

    def template_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(t) for t in self.templates.values()]

    def _uses(self) -> list[TenantUse]:
        uses = []
        for t in self.tenants.values():
            running = t["desired"] == "running"
            request = t["limits"].get("memory_request_mib")
            uses.append(
                TenantUse(
                    t["id"],
                    t["template"],
                    t["version"],
                    running,
                    int(t["limits"]["memory_mib"]) << 20,
                    int(request) << 20 if request else None,
                    self.used.get(t["id"], self.default_use) if running else 0,
                    1 << 20,
                )
            )
        return uses

    def headroom(self) -> dict[str, Any]:
        """As the real agent reports it (hoody.agent.node_info.headroom), figures from
        the same pure functions over what the tenants are said to use."""
        with self._lock:
            promised = sum(
                t["limits"]["memory_mib"] << 20
                for t in self.tenants.values()
                if t["desired"] == "running"
            )
            uses = self._uses()
            learned = learn(uses)
            figures = node_figures(
                uses,
                memory_total=self.memory_total,
                overcommit=self.overcommit,
                reserve=reserve_bytes(self.memory_reserve, self.memory_total),
                learned=learned,
            )
            return {
                **figures,
                "templates": [u.to_json() for u in learned.values()],
                "tenants": len(self.tenants),
                "running": sum(1 for t in self.tenants.values() if t["state"] == "running"),
                "memory_total_bytes": self.memory_total,
                "memory_available_bytes": self.memory_total - promised,
                "memory_promised_bytes": promised,
                "memory_headroom_bytes": max(0, self.memory_total - promised),
                "cpus": 2,
                "cpu_promised": 0.0,
                "load_1m": 0.0,
                "disk_total_bytes": self.disk_free,
                "disk_free_bytes": self.disk_free,
            }

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> AgentClient:
        return AgentClient(self.url, self.token, transport=self.transport())

    # the HTTP surface

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused (fake agent is down)", request=request)
        try:
            if request.headers.get("authorization") != f"Bearer {self.token}":
                raise Unauthorized("missing or wrong agent token")
            request.read()
            if m := re.fullmatch(r"/v1/templates/([^/]+)/(\d+)/send", request.url.path):
                return self._send(m.group(1), int(m.group(2)), request.url.params.get("parent"))
            if m := re.fullmatch(r"/v1/tenants/([^/]+)/wake", request.url.path):
                return self._wake(m.group(1))
            status, body = self._route(request)
        except HoodyError as exc:
            return httpx.Response(exc.status, json=exc.to_json())
        return httpx.Response(status, json=body)

    def _wake(self, tid: str) -> httpx.Response:
        """As the agent: the record, and which sleep it was woken from."""
        with self._lock:
            rec = self.tenants.get(tid)
            woke = (
                (rec.get("sleep_mode") or "stopped") if rec and rec["state"] == "sleeping" else "no"
            )
        body = self._act(tid, "wake", {})
        return httpx.Response(
            200, json=body, headers={"Hoody-Woke": woke, "Server-Timing": "node;dur=0.01"}
        )

    # replication: the "stream" is the record and the parent it was sent against

    def _send(self, name: str, version: int, parent: str | None) -> httpx.Response:
        with self._lock:
            if self.fail_send is not None:
                raise self.fail_send
            rec = self.templates.get((name, version))
            if rec is None or (parent and (name, int(parent)) not in self.templates):
                raise NotFound(f"template {name} version {version} (or its parent) is not here")
            body = json.dumps({"parent": int(parent) if parent else None}).encode()
            headers = {
                "X-Hoody-Template": json.dumps(rec),
                "X-Hoody-Size": str(len(body)),
                "X-Hoody-Uid-Base": "0",
            }
            return httpx.Response(200, content=body, headers=headers)

    def _receive(self, name: str, version: int, request: httpx.Request) -> dict[str, Any]:
        sent = json.loads(request.content)
        rec = json.loads(request.headers["x-hoody-template"])
        with self._lock:
            if (name, version) in self.templates:
                raise Conflict(f"template {name} version {version} already exists")
            parent = sent["parent"]
            if parent is not None and (name, parent) not in self.templates:
                raise HostError("ERROR: cannot find parent subvolume")
            self.templates[(name, version)] = {**rec, "name": name, "version": version}
            self.received.append((name, version, parent))
            return dict(self.templates[(name, version)])

    def _route(self, request: httpx.Request) -> tuple[int, Any]:
        path, method = request.url.path, request.method
        data = json.loads(request.content) if request.content else {}
        if path == "/v1/node" and method == "GET":
            return 200, {"name": self.name, "headroom": self.headroom()}
        if path == "/v1/node" and method == "PATCH":
            with self._lock:
                if data.get("overcommit") is not None:
                    self.overcommit = float(data["overcommit"])
                if data.get("memory_reserve") is not None:
                    self.memory_reserve = parse_reserve(data["memory_reserve"])
            return 200, {
                "name": self.name,
                "overcommit": self.overcommit,
                "memory_reserve": self.memory_reserve,
                "headroom": self.headroom(),
            }
        if path == "/v1/templates" and method == "GET":
            return 200, self.template_list()
        if m := re.fullmatch(r"/v1/templates/([^/]+)/(\d+)/receive", path):
            return 201, self._receive(m.group(1), int(m.group(2)), request)
        if m := re.fullmatch(r"/v1/templates/([^/]+)/copy", path):
            return 201, self._copy(m.group(1), data)
        if (m := re.fullmatch(r"/v1/templates/([^/]+)(?:/(\d+))?", path)) and method == "DELETE":
            version = int(m.group(2)) if m.group(2) else None
            return 200, self._delete_template(m.group(1), version)
        if (m := re.fullmatch(r"/v1/tenants/([^/]+)", path)) and method == "GET":
            return 200, self._tenant(m.group(1))
        if (m := re.fullmatch(r"/v1/tenants/([^/]+)", path)) and method == "DELETE":
            return 200, self._delete(m.group(1))
        if m := re.fullmatch(r"/v1/tenants/([^/]+)/(start|stop|snapshot|sleep|wake)", path):
            return (201 if m.group(2) == "snapshot" else 200), self._act(
                m.group(1), m.group(2), data
            )
        if path == "/v1/tenants" and method == "GET":
            with self._lock:
                return 200, list(self.tenants.values())
        raise NotFound(f"no route {method} {path}")

    def _copy(self, template: str, data: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.fail_copy is not None:
                raise self.fail_copy
            versions = [v for (n, v) in self.templates if n == template]
            version = data.get("version") or (max(versions) if versions else None)
            tmpl = self.templates.get((template, version or 0))
            if tmpl is None:
                raise NotFound(f"template {template} version {version} does not exist")
            tid = data.get("name") or f"{template}-{len(self.used_ids)}"
            if tid in self.used_ids:
                raise Conflict(f"tenant id {tid} is taken")
            self.used_ids.add(tid)
            self.copies += 1
            n = len(self.used_ids)
            ip = f"10.{self.subnet}.{n // 250}.{n % 250 + 2}"
            rec = {
                "id": tid,
                "template": template,
                "version": version,
                "ip": ip,
                "state": "running",
                "desired": "running",
                "url": f"http://{ip}:8080/",
                "limits": {**tmpl["limits"], **(data.get("limits") or {})},
                "env": data.get("env") or {},
                "metadata": data.get("metadata") or {},
                "sleep": {"idle_seconds": None, "mode": "stopped", **(data.get("sleep") or {})},
                "sleep_mode": None,
            }
            self.tenants[tid] = rec
            return dict(rec)

    def _tenant(self, tid: str) -> dict[str, Any]:
        with self._lock:
            if tid not in self.tenants:
                raise NotFound(f"tenant {tid} does not exist")
            return dict(self.tenants[tid])

    def _delete(self, tid: str) -> dict[str, Any]:
        with self._lock:
            if tid in self.tenants:
                del self.tenants[tid]
                return {"id": tid, "deleted": True, "existed": True}
            if tid in self.used_ids:
                return {"id": tid, "deleted": True, "existed": False}
            raise NotFound(f"tenant {tid} does not exist")

    def _act(self, tid: str, verb: str, data: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            rec = self.tenants.get(tid)
            if rec is None:
                raise NotFound(f"tenant {tid} does not exist")
            if verb == "snapshot":
                name = data.get("template") or rec["template"]
                if not isinstance(name, str):
                    raise InvalidInput("template must be a string")
                version = data.get("version") or 1 + max(
                    (v for (n, v) in self.templates if n == name), default=0
                )
                if (name, version) in self.templates:
                    raise Conflict(f"template {name} version {version} exists")
                snap = {**self.templates.get((rec["template"], rec["version"]), {})}
                snap.update(name=name, version=version, created_at=time.time())
                self.templates[(name, version)] = snap
                return dict(snap)
            if verb == "sleep":
                if rec["state"] == "running":
                    rec["state"] = "sleeping"
                    rec["sleep_mode"] = data.get("mode") or rec["sleep"]["mode"]
                elif rec["state"] != "sleeping":
                    raise Conflict(f"tenant {tid} is {rec['state']}; only a running one can sleep")
                return dict(rec)
            if verb == "wake" and rec["state"] not in ("running", "sleeping"):
                raise Conflict(f"tenant {tid} is {rec['state']}, not sleeping")
            rec["state"] = rec["desired"] = "stopped" if verb == "stop" else "running"
            rec["sleep_mode"] = None
            return dict(rec)

    def _delete_template(self, name: str, version: int | None = None) -> dict[str, Any]:
        with self._lock:
            gone = [k for k in self.templates if k[0] == name and version in (None, k[1])]
            if not gone:
                raise NotFound(f"template {name} does not exist")
            for key in gone:
                del self.templates[key]
            return {"deleted": [f"{n}/{v}" for n, v in gone]}


def fake_agents(agents: Iterable[FakeAgent]) -> Any:
    """An AgentFactory for `Fleet(agents=…)` that reaches these fakes by their url."""
    by_url = {a.url: a for a in agents}

    def factory(url: str, token: str) -> AgentClient:
        agent = by_url.get(url)
        if agent is None:
            return AgentClient(url, token, transport=httpx.MockTransport(_unreachable))
        return AgentClient(url, token, transport=agent.transport())

    return factory


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused (no fake agent there)", request=request)
