"""Node health end to end over loopback: join, heartbeats, down after silence, back."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hoody.control.client import Client
from hoody.control.heartbeat import heartbeat_loop
from hoody.control.service import Fleet
from tests.control_support import ManualClock
from tests.local_agent import LocalAgent


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_node_joins_sends_heartbeats_and_is_marked_down_when_silent(
    clocked_server: tuple[str, Fleet], clock: ManualClock, tmp_path: Path
) -> None:
    """The control plane's clock moves only when the test moves it, so "up" and "down"
    follow the heartbeats the node sent, not how late a loaded machine ran them."""
    url, fleet = clocked_server
    timeout = fleet.settings.heartbeat_timeout
    admin_token = fleet.bootstrap_admin()
    assert admin_token
    admin = Client(url, admin_token)
    join_token = admin.create_token("join")["token"]
    agent = LocalAgent("n1", tmp_path, templates=[("demo", 1), ("demo", 2)])

    def run(stop: threading.Event) -> threading.Thread:
        t = threading.Thread(
            target=heartbeat_loop,
            args=(url, join_token, "n1", agent.url, agent.token),
            kwargs={
                "interval": 0.1,
                "stop": stop,
                "agent_transport": agent.transport,
                "credential": tmp_path / "node.token",
            },
            daemon=True,
        )
        t.start()
        return t

    def state() -> str:
        return str(admin.nodes()[0]["state"]) if admin.nodes() else "absent"

    def beat_now() -> None:
        """Wait for a heartbeat sent at the clock's present time."""
        wait_for(lambda: admin.nodes()[0]["last_heartbeat"] == clock.now)

    stop = threading.Event()
    thread = run(stop)
    wait_for(lambda: state() == "up")
    wait_for(lambda: [len(t["versions"]) for t in admin.templates()] == [2])
    node = admin.nodes()[0]
    assert node["headroom"]["memory_total_bytes"] == agent.host.memory_total
    # Heartbeats keep it up past the timeout: twice 2/3 of it, a beat after each.
    for _ in range(2):
        clock.advance(timeout * 2 / 3)
        beat_now()
    assert state() == "up"

    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    clock.advance(timeout * 2 / 3)  # silent, not yet for the timeout
    time.sleep(0.5)  # several health checks (every 0.1 s)
    assert state() == "up"
    clock.advance(timeout / 2)  # silent past the timeout: the next check marks it down
    wait_for(lambda: state() == "down", timeout=10)

    stop = threading.Event()
    thread = run(stop)  # rejoins with its own credential (the join token makes new nodes)
    wait_for(lambda: state() == "up")
    stop.set()
    thread.join(5)
    admin.close()


def test_the_node_credential_survives_a_restart(server: tuple[str, Fleet], tmp_path: Path) -> None:
    url, fleet = server
    admin_token = fleet.bootstrap_admin()
    assert admin_token
    admin = Client(url, admin_token)
    join = admin.create_token("join")
    agent = LocalAgent("n1", tmp_path)
    credential = tmp_path / "node.token"

    def run(token: str | None) -> None:
        heartbeat_loop(
            url,
            token,
            "n1",
            agent.url,
            agent.token,
            rounds=1,
            agent_transport=agent.transport,
            credential=credential,
        )

    run(join["token"])
    saved = credential.read_text().strip()
    assert saved.startswith("hdy_") and saved != join["token"]
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    first_beat = admin.nodes()[0]["last_heartbeat"]

    # The join token is gone; a restarted agent rejoins with its own credential.
    admin.revoke_token(join["id"])
    time.sleep(0.01)
    run(None)
    assert admin.nodes()[0]["last_heartbeat"] > first_beat
    assert credential.read_text().strip() == saved

    # A credential the control plane refuses cannot be replaced with a join token:
    # those register new nodes only. The node stays as it was.
    credential.write_text("hdy_notavalidtokenatall\n")
    before = admin.nodes()[0]
    run(admin.create_token("join")["token"])
    assert credential.read_text().strip() == "hdy_notavalidtokenatall"
    after = admin.nodes()[0]
    assert (after["url"], after["last_heartbeat"]) == (before["url"], before["last_heartbeat"])
    # The way back for a node that lost its credential: rejoin once with an admin token.
    time.sleep(0.01)
    run(admin_token)
    assert credential.read_text().strip() not in (saved, "hdy_notavalidtokenatall")
    assert admin.nodes()[0]["last_heartbeat"] > after["last_heartbeat"]
    admin.close()
