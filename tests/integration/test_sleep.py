"""Idle tenants asleep, woken by their next request through the real router; and a
router whose table is behind a sleep still answers.

A control plane (SQLite) with the scratch node joined, the router polling it and
reporting activity, demo-app tenants made through the API with a short idle timeout.
Only loopback and the scratch node's tenants are contacted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from hoody import router as tenant_router
from hoody.agent.spec import TenantSpec
from hoody.agent.templates import DEMO_NAME
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode, free_port
from hoody.control.client import Client
from tests.integration.stack import product_stack


@dataclass
class Stack:
    client: Client
    router_port: int
    address: Callable[[str], str]  # a tenant's ip:port on its node, as the admin sees it
    api: str = ""
    admin: str = ""

    def get(self, cid: str, path: str = "/") -> httpx.Response:
        headers = {"Host": f"{cid}.localhost:{self.router_port}"}
        return httpx.get(f"http://127.0.0.1:{self.router_port}{path}", headers=headers, timeout=30)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.router_port}/metrics"
        return httpx.get(url, headers={"Host": "localhost"}, timeout=5).text


def until(check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def stack(scratch: ScratchNode) -> Iterator[Stack]:
    with product_stack(scratch, "sleep") as s:
        yield Stack(s.client, s.router_port, s.address, s.api, s.admin)


@pytest.mark.parametrize("mode", ["stopped", "frozen"])
def test_an_idle_tenant_sleeps_and_its_next_request_wakes_it(stack: Stack, mode: str) -> None:
    c = stack.client.copy(
        DEMO_NAME, TenantSpec(metadata={"public": True}, sleep={"idle_seconds": 3, "mode": mode})
    )
    cid = c["id"]
    wait_http_ok(f"http://{stack.address(cid)}/healthz")
    # The router may still hold the route as it was while being created (it polls).
    until(lambda: stack.get(cid).status_code == 200, timeout=10)
    # Requests through the router keep it awake past its idle timeout.
    for _ in range(5):
        assert stack.get(cid).status_code == 200
        time.sleep(1)
    assert stack.client.container(cid)["state"] == "running"
    until(lambda: stack.client.container(cid)["state"] == "sleeping", timeout=15)
    assert stack.client.container(cid)["sleep_mode"] == mode
    time.sleep(1)  # the router's table says so too
    before = stack.metrics()
    start = time.monotonic()
    r = stack.get(cid, "/api/visits")
    took = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert r.json()["tenant"] == cid
    assert took < 5, f"the first request to a sleeping tenant took {took:.2f} s"
    after = stack.metrics()
    assert _wakes(after) == _wakes(before) + 1
    # The router woke it at its node and told the control plane after answering.
    at_node = "hoody_router_wakes_at_node_total"
    assert _wakes(after, at_node) == _wakes(before, at_node) + 1
    until(lambda: stack.client.container(cid)["state"] == "running", timeout=5)
    # It sleeps again once idle, and wakes again.
    until(lambda: stack.client.container(cid)["state"] == "sleeping", timeout=15)
    time.sleep(1)
    assert stack.get(cid, "/api/visits").json()["visits"] > r.json()["visits"]


def _wakes(metrics: str, series: str = 'hoody_router_wakes_total{result="ok"}') -> int:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return int(line.split()[-1])
    raise AssertionError(f"no {series} in {metrics!r}")


@pytest.mark.parametrize("mode", ["stopped", "frozen"])
def test_a_router_whose_table_is_behind_a_sleep_still_answers(stack: Stack, mode: str) -> None:
    """The control plane puts a tenant to sleep; a router that has not refreshed its
    table since (here it never does on its own) still routes to it as running.
    Stopped: the refused connection wakes the tenant and the request is answered, not
    502. Frozen: the tenant's kernel takes the connection and the request waits; the
    router's next refresh (forced here by a request for an unknown host) says the
    tenant sleeps, and the router wakes it."""
    c = stack.client.copy(DEMO_NAME, TenantSpec(metadata={"public": True}))
    cid = c["id"]
    wait_http_ok(f"http://{stack.address(cid)}/healthz")
    with Client(stack.api, stack.admin) as root:
        token = root.create_token("router", description="lagging router")["token"]
    port = free_port()
    stop = tenant_router.start_in_thread(
        stack.api, token, f"127.0.0.1:{port}", "localhost", refresh_every=3600
    )
    lagging = Stack(stack.client, port, stack.address)
    try:
        assert lagging.get(cid).status_code == 200
        assert stack.client.sleep(cid, mode)["state"] == "sleeping"
        before = lagging.metrics()
        answers: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: answers.append(lagging.get(cid, "/api/visits")))
        asking.start()
        if mode == "frozen":
            asking.join(timeout=1.0)
            assert asking.is_alive(), "a frozen tenant's request waits for the wake"
            assert lagging.get("unknown-tenant").status_code == 404  # refreshes the table
        asking.join(timeout=30)
        assert answers and answers[0].status_code == 200, answers and answers[0].text
        assert answers[0].json()["tenant"] == cid
        # A frozen tenant answers the request it already holds the moment the node
        # thaws it, which can be before the control plane has written the woken row.
        until(lambda: stack.client.container(cid)["state"] == "running", timeout=5)
        after = lagging.metrics()
        assert _wakes(after) == _wakes(before) + 1
        refused = "hoody_router_wake_refused_total"
        assert _wakes(after, refused) == _wakes(before, refused) + (mode == "stopped")
    finally:
        stop()
        stack.client.delete(cid)
