"""`make demo`: `hoody up` on this machine, the demo-app template, and three tenants
made through the control plane API, as a customer's signup would make them."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from hoody.agent.client import AgentClient
from hoody.agent.config import DEFAULT_STATE_DIR, NodeConfig
from hoody.agent.templates import DEMO_ARGS, DEMO_NAME
from hoody.cli.up import DEFAULT_API, DEFAULT_ROUTER, ensure_up
from hoody.control.client import Client
from hoody.errors import HostError

__all__ = ["run_demo"]

DEMO_TENANTS = 3


def _wait_for_template(client: Client, name: str, timeout: float = 30) -> None:
    """Until the control plane knows `name` is ready on a node (the next heartbeat)."""
    deadline = time.monotonic() + timeout
    while True:
        for t in client.templates():
            ready = [n for v in t["versions"] for n in v["nodes"] if n["state"] == "ready"]
            if t["name"] == name and ready:
                return
        if time.monotonic() > deadline:
            raise HostError(f"the control plane did not see template {name} within {timeout} s")
        time.sleep(0.2)


def run_demo(
    console: Console,
    state_dir: Path = DEFAULT_STATE_DIR,
    api_listen: str = DEFAULT_API,
    router_listen: str = DEFAULT_ROUTER,
) -> None:
    with console.status("starting hoody (control plane, this server as a node, router)…"):
        info = ensure_up(state_dir, api_listen, router_listen=router_listen)
    console.print(
        f"control plane {info.api_url} with node {info.node}"
        + ("" if info.started else " (already running)")
        + f"; log: {info.log}"
    )
    config = NodeConfig.load(state_dir)
    with (
        Client(info.api_url, info.admin_token, project=info.project) as client,
        AgentClient(info.agent_url, config.token_path.read_text().strip(), timeout=1800) as agent,
    ):
        if not any(t["name"] == DEMO_NAME for t in agent.templates()):
            # Templates are built on a node; the control plane learns of them from its
            # heartbeats and sends them to every other node.
            with console.status("building the demo-app template (debootstrap, ~1 min once)"):
                agent.create_template(DEMO_NAME, {"demo": True}, args=DEMO_ARGS)
        _wait_for_template(client, DEMO_NAME)
        tenants = list(client.iter_containers(template=DEMO_NAME, project=info.project))
        with console.status("creating demo-app tenants through the API"):
            for _ in range(DEMO_TENANTS - len(tenants)):
                tenants.append(client.copy(DEMO_NAME, metadata={"made_by": "make demo"}))
        # What a SaaS app does after signup: mint a claim and redirect the customer.
        links = {t["id"]: client.authorize(t["id"])["url"] for t in tenants}
    console.print()
    console.print(f"[bold green]hoody is running[/] with {len(tenants)} demo-app tenants:")
    for t in tenants:
        console.print(f"  {t['id']:<24} {t['address']:<18} on {t['node']}  ({t['state']})")
        console.print(f"    open (one-time link, valid 1 h): {links[t['id']]}", soft_wrap=True)
    console.print()
    console.print(f"Router: tenants at {info.router_url.replace('localhost', '<cid>.localhost')}/")
    console.print("        (a tenant URL without a session answers 401: open a link above)")
    console.print(f"API:    {info.api_url}/api/v1   docs: {info.api_url}/api/v1/docs")
    console.print(f"Try:    curl http://{tenants[0]['address']}/   (from this server)")
    console.print("        .venv/bin/hoody ls  |  hoody nodes  |  hoody templates")
    console.print(f"        .venv/bin/hoody claims authorize {tenants[0]['id']}   (a new link)")
    console.print(f"        .venv/bin/hoody node exec {tenants[0]['id']} -- cat /etc/hostname")
    console.print("Stop:   .venv/bin/hoody down   (tenants keep running; `hoody up -d` resumes)")
