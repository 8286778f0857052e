"""A throwaway node with its own pool, bridge, subnet, nft table and cgroup parent.

Benchmarks and integration tests run against one so they never touch the operator's
node or each other, and leave nothing behind: on exit every tenant, template, mount,
loop device, link, netns, nft table and cgroup it made is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from hoody import proc, services
from hoody.agent.api import create_app
from hoody.agent.client import AgentClient
from hoody.agent.config import NodeConfig
from hoody.agent.engine import Node
from hoody.agent.ids import (
    DEFAULT_ID_BASE,
    DEFAULT_ID_SLOTS,
    IDS_PER_TENANT,
    OWNER_BLOCK,
    IdArea,
)
from hoody.agent.linux import (
    build_node,
    destroy_node,
    init_node,
    release_run_dir,
    remove_cgroup_parent,
)
from hoody.agent.storage.pool import destroy_pool
from hoody.agent.templates import DEMO_ARGS, DEMO_NAME, demo_source
from hoody.errors import HoodyError
from hoody.keepalive import SERVER_KEEP_ALIVE

__all__ = [
    "ScratchNode",
    "agent_process",
    "free_port",
    "pids_naming",
    "scratch_config",
    "scratch_id_area",
    "scratch_node",
    "serve_in_thread",
    "sweep",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
SCRATCH_SLOTS = 256  # tenants per scratch node (bench density --count 200 fits)
_SCRATCH_IDS_FROM = 1 << 24  # scratch areas lie below a real node's default area
# Benchmarks with more tenants (density --count 1000, sleep --registered 2000) get an
# area of this size, above a real node's default area and below 2^31: room for 4.
SCRATCH_BIG_SLOTS = 2048
_BIG_IDS_FROM = DEFAULT_ID_BASE + OWNER_BLOCK + DEFAULT_ID_SLOTS * IDS_PER_TENANT
_BIG_IDS_TO = 2**31 - 1
_LOCKS = Path("/run/lock")
_SCRATCH_ROOT = Path("/var/tmp")
# Held (flock) by the process a scratch node belongs to for as long as it lives: a
# folder whose lock is free was left by a process killed before its cleanup ran.
_OWNER_LOCK = "owner.lock"


@dataclass
class ScratchNode:
    node: Node
    client: AgentClient
    url: str
    token: str

    def demo_template(self, **config: Any) -> dict[str, Any]:
        """Create the demo-app template on this node (debootstrap is cached)."""
        rec = self.node.create_template(DEMO_NAME, demo_source(), args=DEMO_ARGS, **config)
        return rec.to_json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Subnets handed to scratch nodes of this process that are still alive: a node whose
# bridge lives in its own netns (a netns fleet) has no route on the host until the
# fleet adds one, so the route check alone let two nodes of one fleet draw the same /16.
_held_subnets: set[str] = set()
_held_lock = threading.RLock()


def _routed() -> list[ipaddress.IPv4Network]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [
            ipaddress.IPv4Network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
            for r in ipr.get_routes(family=socket.AF_INET)
            if r.get_attr("RTA_DST")
        ]


def _free_subnet() -> str:
    """A /16 in 10.128-253.x.x that no route on this host uses and no live scratch node
    of this process holds."""
    with _held_lock:
        used = _routed() + [ipaddress.IPv4Network(n) for n in _held_subnets]
        for _ in range(200):
            net = ipaddress.IPv4Network(f"10.{128 + secrets.randbelow(126)}.0.0/16")
            if not any(net.overlaps(u) for u in used):
                return str(net)
    raise RuntimeError("no free 10.x.0.0/16 subnet for a scratch node")


@contextlib.contextmanager
def held_subnet() -> Iterator[str]:
    """`_free_subnet`, held from this process's other scratch nodes until the block ends."""
    with _held_lock:
        subnet = _free_subnet()
        _held_subnets.add(subnet)
    try:
        yield subnet
    finally:
        with _held_lock:
            _held_subnets.discard(subnet)


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1:`port` in a thread; yield its URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_keep_alive=SERVER_KEEP_ALIVE,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("scratch agent did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def scratch_id_area(slots: int = SCRATCH_SLOTS) -> Iterator[IdArea]:
    """A block of host ids no other scratch node on this host uses while the block
    runs (a lock file per area under /run/lock, held with flock, so a crashed holder
    frees it), below the default area of a real node.

    Two nodes with one area would give two tenants the same owner and range, sharing
    the very counters this isolation is about: tests attacking them would flake.
    """
    big = slots > SCRATCH_SLOTS
    if big:
        if slots > SCRATCH_BIG_SLOTS:
            raise RuntimeError(f"a scratch node holds at most {SCRATCH_BIG_SLOTS} tenants")
        slots = SCRATCH_BIG_SLOTS  # one size, so big areas never overlap each other
    start, stop = (_BIG_IDS_FROM, _BIG_IDS_TO) if big else (_SCRATCH_IDS_FROM, DEFAULT_ID_BASE)
    size = OWNER_BLOCK + slots * IDS_PER_TENANT
    count = (stop - start) // size
    for index in random.sample(range(count), count):
        fd = os.open(_LOCKS / f"hoody-ids-{size}-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield IdArea(base=start + index * size, slots=slots)
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"all {count} scratch id areas of this host are in use")


@contextlib.contextmanager
def scratch_config(
    prefix: str = "hs",
    storage_mode: str = "overlay",
    pool_size: str = "6G",
    settings: dict[str, Any] | None = None,
    *,
    ports_per_bridge: int = 512,
    id_slots: int = SCRATCH_SLOTS,
) -> Iterator[NodeConfig]:
    """An initialised node config (pool, dirs, an id area of its own) under /var/tmp;
    everything removed on exit. `settings` are other NodeConfig fields (e.g. the
    memory pressure thresholds)."""
    name = prefix[:2] + secrets.token_hex(2)
    with scratch_id_area(id_slots) as area, held_subnet() as subnet:
        tmp = Path(tempfile.mkdtemp(prefix=f"hoody-{name}-", dir=_SCRATCH_ROOT))
        tmp.chmod(0o711)  # tenant roots (each its own host uid) walk down to their rootfs
        owner = os.open(tmp / _OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(owner, fcntl.LOCK_EX)  # not inherited: the fd is close-on-exec
        try:
            config = NodeConfig(
                name=name,
                state_dir=tmp / "state",
                run_dir=tmp / "run",
                pool=tmp / "pool",
                pool_image=tmp / "pool.img",
                pool_size=pool_size,
                subnet=subnet,
                storage_mode=storage_mode,
                listen=f"127.0.0.1:{free_port()}",
                id_base=area.base,
                id_slots=area.slots,
                ports_per_bridge=ports_per_bridge,
                **(settings or {}),
            )
        except BaseException:  # e.g. a setting NodeConfig refuses: nothing made yet
            os.close(owner)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            init_node(config)
            yield config
        finally:
            try:
                _remove(config, tmp)
            finally:
                os.close(owner)


def _remove(config: NodeConfig, tmp: Path) -> None:
    """Everything a scratch node made: tenants, templates, network, firewall, pool,
    cgroups and its folder."""
    try:
        if (config.state_dir / "node.json").exists():  # not yet removed by the test
            destroy_node(config)
    finally:
        destroy_pool(config.pool, config.pool_image)
        remove_cgroup_parent(config.cgroup_parent)
        release_run_dir(config.node_run_dir)
        shutil.rmtree(tmp, ignore_errors=True)


# How long a scratch folder may be locked by no one before it has its config: its
# owner takes the lock right after making the folder.
UNBORN_GRACE = 60.0


def sweep(root: Path = _SCRATCH_ROOT) -> list[str]:
    """Remove the scratch nodes whose process is gone (a test or benchmark killed
    before its cleanup ran); returns their names. Their own processes still running
    (an agent, lxcfs, a `runc exec`) are killed first. A live scratch node holds its
    folder's lock and is left alone, so this is safe beside running tests."""
    swept = []
    for tmp in sorted(root.glob("hoody-*")):
        try:
            fd = os.open(tmp / _OWNER_LOCK, os.O_RDWR)
        except OSError:
            continue  # not a scratch node, or one being made right now
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process lives
            state = tmp / "state"
            if not (state / "node.json").exists():
                # Being made (its owner locks the folder right after making it), or
                # killed while its pool was made: `init_node` saves the config last.
                # A lock left free for a while is no one's.
                if time.time() - (tmp / _OWNER_LOCK).stat().st_mtime > UNBORN_GRACE:
                    _kill_processes_under(tmp)
                    destroy_pool(tmp / "pool", tmp / "pool.img")
                    shutil.rmtree(tmp, ignore_errors=True)
                    swept.append(tmp.name.split("-")[1])
                continue
            config = NodeConfig.load(state)
            _kill_processes_under(tmp)
            _remove(config, tmp)
            swept.append(config.name)
        finally:
            os.close(fd)
    return swept


def _kill_processes_under(tmp: Path) -> None:
    """SIGKILL every process whose command line names `tmp` (an orphaned agent,
    lxcfs, `runc exec`), and wait until they are gone."""
    pids = []
    for pid in pids_naming(tmp):
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)
            pids.append(pid)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.02)


def pids_naming(path: Path) -> list[int]:
    """Every process but this one whose command line names `path`."""
    needle = str(path).encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return pids


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, dead but not reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def agent_process(config: NodeConfig) -> Iterator[str]:
    """Run `hoody node serve` for `config` as its own process, as in production; yield
    its URL. The agent gets SIGTERM on exit (SIGKILL if it lingers)."""
    argv = [sys.executable, "-c", "from hoody.cli.main import main; main()"]
    argv += ["node", "serve", "--state-dir", str(config.state_dir)]
    url = f"http://{config.listen}"
    token = config.token_path.read_text().strip()
    child = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        with AgentClient(url, token) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.node()
                    break
                except (OSError, HoodyError, httpx.TransportError):
                    if child.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"agent for {config.name} did not start") from None
                    time.sleep(0.05)
        yield url
    finally:
        proc.stop(child)
        services.remove_if_empty()  # the agent joined it (`hoody node serve`)


@contextlib.contextmanager
def scratch_node(
    prefix: str = "hs",
    storage_mode: str = "overlay",
    pool_size: str = "6G",
    *,
    process: bool = False,
    ports_per_bridge: int = 512,
    settings: dict[str, Any] | None = None,
    id_slots: int = SCRATCH_SLOTS,
) -> Iterator[ScratchNode]:
    """A real node, served over HTTP on loopback, removed entirely on exit.

    `process`: run the agent as its own process (benchmarks), not a thread of this one;
    `ScratchNode.node` then only serves to make templates and read state.
    """
    with scratch_config(
        prefix,
        storage_mode,
        pool_size,
        settings,
        ports_per_bridge=ports_per_bridge,
        id_slots=id_slots,
    ) as config:
        token = config.token_path.read_text().strip()
        node = build_node(config)
        try:
            port = int(config.listen.rpartition(":")[2])
            serving = (
                agent_process(config) if process else serve_in_thread(create_app(node, token), port)
            )
            with serving as url:
                client = AgentClient(url, token)
                try:
                    yield ScratchNode(node, client, url, token)
                finally:
                    client.close()
        finally:
            node.store.close()
