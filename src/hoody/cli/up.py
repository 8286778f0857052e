"""`hoody up`: the single-server default. One command, one process: the control plane
(embedded SQLite), this server as a node joined to it, and (once it exists) the router.

    hoody up            run in the foreground until Ctrl-C
    hoody up --detach   run in the background (log: <state-dir>/up.log), return when ready
    hoody down          stop the background one; tenants keep running

State lives under one directory (default /var/lib/hoody): the node's pool, records and
agent token as `hoody node init` makes them, and control/ for the control plane's
database and admin token. The CLI is logged in as admin with project `default`, so
`hoody copy demo-app` and `hoody ls` work right away.

Each part is a `Component` started by a function in `COMPONENTS`, in order; a part
that already runs (say an agent started by `hoody node serve`) is used, not started
twice. `make demo` uses the same machinery through `ensure_up`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

from hoody import services
from hoody.agent.client import AgentClient
from hoody.agent.config import DEFAULT_STATE_DIR, NodeConfig
from hoody.cli.common import JsonOpt, console
from hoody.control.client import Client, save_config
from hoody.errors import HoodyError, HostError, InvalidInput
from hoody.keepalive import SERVER_KEEP_ALIVE
from hoody.private import private_dir

if TYPE_CHECKING:
    from hoody.agent.engine import Node
    from hoody.control.service import Fleet

__all__ = ["COMPONENTS", "Component", "Stack", "UpInfo", "ensure_up", "register", "run_up"]

log = logging.getLogger(__name__)

DEFAULT_API = "127.0.0.1:7080"
DEFAULT_ROUTER = "127.0.0.1:8000"
DEFAULT_PROJECT = "default"


@dataclass
class Component:
    """A part `hoody up` runs: its name, where it answers, and how to stop it."""

    name: str
    url: str
    stop: Callable[[], None] = lambda: None


@dataclass
class Stack:
    """What the components of one `hoody up` share while they start."""

    state_dir: Path
    api_listen: str
    config: NodeConfig
    admin_token: str = ""
    fleet: Fleet | None = None  # when the control plane runs in this process
    node: Node | None = None  # when the agent runs in this process
    running: list[Component] = field(default_factory=list)
    router_listen: str = DEFAULT_ROUTER
    scripts_dir: Path | None = None  # served as Exec scripts, watched (--scripts)

    @property
    def router_url(self) -> str:
        """Where tenants answer: http://<cid>.localhost:<port>/ (no DNS needed)."""
        return f"http://localhost:{self.router_listen.rpartition(':')[2]}"

    @property
    def control_dir(self) -> Path:
        return self.state_dir / "control"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_listen}"

    @property
    def agent_url(self) -> str:
        return f"http://{self.config.listen}"

    @property
    def agent_token(self) -> str:
        return self.config.token_path.read_text().strip()


@dataclass(frozen=True)
class UpInfo:
    """A running `hoody up`, as `ensure_up` finds or starts it."""

    api_url: str
    agent_url: str
    node: str
    admin_token: str
    project: int
    log: Path
    started: bool
    router_url: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "router": self.router_url,
            "api": f"{self.api_url}/api/v1",
            "docs": f"{self.api_url}/api/v1/docs",
            "dashboard": f"{self.api_url}/",
            "agent": self.agent_url,
            "node": self.node,
            "project": self.project,
            "log": str(self.log),
            "started": self.started,
        }


# -- the components, in start order ------------------------------------------------


def _serve(app: Any, listen: str, name: str) -> Component:
    """Serve an ASGI app with uvicorn on a thread of this process."""
    import uvicorn

    host, _, port = listen.rpartition(":")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host or "127.0.0.1",
            port=int(port),
            log_level="warning",
            timeout_keep_alive=SERVER_KEEP_ALIVE,
            # Dashboard browsers hold event streams open: end them after 2 s on exit.
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # the agent reconciles before it serves
    while not server.started:
        if not thread.is_alive():
            raise HostError(f"{name} could not serve on {listen}; is the port taken?")
        if time.monotonic() > deadline:
            raise HostError(f"{name} did not start within 120 s")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return Component(name, f"http://{listen}", stop)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def control_plane(stack: Stack) -> Component | None:
    """The control plane on its SQLite database, or the one already serving."""
    admin_file = stack.control_dir / "admin.token"
    if _answers(f"{stack.api_url}/api/v1/openapi.json"):
        stack.admin_token = _admin_token(admin_file)
        return None
    from hoody.cli.fleet import serve_control_plane
    from hoody.control.api import create_app

    fleet, minted = serve_control_plane(
        stack.control_dir, router_url=stack.router_url, scripts_dir=stack.scripts_dir
    )
    stack.fleet = fleet
    stack.admin_token = minted or _admin_token(admin_file)
    component = _serve(create_app(fleet), stack.api_listen, "control plane")
    serving = component.stop

    def stop() -> None:
        serving()
        fleet.close()
        fleet.store.close()

    component.stop = stop
    return component


def _admin_token(path: Path) -> str:
    token = os.environ.get("HOODY_ADMIN_TOKEN")
    if token:
        return token
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise InvalidInput(
            f"the control plane's admin token is not in {path}; set HOODY_ADMIN_TOKEN"
        ) from None


def node_agent(stack: Stack) -> Component | None:
    """This server's node agent, or the one already serving (`hoody node serve`)."""
    with (
        AgentClient(stack.agent_url, stack.agent_token, timeout=2) as client,
        contextlib.suppress(HoodyError),
    ):
        client.node()
        return None
    from hoody.agent.api import create_app
    from hoody.agent.linux import build_node

    node = build_node(stack.config)
    stack.node = node
    return _serve(create_app(node, stack.agent_token), stack.config.listen, "node agent")


def heartbeat(stack: Stack) -> Component | None:
    """The node joined to the control plane, reporting headroom every 2 s."""
    from hoody.control.heartbeat import start_heartbeat

    get_headroom: Callable[[], dict[str, Any]] | None = None
    get_templates: Callable[[], list[dict[str, Any]]] | None = None
    get_usage: Callable[[], dict[str, list[int]]] | None = None
    get_sleeping: Callable[[], dict[str, dict[str, Any]]] | None = None
    local = stack.node
    if local is not None:  # in this process: ask it directly, not over HTTP
        from hoody.agent.node_info import headroom, tenant_usage

        def get_headroom() -> dict[str, Any]:
            return headroom(local)

        def get_templates() -> list[dict[str, Any]]:
            return [t.to_json() for t in local.store.templates()]

        def get_usage() -> dict[str, list[int]]:
            return tenant_usage(local)

        get_sleeping = local.sleepers

    stop = start_heartbeat(
        stack.api_url,
        stack.admin_token,
        stack.config.name,
        stack.agent_url,
        stack.agent_token,
        get_headroom,
        get_templates=get_templates,
        get_usage=get_usage,
        get_sleeping=get_sleeping,
    )
    return Component("heartbeat", stack.api_url, stop.set)


def router(stack: Stack) -> Component | None:
    """The tenant router on an event loop thread: http://<cid>.localhost:8000/."""
    if _answers(f"http://{stack.router_listen}/"):
        return None  # one is serving already
    from hoody import router as tenant_router

    stop = tenant_router.start_in_thread(
        stack.api_url, _router_token(stack), stack.router_listen, "localhost"
    )
    return Component("router", stack.router_url, stop)


def _router_token(stack: Stack) -> str:
    """The router's own token (route table and claims only), kept in the control
    directory (0600) and minted with the admin token on first use or when revoked."""
    path = stack.control_dir / "router.token"
    if path.exists():
        token = path.read_text().strip()
        try:
            with Client(stack.api_url, token, timeout=5) as client:
                if client.whoami()["scope"] == "router":
                    return token
        except HoodyError:
            pass  # revoked or from another control plane: mint a new one
    with Client(stack.api_url, stack.admin_token, timeout=5) as client:
        token = str(client.create_token("router", description="hoody up router")["token"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


COMPONENTS: list[Callable[[Stack], Component | None]] = [
    control_plane,
    node_agent,
    heartbeat,
    router,
]
"""What `hoody up` starts, in order; each returns None when there is nothing to start."""


# -- running it --------------------------------------------------------------------


def _node_config(state_dir: Path, size: str) -> NodeConfig:
    """The node's saved config; `hoody node init`'s defaults on first use."""
    if (state_dir / "node.json").exists():
        return NodeConfig.load(state_dir)
    from hoody.agent.linux import init_node

    config = NodeConfig(
        state_dir=state_dir,
        pool=state_dir / "pool",
        pool_image=state_dir / "pool.img",
        pool_size=size,
    )
    console.print(f"[bold]creating the node[/] (btrfs loop-file pool of {size} in {state_dir})")
    init_node(config)
    return config


def _login(stack: Stack) -> int:
    """Make project `default` and log the CLI in as admin with it; its id."""
    with Client(stack.api_url, stack.admin_token) as client:
        project = int(client.ensure_project(DEFAULT_PROJECT)["id"])
    save_config(stack.api_url, stack.admin_token, project)
    return project


def start(
    state_dir: Path,
    api_listen: str,
    size: str,
    router_listen: str = DEFAULT_ROUTER,
    scripts_dir: Path | None = None,
) -> Stack:
    """Start every component not already running; on failure stop what was started."""
    stack = Stack(state_dir, api_listen, _node_config(state_dir, size))
    stack.router_listen = router_listen
    stack.scripts_dir = scripts_dir
    try:
        for make in COMPONENTS:
            component = make(stack)
            if component is not None:
                stack.running.append(component)
    except BaseException:
        stop(stack)
        raise
    return stack


def stop(stack: Stack) -> None:
    """Stop the components this process started, newest first."""
    for component in reversed(stack.running):
        try:
            component.stop()
        except Exception:
            log.exception("stopping %s failed", component.name)
    stack.running.clear()
    if stack.node is not None:
        stack.node.store.close()


def _wait_joined(api_url: str, admin_token: str, node: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with Client(api_url, admin_token, timeout=5) as client:
        while True:
            with contextlib.suppress(HoodyError):
                if any(n["name"] == node and n["state"] == "up" for n in client.nodes()):
                    return
            if time.monotonic() > deadline:
                raise HostError(f"node {node} did not join {api_url} within {timeout:.0f} s")
            time.sleep(0.2)


def _print(info: UpInfo) -> None:
    console.print("[bold green]hoody is up[/]" + ("" if info.started else " (already running)"))
    console.print(f"  API     {info.api_url}/api/v1   docs: {info.api_url}/api/v1/docs")
    console.print(f"  fleet   {info.api_url}/   (dashboard: sign in with the admin token)")
    console.print(f"  node    {info.node} at {info.agent_url}, joined")
    console.print(
        f"  router  tenants at http://<cid>.localhost:{DEFAULT_ROUTER.rpartition(':')[2]}/"
    )
    console.print(f"  CLI     logged in as admin, project {DEFAULT_PROJECT} ({info.project})")
    console.print(f"  log     {info.log}")


def run_up(
    state_dir: Path,
    api_listen: str,
    size: str,
    as_json: bool,
    router_listen: str = DEFAULT_ROUTER,
    scripts_dir: Path | None = None,
) -> None:
    """Foreground: start, report, serve until SIGINT/SIGTERM, stop."""
    if _is_up(state_dir, f"http://{api_listen}"):
        _report(ensure_up(state_dir, api_listen, size, router_listen, scripts_dir), as_json)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per heartbeat otherwise
    logging.getLogger("alembic").setLevel(logging.WARNING)
    services.join()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    stack = start(state_dir, api_listen, size, router_listen, scripts_dir)
    try:
        _wait_joined(stack.api_url, stack.admin_token, stack.config.name)
        info = UpInfo(
            stack.api_url,
            stack.agent_url,
            stack.config.name,
            stack.admin_token,
            _login(stack),
            Path("/dev/stderr"),  # the foreground logs to the terminal
            True,
            stack.router_url,
        )
        _report(info, as_json)
        done.wait()
    finally:
        stop(stack)


def _report(info: UpInfo, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info.to_json(), indent=2, sort_keys=True), flush=True)
    else:
        _print(info)


def ensure_up(
    state_dir: Path = DEFAULT_STATE_DIR,
    api_listen: str = DEFAULT_API,
    size: str = "20G",
    router_listen: str = DEFAULT_ROUTER,
    scripts_dir: Path | None = None,
) -> UpInfo:
    """A running `hoody up` for `state_dir`: the one already running, else a new one in
    the background (its own session, log in <state_dir>/up.log). Returns once the
    node has joined and the CLI is logged in."""
    private_dir(state_dir)
    logfile = state_dir / "up.log"
    api_url = f"http://{api_listen}"
    started = False
    if not _is_up(state_dir, api_url):
        argv = [sys.executable, "-c", "from hoody.cli.main import main; main()"]
        argv += ["up", "--state-dir", str(state_dir), "--api", api_listen, "--size", size]
        argv += ["--router", router_listen]
        if scripts_dir is not None:
            argv += ["--scripts", str(scripts_dir.resolve())]
        with logfile.open("ab") as out:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        (state_dir / "up.pid").write_text(f"{child.pid}\n")
        deadline = time.monotonic() + 180
        while not _is_up(state_dir, api_url):
            if child.poll() is not None or time.monotonic() > deadline:
                tail = logfile.read_text(errors="replace").strip().splitlines()[-5:]
                raise HostError(
                    f"`hoody up` did not come up; the end of {logfile}:\n  " + "\n  ".join(tail)
                )
            time.sleep(0.2)
        started = True
    config = NodeConfig.load(state_dir)
    admin = _admin_token(state_dir / "control" / "admin.token")
    _wait_joined(api_url, admin, config.name)
    stack = Stack(state_dir, api_listen, config, admin, router_listen=router_listen)
    project = _login(stack)
    return UpInfo(
        api_url, stack.agent_url, config.name, admin, project, logfile, started, stack.router_url
    )


def _is_up(state_dir: Path, api_url: str) -> bool:
    """The control plane answers and this node is up in it."""
    if not (state_dir / "node.json").exists() or not _answers(f"{api_url}/api/v1/openapi.json"):
        return False
    try:
        admin = _admin_token(state_dir / "control" / "admin.token")
        name = NodeConfig.load(state_dir).name
        with Client(api_url, admin, timeout=5) as client:
            return any(n["name"] == name and n["state"] == "up" for n in client.nodes())
    except HoodyError:
        return False


def down(state_dir: Path) -> bool:
    """Stop the background `hoody up` of `state_dir`; False when none was running."""
    pidfile = state_dir / "up.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    if not _is_our_up(pid, state_dir):
        pidfile.unlink(missing_ok=True)  # it ended long ago; the pid may be another's now
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid):
        if time.monotonic() > deadline:
            raise HostError(f"`hoody up` (pid {pid}) did not stop within 30 s; see its log")
        time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    return True


def _is_our_up(pid: int, state_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _alive(pid) and b"up" in argv and os.fsencode(state_dir) in argv


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a child of this process that exited is reaped)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: its parent reaps it
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# -- commands ----------------------------------------------------------------------

StateDirOpt = Annotated[
    Path, typer.Option(help="Where the node and the control plane keep their state.")
]


def up(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    api: Annotated[str, typer.Option(help="HOST:PORT of the control plane.")] = DEFAULT_API,
    router_listen: Annotated[
        str, typer.Option("--router", help="HOST:PORT of the tenant router.")
    ] = DEFAULT_ROUTER,
    size: Annotated[str, typer.Option(help="Size of a new loop-file btrfs pool.")] = "20G",
    scripts: Annotated[
        Path | None,
        typer.Option(
            "--scripts",
            help="A folder of <project>/<name>.ts served at /exec/<project>/<name>; "
            "an edit takes effect on the next request.",
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background; return when ready.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start the control plane (with Exec at /exec/<project>/<name>), this server as a
    node joined to it, and the tenant router, in one process."""
    if scripts is not None and not scripts.is_dir():
        raise InvalidInput(
            f"--scripts {scripts} is not a folder; lay it out as <project>/<name>.ts"
        )
    if detach:
        _report(ensure_up(state_dir, api, size, router_listen, scripts), as_json)
        return
    run_up(state_dir, api, size, as_json, router_listen, scripts)


def down_command(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Then remove the node and everything on it, and the control plane's "
            "state (with --yes).",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Really remove them (--purge).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop a `hoody up --detach`; tenants keep running and are kept by the next `up`.
    With --purge --yes, also remove what `hoody up` made on this host: the node with
    its tenants, templates, network, firewall, cgroups and pool, and the control
    plane's database and tokens."""
    if purge and not yes:
        from hoody.cli.node import node_summary

        what = [node_summary(NodeConfig.load(state_dir))] if _has_node(state_dir) else []
        what.append(f"the control plane's database and tokens in {state_dir / 'control'}")
        raise InvalidInput(
            f"--purge removes {' and '.join(what)}, and nothing of it can be brought back; "
            "run again with --yes to go ahead"
        )
    stopped = down(state_dir)
    out: dict[str, Any] = {"stopped": stopped}
    if purge:
        out["tenants_removed"] = purge_up(state_dir)
    if as_json:
        print(json.dumps(out))
    else:
        console.print("hoody is down" if stopped else "no `hoody up` was running")
        if purge:
            console.print(f"removed the node ({out['tenants_removed']} tenant(s)) and {state_dir}")


def _has_node(state_dir: Path) -> bool:
    return (state_dir / "node.json").exists()


def purge_up(state_dir: Path) -> int:
    """Remove what `hoody up` made in `state_dir` once it is down: the node and everything
    on it, then the control plane's state and `up`'s own files; how many tenants went."""
    from hoody.cli.node import destroy_node_here

    removed = 0
    if _has_node(state_dir):
        removed = destroy_node_here(state_dir, yes=True)
    shutil.rmtree(state_dir / "control", ignore_errors=True)
    for name in ("up.pid", "up.log"):
        (state_dir / name).unlink(missing_ok=True)
    from hoody.exec.gateway import RUN_ROOT

    for folder in (state_dir, RUN_ROOT):  # Exec's, shared by every gateway on the host
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is in it
    services.remove_if_empty()
    return removed


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command("down")(down_command)
