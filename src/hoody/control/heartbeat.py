"""The node side of node health: join the control plane, then send heartbeats.

`hoody node serve --join URL --token T` runs `heartbeat_loop` in a thread next to the
agent. Each round reads the agent's headroom and template versions and posts them to
`/api/v1/nodes/{name}/heartbeat`; the control plane marks the node down when rounds
stop arriving for its heartbeat timeout (8 s by default), so the interval (2 s) must
stay well below that. A rejected token or unknown node makes the next round join again;
other errors are logged and retried, so a control plane restart is survived.

The node token a join hands out is the node's credential: with `credential` (a file in
the node's state dir, `node.token`, mode 0600) it is kept across agent restarts, and a
restarted agent rejoins with it; the join token is needed again only if the control
plane refuses the saved one (revoked, or another control plane).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from hoody.agent.client import AgentClient
from hoody.control.client import Client
from hoody.errors import Forbidden, HoodyError, NotFound, Unauthorized

__all__ = ["heartbeat_loop", "load_credential", "save_credential", "start_heartbeat"]

log = logging.getLogger(__name__)


def load_credential(path: Path | None) -> str | None:
    """The node token saved at `path`, or None when there is none."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    return token or None


def save_credential(path: Path, token: str) -> None:
    """Write the node token to `path` (0600, replaced atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _join(
    control_url: str,
    join_token: str | None,
    saved: str | None,
    node_name: str,
    agent_url: str,
    agent_token: str,
    credential: Path | None,
    transport: httpx.BaseTransport | None,
) -> tuple[Client, str | None]:
    """A client with this node's token: the saved one if the control plane takes it,
    else a new one from joining with `join_token`. Returns (client, token now saved)."""
    if saved is not None:
        node = Client(control_url, saved, transport=transport, timeout=10)
        try:
            node.join(node_name, agent_url, agent_token)
            return node, saved
        except (Unauthorized, Forbidden) as exc:
            node.close()
            if join_token is None:
                raise
            log.warning("saved node credential refused (%s); joining with the join token", exc)
    if join_token is None:
        raise Unauthorized(
            f"node {node_name} has no saved credential; pass a join token "
            "(`hoody token create --join`) with --token"
        )
    with Client(control_url, join_token, transport=transport, timeout=10) as joiner:
        joined = joiner.join(node_name, agent_url, agent_token)
    token = joined.get("token") or join_token
    if credential is not None and joined.get("token"):
        save_credential(credential, token)
    return Client(control_url, token, transport=transport, timeout=10), token


def heartbeat_loop(
    control_url: str,
    join_token_or_node_token: str | None,
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
    credential: Path | None = None,
) -> None:
    """Join as `node_name` (agent at `agent_url`), then heartbeat every `interval` s.

    `get_usage` (each tenant's [memory, disk] bytes) is sent every `usage_every`
    rounds when given. `get_headroom`, `get_templates` and `get_sleeping` (the tenants it put to
    sleep) default to asking the agent
    (`GET /v1/node`, `GET /v1/templates`); an agent running in this process passes its
    own. Runs until
    `stop` is set, or for `rounds` rounds (tests). Never raises for a failed round.
    With `credential`, the node token is saved there and used first (see the module).
    """
    stop = stop or threading.Event()
    agent = AgentClient(agent_url, agent_token, transport=agent_transport, timeout=10)
    node: Client | None = None
    # The node token this loop got, also without a credential file: a join token
    # registers new nodes only, so a rejoin (after the control plane forgot this
    # session, or refused a heartbeat) must use the node's own token.
    own: str | None = None
    done = 0
    try:
        while not stop.is_set() and (rounds is None or done < rounds):
            done += 1
            try:
                if node is None:
                    saved = load_credential(credential) or own
                    node, own = _join(
                        control_url,
                        join_token_or_node_token,
                        saved,
                        node_name,
                        agent_url,
                        agent_token,
                        credential,
                        transport,
                    )
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
        if node is not None:
            node.close()


def start_heartbeat(
    control_url: str,
    token: str | None,
    node_name: str,
    agent_url: str,
    agent_token: str,
    get_headroom: Callable[[], dict[str, Any]] | None = None,
    *,
    get_templates: Callable[[], list[dict[str, Any]]] | None = None,
    get_usage: Callable[[], dict[str, list[int]]] | None = None,
    get_sleeping: Callable[[], dict[str, dict[str, Any]]] | None = None,
    interval: float = 2.0,
    credential: Path | None = None,
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
            "credential": credential,
        },
        name=f"heartbeat-{node_name}",
        daemon=True,
    ).start()
    return stop
