"""`hoody node …`: this server as a node: set it up, run its agent, and work on its
templates and tenants directly, without the control plane.

The node-local commands talk to this server's agent (`hoody node serve`), found through
HOODY_AGENT_URL/HOODY_AGENT_TOKEN or the node's state dir (default /var/lib/hoody).
Fleet-wide work (placement, idempotency, every node) goes through the control plane
with the top-level commands: `hoody copy`, `hoody ls`, `hoody rm`, ….
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hoody import services
from hoody.agent.client import AgentClient
from hoody.agent.config import DEFAULT_STATE_DIR, NodeConfig
from hoody.agent.ids import DEFAULT_ID_BASE, DEFAULT_ID_SLOTS
from hoody.cli.common import (
    CpuOpt,
    CurrencyOpt,
    DiskOpt,
    IoMbpsOpt,
    IopsOpt,
    JsonOpt,
    MemOpt,
    MonthlyCostOpt,
    OvercommitOpt,
    PidsOpt,
    RequestOpt,
    ReserveOpt,
    emit,
    firewall,
    key_values,
    limits,
    status,
    tenant_spec,
)
from hoody.errors import Conflict, InvalidInput
from hoody.keepalive import SERVER_KEEP_ALIVE

__all__ = ["advertised_url", "agent", "app"]

app = typer.Typer(
    help="This server as a hoody node: init, serve, info, and its own templates and tenants."
)
template_app = typer.Typer(help="Templates on this node: read-only, versioned root filesystems.")
app.add_typer(template_app, name="template")

StateDir = Annotated[Path, typer.Option(help="Where the node keeps its state.")]
TENANT_COLUMNS = ["id", "template", "version", "state", "ip", "url"]


def agent() -> AgentClient:
    """A client of this server's node agent."""
    url = os.environ.get("HOODY_AGENT_URL")
    token = os.environ.get("HOODY_AGENT_TOKEN")
    if not (url and token):
        state_dir = Path(os.environ.get("HOODY_STATE_DIR", str(DEFAULT_STATE_DIR)))
        config = NodeConfig.load(state_dir)
        url = url or f"http://{config.listen}"
        token = token or config.token_path.read_text().strip()
    return AgentClient(url, token)


def advertised_url(listen: str, advertise: str | None) -> str:
    """The agent URL the control plane should call: `advertise`, else http://<listen>."""
    if advertise:
        if not advertise.startswith(("http://", "https://")):
            raise InvalidInput(f"--advertise {advertise!r} is invalid; give http://HOST:PORT")
        return advertise.rstrip("/")
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        raise InvalidInput(
            f"the agent listens on {listen}, which the control plane cannot call; "
            "give --advertise http://<this server's address>:" + port
        )
    return f"http://{listen}"


# setting up and running the node


@app.command()
def init(
    size: Annotated[str, typer.Option(help="Size of the loop-file btrfs pool.")] = "20G",
    pool: Annotated[Path | None, typer.Option(help="Use this btrfs path as the pool.")] = None,
    subnet: Annotated[str, typer.Option(help="Tenant subnet.")] = "10.88.0.0/16",
    name: Annotated[str, typer.Option(help="Node name: prefixes links and tables.")] = "hoody",
    storage: Annotated[str, typer.Option(help="overlay or snapshot")] = "overlay",
    listen: Annotated[str, typer.Option(help="Agent API address.")] = "127.0.0.1:7070",
    allow_router: Annotated[
        list[str] | None,
        typer.Option(help="CIDR the fleet's router connects from (repeatable)."),
    ] = None,
    ports_per_bridge: Annotated[
        int,
        typer.Option(
            help="Tenants per Linux bridge (a power of two, 4 to 512); more bridges "
            "are made as tenants arrive."
        ),
    ] = 512,
    overcommit: Annotated[
        float,
        typer.Option(
            help="Placement counts up to memory x this (requests and measured use, not limits)."
        ),
    ] = 1.0,
    reserve: Annotated[
        str,
        typer.Option(help="Memory kept for the host: 2G, 512M, 10%, or auto (10 %, >= 1 GiB)."),
    ] = "auto",
    management: Annotated[
        list[str] | None,
        typer.Option(
            help="CIDR of the servers' own networks that tenants never reach by default "
            "(repeatable; default: the networks of this server's addresses)."
        ),
    ] = None,
    id_base: Annotated[
        int, typer.Option(help="First host uid/gid of the tenants' id area.")
    ] = DEFAULT_ID_BASE,
    id_slots: Annotated[
        int, typer.Option(help="Tenants the id area holds (65,536 ids each).")
    ] = DEFAULT_ID_SLOTS,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: JsonOpt = False,
) -> None:
    """Create the btrfs pool (a loop file unless --pool is on btrfs) and the agent token.

    Safe to re-run: an existing pool and token are kept.
    """
    from hoody.agent.linux import init_node

    config = NodeConfig(
        name=name,
        state_dir=state_dir,
        pool=pool or state_dir / "pool",
        pool_image=None if pool else state_dir / "pool.img",
        pool_size=size,
        subnet=subnet,
        storage_mode=storage,
        listen=listen,
        routers=tuple(allow_router or ()),
        ports_per_bridge=ports_per_bridge,
        overcommit=overcommit,
        memory_reserve=reserve,
        management=tuple(management) if management is not None else _own_networks(subnet),
        id_base=id_base,
        id_slots=id_slots,
    )
    init_node(config)
    out = {
        "name": config.name,
        "pool": str(config.pool),
        "state_dir": str(state_dir),
        "listen": config.listen,
        "token_file": str(config.token_path),
        "management": list(config.management),
    }
    typer.echo(json.dumps(out, indent=2) if as_json else f"node {name} ready: pool {config.pool}")


def _own_networks(subnet: str) -> tuple[str, ...]:
    """The IPv4 networks of this server's global addresses (its LAN, where other nodes'
    agents and the control plane listen), but not the tenant subnet."""
    import ipaddress

    from hoody.proc import run

    tenants = ipaddress.IPv4Network(subnet, strict=False)
    found = set()
    for link in json.loads(run(["ip", "-j", "-4", "addr", "show", "scope", "global"]).stdout):
        for addr in link.get("addr_info", []):
            net = ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}").network
            if not net.overlaps(tenants):
                found.add(net)
    return tuple(str(n) for n in sorted(found))


@app.command()
def serve(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    listen: Annotated[str | None, typer.Option(help="Override the API address.")] = None,
    join: Annotated[
        str | None,
        typer.Option(help="Join the control plane at this URL and send it heartbeats."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="HOODY_JOIN_TOKEN", help="A join token for --join (`hoody token create --join`)."
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(help="The URL the control plane calls this agent at (default: --listen)."),
    ] = None,
    heartbeat_every: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 2.0,
) -> None:
    """Run the node agent: reconcile, then serve the API and supervise tenants.

    With --join URL --token T the node registers with the control plane and reports
    its headroom and templates every two seconds; it is marked down when they stop.
    The node token it gets is kept in <state-dir>/node.token (0600): later starts
    rejoin with it and need no --token.
    """
    import uvicorn

    from hoody.agent.api import create_app
    from hoody.agent.linux import build_node
    from hoody.agent.node_info import headroom, tenant_usage
    from hoody.control.heartbeat import load_credential, start_heartbeat

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per heartbeat otherwise
    config = NodeConfig.load(state_dir)
    services.join()
    address = listen or config.listen
    host, _, port = address.rpartition(":")
    credential = config.state_dir / "node.token"
    if join and not token and load_credential(credential) is None:
        raise InvalidInput(
            "--join needs --token: a join token from `hoody token create --join` "
            "(or HOODY_JOIN_TOKEN); a node that joined once keeps its credential in "
            f"{credential} and rejoins without one"
        )
    agent_url = advertised_url(address, advertise) if join else ""
    node = build_node(config)
    agent_token = config.token_path.read_text().strip()
    stop = None
    if join:
        stop = start_heartbeat(
            join,
            token,
            config.name,
            agent_url,
            agent_token,
            lambda: headroom(node),
            get_templates=lambda: [t.to_json() for t in node.store.templates()],
            get_usage=lambda: tenant_usage(node),
            get_sleeping=node.sleepers,
            interval=heartbeat_every,
            credential=credential,
        )
    try:
        uvicorn.run(
            create_app(node, agent_token),
            host=host,
            port=int(port),
            log_level="warning",
            timeout_keep_alive=SERVER_KEEP_ALIVE,
        )
    finally:
        if stop is not None:
            stop.set()


def node_summary(config: NodeConfig) -> str:
    """What destroying the node removes, for a confirmation message."""
    from hoody.agent.state import NodeStore

    store = NodeStore(config.db_path)
    try:
        tenants, templates = len(store.tenants()), len(store.templates())
    finally:
        store.close()
    return (
        f"node {config.name}: its {tenants} tenant(s) with their files, its {templates} "
        f"template(s), network, firewall, cgroups and pool {config.pool}"
    )


def destroy_node_here(state_dir: Path, yes: bool) -> int:
    """Remove the node in `state_dir` and everything on it (`linux.destroy_node`) once
    the caller said --yes and its agent is stopped; how many tenants went."""
    from hoody.agent.linux import destroy_node

    config = NodeConfig.load(state_dir)
    if not yes:
        raise InvalidInput(
            f"this removes {node_summary(config)} from this host, and nothing of it can "
            "be brought back; run again with --yes to go ahead"
        )
    host, _, port = config.listen.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        raise Conflict(
            f"the node's agent still answers at {config.listen}; stop it first "
            "(`hoody down` for `hoody up`, or stop `hoody node serve`), then run this again"
        )
    return destroy_node(config)


@app.command()
def destroy(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    yes: Annotated[bool, typer.Option("--yes", help="Really remove it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove this node from the host: every tenant and its files, the templates, the
    node's network, firewall rules, cgroups and pool (a loop-file pool's image too).
    Stop its agent first; a node of a fleet, drain it before (`hoody nodes drain NAME`)
    so its tenants move to other nodes instead of going with it."""
    removed = destroy_node_here(state_dir, yes)
    emit({"destroyed": str(state_dir), "tenants_removed": removed}, as_json)


@app.command("set")
def set_settings(
    name: Annotated[
        str | None,
        typer.Argument(help="A node of the fleet (for --monthly-cost; default: this one)."),
    ] = None,
    overcommit: OvercommitOpt = None,
    reserve: ReserveOpt = None,
    monthly_cost: MonthlyCostOpt = None,
    currency: CurrencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change this node's placement settings (saved; its heartbeats carry them), or,
    with NAME, --monthly-cost or --currency, a fleet node's through the control plane
    (`hoody login` first): `hoody node set node1 --monthly-cost 29 --currency USD`."""
    if name is not None or monthly_cost is not None or currency is not None:
        from hoody.control.client import Client

        if name is None:
            state_dir = Path(os.environ.get("HOODY_STATE_DIR", str(DEFAULT_STATE_DIR)))
            name = NodeConfig.load(state_dir).name
        with Client() as fleet:
            rec = fleet.set_node(
                name,
                overcommit=overcommit,
                reserve=reserve,
                monthly_cost=monthly_cost,
                currency=currency,
            )
        emit(rec, as_json, ["name", "state", "monthly_cost", "currency"])
        return
    if overcommit is None and reserve is None:
        raise InvalidInput("give --overcommit RATIO and/or --reserve SIZE")
    with agent() as client:
        info = client.configure_node(overcommit=overcommit, memory_reserve=reserve)
    h = info["headroom"]
    out = {
        "overcommit": info["overcommit"],
        "reserve": info["memory_reserve"],
        "memory_reserve_bytes": h.get("memory_reserve_bytes"),
        "memory_capacity_bytes": h.get("memory_capacity_bytes"),
        "memory_free_bytes": h.get("memory_free_bytes"),
    }
    emit(out, as_json)


@app.command()
def info(as_json: JsonOpt = False) -> None:
    """Capabilities, headroom and KSM profit of the local node."""
    typer.echo(json.dumps(agent().node(), indent=2))


# templates on this node


@template_app.command("create")
def template_create(
    name: str,
    rootfs: Annotated[Path | None, typer.Option(help="Copy this directory.")] = None,
    tar: Annotated[Path | None, typer.Option(help="Unpack this tarball.")] = None,
    debootstrap: Annotated[bool, typer.Option(help="Debian bookworm minbase.")] = False,
    include: Annotated[list[str] | None, typer.Option(help="Extra packages (debootstrap).")] = None,
    demo: Annotated[bool, typer.Option(help="The demo-app web app.")] = False,
    entrypoint: Annotated[str | None, typer.Option(help="Command, as a JSON list.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    port: Annotated[int, typer.Option(help="The tenant's HTTP port.")] = 8080,
    ksm: Annotated[bool, typer.Option(help="Merge memory among this template's tenants.")] = False,
    init: Annotated[
        bool,
        typer.Option(
            help="Run a minimal init (tini) as PID 1 in front of the entrypoint; "
            "--no-init when the entrypoint is an init itself."
        ),
    ] = True,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    memory_request: RequestOpt = None,
    pids: PidsOpt = None,
    disk: DiskOpt = None,
    io_mbps: IoMbpsOpt = None,
    iops: IopsOpt = None,
    firewall_json: Annotated[
        str | None, typer.Option("--firewall", help="Firewall policy as JSON.")
    ] = None,
    sleep_after: Annotated[
        int | None,
        typer.Option(help="Tenants sleep after this many seconds without a request (off)."),
    ] = None,
    sleep_mode: Annotated[
        str | None,
        typer.Option(help="How idle tenants sleep: stopped (default) or frozen (instant wake)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a template on this node, or its next version when NAME exists.

    A node that has joined a control plane reports it there, and the control plane
    sends it to every other node.
    """
    sources = [s for s in (rootfs, tar, debootstrap or None, demo or None) if s]
    if len(sources) != 1:
        raise InvalidInput("give exactly one of --rootfs DIR, --tar FILE, --debootstrap, --demo")
    source: dict[str, Any]
    args: list[str] | None = None
    if rootfs:
        source = {"rootfs": str(rootfs.resolve())}
    elif tar:
        source = {"tar": str(tar.resolve())}
    elif debootstrap:
        source = {"debootstrap": {"suite": "bookworm", "include": include or []}}
    else:
        from hoody.agent.templates import DEMO_ARGS

        source, args = {"demo": True}, DEMO_ARGS
    if entrypoint:
        try:
            args = json.loads(entrypoint)
        except ValueError as exc:
            raise InvalidInput('--entrypoint must be a JSON list like ["/app/run"]') from exc
    with status(f"building template {name}…", as_json):
        rec = agent().create_template(
            name,
            source,
            args=args,
            env=key_values(env, "env") or None,
            port=port,
            ksm=ksm or None,
            init=None if init else False,
            limits=limits(cpu, memory, pids, disk, memory_request, io_mbps, iops),
            firewall=firewall(firewall_json),
            sleep={
                k: v
                for k, v in (("idle_seconds", sleep_after), ("mode", sleep_mode))
                if v is not None
            }
            or None,
        )
    emit(rec, as_json, ["name", "version", "args", "port", "ksm", "sleep"])


@template_app.command("ls")
def template_ls(as_json: JsonOpt = False) -> None:
    """List the template versions on this node."""
    emit(agent().templates(), as_json, ["name", "version", "args", "port", "ksm", "limits"])


@template_app.command("rm")
def template_rm(
    name: str,
    version: Annotated[int | None, typer.Option(help="Only this version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a template from this node (all versions, or one); refused while in use."""
    emit(agent().delete_template(name, version), as_json)


# tenants on this node


@app.command()
def copy(
    template: str,
    name: Annotated[str | None, typer.Option(help="Tenant id (DNS label).")] = None,
    version: Annotated[int | None, typer.Option(help="Template version.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    mode: Annotated[str | None, typer.Option(help="Storage: overlay or snapshot.")] = None,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    memory_request: RequestOpt = None,
    pids: PidsOpt = None,
    disk: DiskOpt = None,
    io_mbps: IoMbpsOpt = None,
    iops: IopsOpt = None,
    firewall_json: Annotated[
        str | None, typer.Option("--firewall", help="Firewall policy as JSON.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a tenant from TEMPLATE on this node and start it (no control plane)."""
    with status(f"copying {template}…", as_json):
        spec = tenant_spec(
            name=name,
            version=version,
            env=key_values(env, "env") or None,
            limits=limits(cpu, memory, pids, disk, memory_request, io_mbps, iops),
            firewall=firewall(firewall_json),
        )
        rec = agent().copy(template, spec, mode=mode)
    emit(rec, as_json, TENANT_COLUMNS)


@app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """List the tenants on this node."""
    emit(agent().tenants(), as_json, TENANT_COLUMNS)


@app.command()
def show(cid: str, as_json: JsonOpt = False) -> None:
    """Show one tenant of this node, with its disk and cgroup usage."""
    emit(agent().tenant(cid), as_json)


@app.command()
def start(cid: str, as_json: JsonOpt = False) -> None:
    """Start a stopped tenant."""
    emit(agent().action(cid, "start"), as_json, TENANT_COLUMNS)


@app.command()
def stop(cid: str, as_json: JsonOpt = False) -> None:
    """Stop a tenant; its files and address stay."""
    emit(agent().action(cid, "stop"), as_json, TENANT_COLUMNS)


@app.command()
def sleep(
    cid: str,
    mode: Annotated[str | None, typer.Option(help="stopped or frozen; default: its own.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Put a tenant of this node to sleep (stopped: memory freed; frozen: memory kept)."""
    emit(agent().sleep(cid, mode), as_json, TENANT_COLUMNS)


@app.command()
def wake(cid: str, as_json: JsonOpt = False) -> None:
    """Wake a sleeping tenant of this node."""
    emit(agent().wake(cid), as_json, TENANT_COLUMNS)


@app.command()
def restart(cid: str, as_json: JsonOpt = False) -> None:
    """Restart a tenant."""
    emit(agent().action(cid, "restart"), as_json, TENANT_COLUMNS)


@app.command("rm")
def rm(cid: str, as_json: JsonOpt = False) -> None:
    """Delete a tenant of this node and everything it had. Deleting twice is harmless."""
    emit(agent().delete(cid), as_json)


@app.command()
def snapshot(
    cid: str,
    template: Annotated[str | None, typer.Option(help="Template name (default: its own).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a new template version on this node from a tenant's files."""
    body = {"template": template} if template else {}
    emit(agent().action(cid, "snapshot", body), as_json, ["name", "version"])


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(ctx: typer.Context, cid: str, as_json: JsonOpt = False) -> None:
    """Run a command inside a tenant: hoody node exec CID -- CMD [ARGS...]."""
    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    result = agent().exec(cid, argv)
    if as_json:
        emit(result, True)
    else:
        sys.stdout.write(result["stdout"])
        sys.stderr.write(result["stderr"])
    raise typer.Exit(result["exit_code"])


@app.command()
def logs(
    cid: str,
    tail: Annotated[int, typer.Option(help="Lines from the end.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Print a tenant's stdout/stderr log."""
    text = agent().logs(cid, tail)
    if as_json:
        emit({"id": cid, "log": text}, True)
    else:
        sys.stdout.write(text)
