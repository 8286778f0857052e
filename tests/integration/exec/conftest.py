"""A real control plane (SQLite, its own state dir) serving /exec with real Deno
workers as unprivileged uids in memory cgroups. No node is needed: scripts that make
tenants are tested in test_stripe_signup.py."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoody.bench.scratch import free_port, serve_in_thread
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Store
from hoody.control.service import Fleet, Settings


@dataclass
class ExecStack:
    api: str
    admin: str
    project: int
    token: str
    fleet: Fleet

    def client(self) -> Client:
        return Client(self.api, self.token)

    def deploy(self, name: str, source: str) -> dict[str, Any]:
        r = httpx.put(
            f"{self.api}/api/v1/scripts/{self.project}/{name}",
            json={"source": source},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def call(self, name: str, path: str = "", **kw: Any) -> httpx.Response:
        method = kw.pop("method", "GET")
        kw.setdefault("timeout", 60)
        return httpx.request(method, f"{self.api}/exec/{self.project}/{name}{path}", **kw)

    def logs(self, name: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.api}/api/v1/scripts/{self.project}/{name}/logs",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert r.status_code == 200, r.text
        return list(r.json())


@pytest.fixture(scope="module")
def exec_stack() -> Iterator[ExecStack]:
    tmp = Path(tempfile.mkdtemp(prefix="hoody-exec-"))
    store = Store(f"sqlite:///{tmp / 'control.db'}")
    fleet = Fleet(store, settings=Settings(state_dir=tmp))
    admin = fleet.bootstrap_admin()
    assert admin
    with serve_in_thread(create_app(fleet, monitor=False), free_port()) as api:
        with Client(api, admin) as root:
            project = int(root.ensure_project("exec-test")["id"])
            token = root.create_token("project", project_id=project)["token"]
        yield ExecStack(api, admin, project, token, fleet)
    fleet.close()
    store.close()
