"""`make demo`: `hoody up` on this machine, the demo-app template, three tenants made
through the control plane API, and the Stripe signup example deployed as an Exec
script, with a ready `curl` that sends it a signed test event."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from rich.console import Console

from hoody.agent.client import AgentClient
from hoody.agent.config import DEFAULT_STATE_DIR, NodeConfig
from hoody.agent.spec import TenantSpec
from hoody.agent.templates import DEMO_ARGS, DEMO_NAME
from hoody.cli.up import DEFAULT_API, DEFAULT_ROUTER, ensure_up
from hoody.control.client import Client
from hoody.errors import HostError

__all__ = ["run_demo"]

DEMO_TENANTS = 3
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "stripe-signup" / "signup.ts"


def _demo_secret(state_dir: Path) -> str:
    """The demo's Stripe webhook secret: made once, kept (0600) for later runs."""
    path = state_dir / "control" / "demo-stripe-webhook.secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = "whsec_demo_" + secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def signed_event_curl(url: str, secret: str, customer: str = "cus_demo") -> str:
    """A shell command that signs a checkout.session.completed event as Stripe does
    (at the moment it runs, so it never goes stale) and POSTs it to `url`."""
    body = (
        '{"id":"evt_demo_\'$(date +%s%N)\'","object":"event",'
        '"type":"checkout.session.completed",'
        f'"data":{{"object":{{"object":"checkout.session","customer":"{customer}"}}}}}}'
    )
    hmac = f"openssl dgst -sha256 -hmac '{secret}' | sed 's/^.*= //'"
    return (
        f"body='{body}'; t=$(date +%s); "
        f"""sig=$(printf '%s' "$t.$body" | {hmac}); """
        f"""curl -s -X POST {url} -H "Stripe-Signature: t=$t,v1=$sig" -d "$body"; echo"""
    )


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
                tenants.append(
                    client.copy(DEMO_NAME, TenantSpec(metadata={"made_by": "make demo"}))
                )
        # What a SaaS app does after signup: mint a claim and redirect the customer.
        links = {t["id"]: client.authorize(t["id"])["url"] for t in tenants}
        # The same, as a billing webhook: the shipped Stripe example as an Exec script.
        secret = _demo_secret(state_dir)
        client.deploy_script(info.project, "signup", EXAMPLE.read_text())
        client.set_secret(info.project, "STRIPE_WEBHOOK_SECRET", secret)
        client.set_secret(info.project, "HOODY_TEMPLATE", DEMO_NAME)
    webhook = f"{info.api_url}/exec/{info.project}/signup"
    console.print()
    console.print(f"[bold green]hoody is running[/] with {len(tenants)} demo-app tenants:")
    for t in tenants:
        console.print(f"  {t['id']:<24} {t['address']:<18} on {t['node']}  ({t['state']})")
        console.print(f"    open (one-time link, valid 1 h): {links[t['id']]}", soft_wrap=True)
    console.print()
    console.print(f"Router: tenants at {info.router_url.replace('localhost', '<cid>.localhost')}/")
    console.print("        (a tenant URL without a session answers 401: open a link above)")
    console.print(
        f"Fleet:  {info.api_url}/   (the dashboard; sign in with the admin token in "
        f"{state_dir / 'control' / 'admin.token'})"
    )
    console.print(f"API:    {info.api_url}/api/v1   docs: {info.api_url}/api/v1/docs")
    console.print(f"Try:    curl http://{tenants[0]['address']}/   (from this server)")
    console.print("        .venv/bin/hoody ls  |  hoody nodes  |  hoody templates")
    console.print(f"        .venv/bin/hoody claims authorize {tenants[0]['id']}   (a new link)")
    console.print(f"        .venv/bin/hoody node exec {tenants[0]['id']} -- cat /etc/hostname")
    console.print()
    console.print(
        f"[bold]Exec:[/] examples/stripe-signup/signup.ts answers at {webhook}; "
        "send it a signed Stripe checkout event (a new tenant and its claim link come back):"
    )
    console.print(f"  {signed_event_curl(webhook, secret)}", soft_wrap=True, highlight=False)
    console.print(
        f"        .venv/bin/hoody scripts logs {info.project}/signup   (every invocation)"
    )
    console.print("Stop:   .venv/bin/hoody down   (tenants keep running; `hoody up -d` resumes)")
    console.print("Remove: .venv/bin/hoody down --purge --yes   (everything the demo made)")
