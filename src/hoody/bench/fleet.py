"""A throwaway fleet on this machine: a control plane process and N node agent
processes joined to it, each a scratch node (own pool, bridge, subnet, nft table).

With `netns=True` every agent runs in a network namespace of its own, so each node has
its own address (10.x.y.11, .12, … on a bridge of the fleet's own, the control plane
at 10.x.y.1), and its tenants' bridge and nft table live in that namespace, as on
separate servers. Everything is removed on exit: processes, tenants, templates,
mounts, loop devices, namespaces, links and nft tables.

    with scratch_fleet(3, netns=True) as fleet:
        fleet.admin.nodes()               # hoody.Client with the admin token
        fleet.nodes[1].kill()             # SIGKILL its agent; .start() brings it back
        fleet.kill_control()              # SIGKILL the control plane; .start_control()
        fleet.nodes[0].run(fn)            # fn() inside node 0's network namespace
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hoody import services, syscalls
from hoody.agent.client import AgentClient
from hoody.agent.config import NodeConfig
from hoody.bench.scratch import SCRATCH_SLOTS, free_port, scratch_config
from hoody.control import auth
from hoody.control.client import Client
from hoody.errors import HoodyError, HostError
from hoody.proc import run

__all__ = ["FleetNode", "ScratchFleet", "in_netns", "scratch_fleet"]

T = TypeVar("T")
_CLI = [sys.executable, "-c", "from hoody.cli.main import main; main()"]


def in_netns(netns: Path | None, fn: Callable[[], T]) -> T:
    """fn() on a thread inside the network namespace at `netns` (here when None).

    Threads and processes started by fn inherit the namespace.
    """
    if netns is None:
        return fn()
    return syscalls.in_netns(netns, fn)


def _wait(check: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = ""
            if log is not None and log.exists():
                tail = "; log: " + " | ".join(log.read_text(errors="replace").splitlines()[-5:])
            raise HostError(f"{what} within {timeout:.0f} s{tail}")
        time.sleep(0.05)


def _stop(child: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if child is None or child.poll() is not None:
        return
    child.send_signal(sig)
    try:
        child.wait(timeout=20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


@dataclass
class FleetNode:
    """One node of a scratch fleet: its config, address and agent process."""

    config: NodeConfig
    address: str  # HOST:PORT the agent listens on (and the control plane calls)
    netns: Path | None
    join_url: str
    join_token: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def token(self) -> str:
        return self.config.token_path.read_text().strip()

    @property
    def log(self) -> Path:
        return self.config.state_dir / "agent.log"

    def client(self) -> AgentClient:
        return AgentClient(self.url, self.token, timeout=1800)

    def start(self) -> None:
        """Start its agent (`hoody node serve --join`) and wait until it answers."""
        argv = [*_CLI, "node", "serve", "--state-dir", str(self.config.state_dir)]
        argv += ["--listen", self.address, "--advertise", self.url]
        argv += ["--join", self.join_url, "--token", self.join_token]
        if self.netns is not None:
            # nsenter switches only the network namespace: mounts stay the host's.
            argv = ["nsenter", f"--net={self.netns}", "--", *argv]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise HostError(f"agent of {self.name} exited; see {self.log}")
            with self.client() as client:
                try:
                    client.node()
                    return True
                except HoodyError:
                    return False

        _wait(answers, f"agent of {self.name} did not answer", 120, self.log)

    def kill(self) -> None:
        """SIGKILL the agent, as a crash would; its tenants keep running."""
        _stop(self.process, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.process)

    def run(self, fn: Callable[[], T]) -> T:
        """fn() inside this node's network namespace (where its tenants are reachable)."""
        return in_netns(self.netns, fn)


@dataclass
class ScratchFleet:
    url: str
    admin_token: str
    admin: Client
    nodes: list[FleetNode]
    control: subprocess.Popen[bytes]
    control_dir: Path
    extra: list[Any] = field(default_factory=list)
    control_argv: list[str] = field(default_factory=list)

    def kill_control(self) -> None:
        """SIGKILL the control plane, as a crash would."""
        _stop(self.control, signal.SIGKILL)

    def start_control(self) -> None:
        """Start the control plane again (same database, token and port); wait for it."""
        self.control = _start_control(self.control_argv, self.admin_token, self.control_dir)
        _wait_serving(self.control, self.admin, self.control_dir / "server.log")

    def node(self, name: str) -> FleetNode:
        return next(n for n in self.nodes if n.name == name)

    def wait_nodes(self, state: str, names: list[str] | None = None, timeout: float = 30) -> None:
        """Until every node in `names` (default: all) has `state` in the control plane."""
        want = set(names or [n.name for n in self.nodes])

        def check() -> bool:
            seen = {n["name"]: n["state"] for n in self.admin.nodes()}
            return all(seen.get(name) == state for name in want)

        _wait(check, f"nodes {sorted(want)} were not {state}", timeout)


def _free_net() -> ipaddress.IPv4Network:
    """A /24 in 10.254.x.0 that no route on this host uses."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        used = [
            ipaddress.IPv4Network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
            for r in ipr.get_routes(family=socket.AF_INET)
            if r.get_attr("RTA_DST")
        ]
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.254.{secrets.randbelow(250) + 1}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise HostError("no free 10.254.x.0/24 for a scratch fleet network")


@contextlib.contextmanager
def _fleet_network(names: list[str]) -> Iterator[tuple[str, dict[str, tuple[Path, str]]]]:
    """A bridge with the control plane's address and one netns per node on it.

    Yields (control plane address, {node name: (netns path, node address)}).
    """
    net = _free_net()
    hosts = list(net.hosts())
    bridge = f"hf{secrets.token_hex(3)}"
    prefix = net.prefixlen
    made: list[str] = []
    try:
        run(["ip", "link", "add", bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{hosts[0]}/{prefix}", "dev", bridge])
        run(["ip", "link", "set", bridge, "up"])
        out: dict[str, tuple[Path, str]] = {}
        for i, name in enumerate(names):
            ns = f"hoodyfleet-{bridge}-{name}"
            run(["ip", "netns", "add", ns])
            made.append(ns)
            host_end = f"{bridge}{i}"
            run(
                ["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns]
            )
            run(["ip", "link", "set", host_end, "master", bridge, "up"])
            address = str(hosts[10 + i])
            run(["ip", "-n", ns, "addr", "add", f"{address}/{prefix}", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            out[name] = (Path("/run/netns") / ns, address)
        yield str(hosts[0]), out
    finally:
        for ns in made:
            run(["ip", "netns", "delete", ns], check=False)
        run(["ip", "link", "delete", bridge], check=False)


@contextlib.contextmanager
def scratch_fleet(
    count: int = 3,
    *,
    netns: bool = False,
    pool_size: str = "8G",  # sparse; placement reserves each copy's disk limit (1 GiB)
    storage_mode: str = "overlay",
    heartbeat_timeout: float = 8.0,
    database_url: str | None = None,
    history_every: float = 2.0,
    id_slots: int = SCRATCH_SLOTS,
    server_args: tuple[str, ...] = (),
) -> Iterator[ScratchFleet]:
    """A control plane process and `count` joined node agent processes; see the module."""
    if count < 1:
        raise HostError("a fleet needs at least one node")
    with contextlib.ExitStack() as stack:
        # Last of all: the control plane, the agents and a bench's router joined
        # `hoody-services`; once every one has stopped, nothing of the fleet stays.
        stack.callback(services.remove_if_empty)
        configs = [
            stack.enter_context(
                scratch_config(f"f{i + 1}", storage_mode, pool_size, id_slots=id_slots)
            )
            for i in range(count)
        ]
        names = [c.name for c in configs]
        if netns:
            host, spaces = stack.enter_context(_fleet_network(names))
            for i, config in enumerate(configs):
                # As separate servers: this host (the control plane's, and a router's)
                # reaches each node's tenant subnet through that node, and the node's
                # firewall admits it as a router. The routes go with the fleet bridge.
                run(["ip", "route", "add", config.subnet, "via", spaces[config.name][1]])
                configs[i] = config.with_(routers=(f"{host}/32",))
                configs[i].save()
        else:
            host, spaces = "127.0.0.1", {}
        control_dir = Path(tempfile.mkdtemp(prefix="hoody-control-", dir="/var/tmp"))
        stack.callback(shutil.rmtree, control_dir, True)
        admin_token, _ = auth.mint_token()
        url = f"http://{host}:{free_port()}"
        argv = [*_CLI, "server", "--listen", url.removeprefix("http://")]
        argv += ["--state-dir", str(control_dir), "--heartbeat-timeout", str(heartbeat_timeout)]
        argv += ["--history-every", str(history_every)]
        argv += list(server_args)
        if database_url:
            argv += ["--database-url", database_url]
        control = _start_control(argv, admin_token, control_dir)
        processes = [control]
        # Whichever control plane process is current when the fleet ends.
        stack.callback(lambda: _stop(processes[-1]))
        admin = stack.enter_context(Client(url, admin_token, timeout=600))
        _wait_serving(control, admin, control_dir / "server.log")
        join = admin.create_token("join", description="scratch fleet")["token"]
        nodes = []
        for config in configs:
            ns, address = spaces.get(config.name, (None, "127.0.0.1"))
            port = 7070 if ns is not None else free_port()
            node = FleetNode(config, f"{address}:{port}", ns, url, join)
            if ns is not None:
                # After its agent stops and before the namespace goes: the node's
                # tenants, bridge and nft table live in it, so they go from inside it.
                stack.callback(_teardown_in, config, ns)
            stack.callback(node.stop)
            nodes.append(node)
        for node in nodes:
            node.start()
        fleet = ScratchFleet(url, admin_token, admin, nodes, control, control_dir, [], argv)
        fleet.wait_nodes("up")
        try:
            yield fleet
        finally:
            processes.append(fleet.control)


def _start_control(argv: list[str], admin_token: str, control_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HOODY_ADMIN_TOKEN": admin_token}
    env.pop("HOODY_DATABASE_URL", None)
    with (control_dir / "server.log").open("ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True
        )


def _wait_serving(control: subprocess.Popen[bytes], admin: Client, log: Path) -> None:
    def serving() -> bool:
        if control.poll() is not None:
            raise HostError(f"the control plane exited; see {log}")
        try:
            admin.whoami()
            return True
        except HoodyError:
            return False

    _wait(serving, "the control plane did not answer", 60, log)


def _teardown_in(config: NodeConfig, netns: Path) -> None:
    from hoody.agent.linux import build_node

    def teardown() -> None:
        node = build_node(config)
        try:
            node.teardown_all()
        finally:
            node.store.close()

    in_netns(netns, teardown)
