"""The node side of node health: join the control plane, then send heartbeats.

`hoody node serve --join URL --token T` runs `heartbeat_loop` in a thread next to the
agent. Each round reads the agent's headroom and template versions and posts them to
`/api/v1/nodes/{name}/heartbeat`; the control plane marks the node down when rounds
stop arriving for its heartbeat timeout (8 s by default), so the interval (2 s) must
stay well below that. A rejected token or unknown node makes the next round join again;
other errors are logged and retried, so a control plane restart is survived.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

from hoody.agent.client import AgentClient
from hoody.control.client import Client
from hoody.errors import HoodyError, NotFound, Unauthorized

__all__ = ["heartbeat_loop", "start_heartbeat"]

log = logging.getLogger(__name__)


def heartbeat_loop(
    control_url: str,
    join_token_or_node_token: str,
    node_name: str,
    agent_url: str,
    agent_token: str,
    get_headroom: Callable[[], dict[str, Any]] | None = None,
    *,
    get_templates: Callable[[], list[dict[str, Any]]] | None = None,
    get_usage: Callable[[], dict[str, list[int]]] | None = None,
    usage_every: int = 5,
    get_sleeping: Callable[[], dict[str, dict[str, Any]]] | None = None,
    interval: float = 2.0,
    stop: threading.Event | None = None,
    rounds: int | None = None,
    transport: httpx.BaseTransport | None = None,
    agent_transport: httpx.BaseTransport | None = None,
) -> None:
    """Join as `node_name` (agent at `agent_url`), then heartbeat every `interval` s.

    `get_usage` (each tenant's [memory, disk] bytes) is sent every `usage_every`
    rounds when given. `get_headroom`, `get_templates` and `get_sleeping` (the tenants it put to
    sleep) default to asking the agent
    (`GET /v1/node`, `GET /v1/templates`); an agent running in this process passes its
    own. Runs until
    `stop` is set, or for `rounds` rounds (tests). Never raises for a failed round.
    """
    stop = stop or threading.Event()
    agent = AgentClient(agent_url, agent_token, transport=agent_transport, timeout=10)
    joiner = Client(control_url, join_token_or_node_token, transport=transport, timeout=10)
    node: Client | None = None
    done = 0
    try:
        while not stop.is_set() and (rounds is None or done < rounds):
            done += 1
            try:
                if node is None:
                    joined = joiner.join(node_name, agent_url, agent_token)
                    token = joined.get("token") or join_token_or_node_token
                    node = Client(control_url, token, transport=transport, timeout=10)
                    log.info("joined %s as node %s", control_url, node_name)
                info = agent.node() if get_headroom is None or get_sleeping is None else {}
                headroom = dict(get_headroom() if get_headroom else info["headroom"])
                # Nested, so it travels beside the flat numbers (what each template
                # version's tenants use: the fleet learns requests from it).
                usage = headroom.pop("templates", None)
                sleeping = get_sleeping() if get_sleeping else info.get("sleeping", {})
                templates = [
                    {"name": t["name"], "version": t["version"], "limits": t.get("limits")}
                    for t in (get_templates() if get_templates else agent.templates())
                ]
                # Per-tenant use is for the dashboard's table: every few rounds is
                # plenty, and it keeps a node of thousands of tenants' beats small.
                per_tenant = None
                if get_usage and done % usage_every == 1:
                    try:
                        per_tenant = get_usage()
                    except Exception:  # the table's figures must not cost a heartbeat
                        log.exception("measuring each tenant's use failed")
                node.heartbeat(
                    node_name,
                    headroom,
                    templates,
                    usage,
                    tenant_usage=per_tenant,
                    sleeping=sleeping,
                )
            except (Unauthorized, NotFound) as exc:
                log.warning("heartbeat refused (%s); joining again", exc.message)
                if node is not None:
                    node.close()
                node = None
            except HoodyError as exc:
                log.warning("heartbeat failed: %s", exc.message)
            except Exception:
                log.exception("heartbeat round failed")
            stop.wait(interval)
    finally:
        agent.close()
        joiner.close()
        if node is not None:
            node.close()


def start_heartbeat(
    control_url: str,
    token: str,
    node_name: str,
    agent_url: str,
    agent_token: str,
    get_headroom: Callable[[], dict[str, Any]] | None = None,
    *,
    get_templates: Callable[[], list[dict[str, Any]]] | None = None,
    get_usage: Callable[[], dict[str, list[int]]] | None = None,
    get_sleeping: Callable[[], dict[str, dict[str, Any]]] | None = None,
    interval: float = 2.0,
) -> threading.Event:
    """Run `heartbeat_loop` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(
        target=heartbeat_loop,
        args=(control_url, token, node_name, agent_url, agent_token, get_headroom),
        kwargs={
            "interval": interval,
            "stop": stop,
            "get_templates": get_templates,
            "get_usage": get_usage,
            "get_sleeping": get_sleeping,
        },
        name=f"heartbeat-{node_name}",
        daemon=True,
    ).start()
    return stop
