"""The real network driver: a Linux bridge, one netns + veth pair per tenant, via netlink.

Layout for a node network named `hoody` on 10.88.0.0/16:

    host: hoodybr 10.88.0.1/16 (proxy_arp + proxy_arp_pvlan, redirects off)
          └─ hoody<8 hex> (veth, isolated bridge port) ──┐
    /run/netns/hoody-<tid>:  eth0 10.88.x.y/16, lo, default via 10.88.0.1

Isolated ports cannot talk to each other at layer 2; the bridge answers their ARP
with its own address, so tenant-to-tenant packets are routed through the host and the
firewall sees every one of them.

Namespaces are made and entered on short-lived threads (netns is per-thread), so the
agent never forks for netlink work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hoody.agent.network import NetworkConfig
from hoody.errors import HostError
from hoody.syscalls import CLONE_NEWNET, MNT_DETACH, MS_BIND, mount, setns, umount, unshare
from hoody.undo import Undo

__all__ = ["LinuxNetwork"]

NETNS_DIR = Path("/run/netns")
T = TypeVar("T")


def _on_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on a fresh thread and return its result (or raise its exception)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name="hoody-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _in_netns(path: Path, fn: Callable[[], T]) -> T:
    """Run `fn` with the calling thread inside the netns at `path`."""

    def body() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, CLONE_NEWNET, str(path))
        finally:
            os.close(fd)
        return fn()

    return _on_thread(body)


def _mac_for(ip: str) -> str:
    """A locally administered MAC derived from the address: a tenant that gets an
    address someone had before answers at the MAC the host's neighbour cache already
    holds, so the first packets are not sent to a vanished link."""
    return "02:68:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def _write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", *key.split(".")).write_text(value)


class LinuxNetwork:
    """Network driver on the host's bridge and namespaces (needs root)."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self._lock = threading.Lock()

    # --- names ----------------------------------------------------------------------

    def host_link(self, tid: str) -> str:
        """The host end of the tenant's veth: <= 15 bytes whatever the tenant id."""
        return self.config.name + hashlib.sha1(tid.encode()).hexdigest()[:8]

    def _netns_path(self, tid: str) -> Path:
        return NETNS_DIR / self.config.netns_name(tid)

    # --- bridge ---------------------------------------------------------------------

    def ensure_bridge(self) -> None:
        cfg = self.config
        with self._lock, IPRoute() as ipr:
            found = ipr.link_lookup(ifname=cfg.bridge)
            if not found:
                try:
                    ipr.link("add", ifname=cfg.bridge, kind="bridge")
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise HostError(f"cannot create bridge {cfg.bridge}: {exc}") from exc
                found = ipr.link_lookup(ifname=cfg.bridge)
            index = found[0]
            have = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=index, family=2)
            }
            want = (str(cfg.gateway), cfg.network.prefixlen)
            if want not in have:
                ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
            ipr.link("set", index=index, state="up")
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            (f"net.ipv4.conf.{cfg.bridge}.proxy_arp", "1"),
            (f"net.ipv4.conf.{cfg.bridge}.proxy_arp_pvlan", "1"),
            (f"net.ipv4.conf.{cfg.bridge}.send_redirects", "0"),
            # Proxy ARP replies are delayed up to 0.8 s by default: answer at once.
            (f"net.ipv4.neigh.{cfg.bridge}.proxy_delay", "0"),
            (f"net.ipv6.conf.{cfg.bridge}.disable_ipv6", "1"),
        ):
            _write_sysctl(key, value)
        NETNS_DIR.mkdir(parents=True, exist_ok=True)

    # --- tenants --------------------------------------------------------------------

    def attach(self, tid: str, ip: str) -> Path:
        path = self._netns_path(tid)
        if path.exists():  # re-attach (agent restart) or a half-made attachment
            if self._attached_with(tid, ip):
                return path
            self.detach(tid)
        with Undo() as undo:
            self._create_netns(path)
            undo.add(lambda: self._remove_netns(path), "remove netns")
            self._add_veth(tid, ip, path)
            undo.add(lambda: self._delete_link(self.host_link(tid)), "delete veth")
            _in_netns(path, lambda: self._configure_inside(ip))
            undo.commit()
        return path

    def detach(self, tid: str) -> None:
        self._delete_link(self.host_link(tid))
        self._remove_netns(self._netns_path(tid))

    def list_attached(self) -> list[str]:
        prefix = f"{self.config.name}-"
        if not NETNS_DIR.is_dir():
            return []
        return sorted(
            p.name[len(prefix) :] for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)
        )

    def tenant_ip(self, tid: str) -> str | None:
        """The address on the tenant's eth0, or None when it is not attached."""
        path = self._netns_path(tid)
        if not path.exists():
            return None

        def read() -> str | None:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname="eth0")
                if not found:
                    return None
                for addr in ipr.get_addr(index=found[0], family=2):
                    return str(addr.get_attr("IFA_ADDRESS"))
            return None

        try:
            return _in_netns(path, read)
        except OSError:
            return None  # a stale file, not a namespace

    def teardown(self) -> None:
        for tid in self.list_attached():
            self.detach(tid)
        self._delete_link(self.config.bridge)

    # --- steps ----------------------------------------------------------------------

    def _attached_with(self, tid: str, ip: str) -> bool:
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=self.host_link(tid)):
                return False
        return self.tenant_ip(tid) == ip

    def _create_netns(self, path: Path) -> None:
        NETNS_DIR.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=False)

        def bind() -> None:
            # A fresh thread unshares a new netns and pins it with a bind mount.
            unshare(CLONE_NEWNET, str(path))
            mount("/proc/thread-self/ns/net", path, None, MS_BIND, None)
            _write_sysctl("net.ipv4.ip_unprivileged_port_start", "0")
            _write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            _write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")

        try:
            _on_thread(bind)
        except OSError as exc:
            self._remove_netns(path)
            raise HostError(f"cannot create network namespace {path}: {exc}") from exc

    def _remove_netns(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            umount(path, MNT_DETACH)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _add_veth(self, tid: str, ip: str, netns: Path) -> None:
        host = self.host_link(tid)
        with IPRoute() as ipr:
            bridge = ipr.link_lookup(ifname=self.config.bridge)
            if not bridge:
                raise HostError(
                    f"bridge {self.config.bridge} is missing; restart the agent "
                    "(`hoody node serve`) to recreate it"
                )
            # The peer is born inside the netns as eth0: moving a link between
            # namespaces afterwards waits for an RCU grace period (~17 ms here).
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            peer = {"ifname": "eth0", "net_ns_fd": fd, "address": _mac_for(ip)}
            try:
                try:
                    ipr.link("add", ifname=host, kind="veth", peer=peer)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    # The host end of a previous attachment whose netns is still
                    # being destroyed by the kernel: remove it and try once more.
                    self._delete_link(host)
                    ipr.link("add", ifname=host, kind="veth", peer=peer)
            except NetlinkError as exc:
                raise HostError(f"cannot create veth {host} for tenant {tid}: {exc}") from exc
            finally:
                os.close(fd)
            index = ipr.link_lookup(ifname=host)[0]
            _write_sysctl(f"net.ipv6.conf.{host}.disable_ipv6", "1")
            ipr.link("set", index=index, master=bridge[0])
            ipr.brport("set", index=index, isolated=1, learning=0)
            ipr.link("set", index=index, state="up")

    def _configure_inside(self, ip: str) -> None:
        cfg = self.config
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=ip, prefixlen=cfg.network.prefixlen)
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.route("add", dst="default", gateway=str(cfg.gateway))

    def _delete_link(self, name: str) -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=found[0])
