"""Node health end to end over loopback: join, heartbeats, down after silence, back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hoody.control.client import Client
from hoody.control.heartbeat import heartbeat_loop
from hoody.control.service import Fleet
from tests.fake_agent import FakeAgent


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_node_joins_sends_heartbeats_and_is_marked_down_when_silent(
    server: tuple[str, Fleet],
) -> None:
    url, fleet = server
    admin_token = fleet.bootstrap_admin()
    assert admin_token
    admin = Client(url, admin_token)
    join_token = admin.create_token("join")["token"]
    agent = FakeAgent("n1", templates=[("demo", 1), ("demo", 2)])

    def run(stop: threading.Event) -> threading.Thread:
        t = threading.Thread(
            target=heartbeat_loop,
            args=(url, join_token, "n1", agent.url, agent.token),
            kwargs={"interval": 0.1, "stop": stop, "agent_transport": agent.transport()},
            daemon=True,
        )
        t.start()
        return t

    def state() -> str:
        return str(admin.nodes()[0]["state"]) if admin.nodes() else "absent"

    stop = threading.Event()
    thread = run(stop)
    wait_for(lambda: state() == "up")
    wait_for(lambda: [len(t["versions"]) for t in admin.templates()] == [2])
    node = admin.nodes()[0]
    assert node["headroom"]["memory_total_bytes"] == agent.memory_total
    time.sleep(1.0)  # heartbeats keep it up past the timeout
    assert state() == "up"

    stop.set()
    thread.join(5)
    silent_since = time.monotonic()
    wait_for(lambda: state() == "down", timeout=5)
    assert time.monotonic() - silent_since < 2.0  # 0.6 s timeout + 0.1 s checks

    stop = threading.Event()
    thread = run(stop)  # joins again with the join token
    wait_for(lambda: state() == "up")
    stop.set()
    thread.join(5)
    admin.close()
