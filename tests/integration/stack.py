"""The product as a customer's request meets it, on the session's scratch node: a
control plane (SQLite, in a thread) with the node joined by heartbeats, and a router
with a router token of its own polling it.

Shared by the router, sleep and Exec signup tests, which differ only in what they do
with it. Everything is removed on exit: the project's tenants, the router, the
heartbeats, the control plane and its state dir.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hoody import router as tenant_router
from hoody.agent.node_info import headroom
from hoody.agent.templates import DEMO_NAME
from hoody.bench.scratch import ScratchNode, free_port, serve_in_thread
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Store
from hoody.control.heartbeat import start_heartbeat
from hoody.control.service import Fleet, Settings


@dataclass
class ProductStack:
    api: str
    admin: str  # the admin token
    client: Client  # a project token's client, as the SaaS app has
    project: int
    router_port: int

    def address(self, cid: str) -> str:
        """Tenant `cid`'s ip:port on the node: the admin's to know (a project token's
        answers do not say where a tenant runs)."""
        with Client(self.api, self.admin) as root:
            return str(root.container(cid)["address"])


@contextlib.contextmanager
def product_stack(scratch: ScratchNode, name: str) -> Iterator[ProductStack]:
    """A control plane + router over `scratch`, with project `<name>-test`, once the
    node's demo-app template is known to the control plane."""
    tmp = Path(tempfile.mkdtemp(prefix=f"hoody-{name}-"))
    router_port = free_port()
    store = Store(f"sqlite:///{tmp / 'control.db'}")
    settings = Settings(router_url=f"http://localhost:{router_port}", state_dir=tmp)
    fleet = Fleet(store, settings=settings)
    try:
        admin = fleet.bootstrap_admin()
        assert admin
        node = scratch.node
        with serve_in_thread(create_app(fleet), free_port()) as api:
            beats = start_heartbeat(
                api,
                admin,
                node.config.name,
                scratch.url,
                scratch.token,
                lambda: headroom(node),
                get_templates=lambda: [t.to_json() for t in node.store.templates()],
                get_sleeping=node.sleepers,
            )
            with Client(api, admin) as root:
                project = int(root.ensure_project(f"{name}-test")["id"])
                token = root.create_token("project", project_id=project)["token"]
                router_token = root.create_token("router")["token"]
            # The router runs with its own scope: route table, claims, wakes, activity.
            stop_router = tenant_router.start_in_thread(
                api, router_token, f"127.0.0.1:{router_port}", "localhost"
            )
            client = Client(api, token)
            try:
                deadline = time.monotonic() + 30
                while not any(t["name"] == DEMO_NAME for t in client.templates()):
                    assert time.monotonic() < deadline, "the node's template never showed"
                    time.sleep(0.1)
                yield ProductStack(api, admin, client, project, router_port)
            finally:
                for c in client.containers()["items"]:
                    client.delete(c["id"])
                client.close()
                stop_router()
                beats.set()
    finally:
        fleet.close()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
