"""`make demo`: this machine as a one-node hoody with demo-app tenants to open."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from hoody.agent.client import AgentClient
from hoody.agent.config import DEFAULT_STATE_DIR, NodeConfig
from hoody.agent.templates import DEMO_ARGS, DEMO_NAME
from hoody.errors import HoodyError, HostError

__all__ = ["run_demo"]

DEMO_TENANTS = 3


def _agent_up(client: AgentClient) -> bool:
    try:
        client.node()
        return True
    except HoodyError:
        return False


def run_demo(console: Console, state_dir: Path = DEFAULT_STATE_DIR) -> None:
    hoody = str(Path(sys.argv[0]).resolve())
    if not (state_dir / "node.json").exists():
        console.print("[bold]creating the node[/] (btrfs loop-file pool, token)")
        subprocess.run([hoody, "node", "init", "--state-dir", str(state_dir)], check=True)
    config = NodeConfig.load(state_dir)
    token = config.token_path.read_text().strip()
    client = AgentClient(f"http://{config.listen}", token, timeout=1800)
    if not _agent_up(client):
        log = (state_dir / "agent.log").open("ab")
        subprocess.Popen(
            [hoody, "node", "serve", "--state-dir", str(state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ},
        )
        deadline = time.monotonic() + 60
        while not _agent_up(client):
            if time.monotonic() > deadline:
                raise HostError(f"the node agent did not start; see {state_dir / 'agent.log'}")
            time.sleep(0.2)
        console.print(f"node agent running on http://{config.listen} (log: {state_dir}/agent.log)")
    if not any(t["name"] == DEMO_NAME for t in client.templates()):
        with console.status("building the demo-app template (debootstrap, ~1 min the first time)"):
            client.create_template(DEMO_NAME, {"demo": True}, args=DEMO_ARGS)
    tenants = [t for t in client.tenants() if t["template"] == DEMO_NAME]
    for _ in range(DEMO_TENANTS - len(tenants)):
        tenants.append(client.copy(DEMO_NAME))
    console.print()
    console.print(f"[bold green]hoody is running[/] with {len(tenants)} demo-app tenants:")
    for t in tenants:
        console.print(f"  {t['id']:<24} {t['url']}   (state: {t['state']})")
    console.print()
    console.print("Try:  .venv/bin/hoody ls   |   curl " + tenants[0]["url"])
    console.print("      .venv/bin/hoody exec " + tenants[0]["id"] + " -- cat /etc/hostname")
