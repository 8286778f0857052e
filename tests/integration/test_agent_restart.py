"""The agent is SIGKILLed in the middle of copies and restarted: nothing is lost or half-made."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hoody.agent.client import AgentClient
from hoody.agent.config import NodeConfig
from hoody.agent.linux import build_node
from hoody.agent.templates import DEMO_ARGS
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import scratch_config
from hoody.errors import HoodyError

HOODY = str(Path(sys.executable).parent / "hoody")


def start_agent(config: NodeConfig) -> subprocess.Popen[bytes]:
    log = (config.state_dir / "agent.log").open("ab")
    return subprocess.Popen(
        [HOODY, "node", "serve", "--state-dir", str(config.state_dir)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def wait_up(client: AgentClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client.node()
            return
        except HoodyError:
            assert proc.poll() is None, "the agent exited"
            assert time.monotonic() < deadline, "the agent did not come up"
            time.sleep(0.1)


@pytest.fixture
def agent_config() -> Iterator[NodeConfig]:
    with scratch_config("ik") as config:
        config.token_path.write_text(secrets.token_urlsafe(16))
        yield config


def test_sigkill_mid_copy_then_restart(agent_config: NodeConfig) -> None:
    config = agent_config
    client = AgentClient(f"http://{config.listen}", config.token_path.read_text())
    proc = start_agent(config)
    try:
        wait_up(client, proc)
        client.create_template("demo-app", {"demo": True}, args=DEMO_ARGS)
        survivors = [client.copy("demo-app") for _ in range(2)]
        for t in survivors:
            wait_http_ok(t["url"])
        pids = {t["id"]: t["pid"] for t in survivors}
        uid_map = ["cat", "/proc/self/uid_map"]
        maps = {tid: client.exec(tid, uid_map)["stdout"].split() for tid in pids}
        assert len({m[1] for m in maps.values()}) == 2, "each tenant its own host range"

        def copy_quietly() -> None:
            with contextlib.suppress(HoodyError, httpx.HTTPError):
                client.copy("demo-app")

        threads = [threading.Thread(target=copy_quietly) for _ in range(8)]
        for th in threads:
            th.start()
        time.sleep(0.25)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for th in threads:
            th.join()

        proc = start_agent(config)
        wait_up(client, proc)
        tenants = {t["id"]: t for t in client.tenants()}
        for tid, pid in pids.items():
            assert tenants[tid]["state"] == "running"
            assert tenants[tid]["pid"] == pid, "a running tenant survives an agent restart"
            wait_http_ok(tenants[tid]["url"])
        for t in tenants.values():
            assert t["state"] == "running", t
            wait_http_ok(t["url"])
        # Exec and a restart work after the agent restart, in the same id range.
        tid = next(iter(pids))
        assert client.exec(tid, uid_map)["stdout"].split() == maps[tid]
        client.action(tid, "restart")
        wait_http_ok(tenants[tid]["url"])
        assert client.exec(tid, uid_map)["stdout"].split() == maps[tid]

        node = build_node(config)
        try:
            on_host = {
                "storage": set(node.storage.list_tenants()),
                "netns": set(node.network.list_attached()),
                "nft": set(node.firewall.list_tenants()),
                "runtime": set(node.runtime.list()),
            }
        finally:
            node.store.close()
        for kind, ids in on_host.items():
            assert ids == set(tenants), f"{kind} differs from the records: {ids ^ set(tenants)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        client.close()
