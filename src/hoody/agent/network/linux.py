"""The real network driver: a Linux bridge, one netns + veth pair per tenant, via netlink.

Layout for a node network named `hoody` on 10.88.0.0/16 (512 ports per bridge):

    host: hoodybr 10.88.0.1/16 (proxy_arp + proxy_arp_pvlan, redirects off)
          └─ hoody<8 hex> (veth, isolated bridge port) ──┐
    /run/netns/hoody-<tid>:  eth0 10.88.x.y/16, lo, default via 10.88.0.1
    host: hoody-b1 10.88.0.1/32, route 10.88.2.0/23 dev hoody-b1 (same flags)
          └─ tenants 10.88.2.0 - 10.88.3.255; hoody-b2 the next 512, and so on

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
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NUD_NOARP, NUD_PERMANENT

from hoody.agent.network import NetworkConfig
from hoody.errors import HostError
from hoody.syscalls import (
    CLONE_NEWNET,
    MNT_DETACH,
    MS_BIND,
    in_netns,
    mount,
    on_own_thread,
    umount,
    unshare,
)
from hoody.undo import Undo

__all__ = ["LinuxNetwork"]

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
_LOOPBACK = 1  # lo's index in every network namespace
_SCOPE_LINK = 253
_ADDR_GEN_MODE_NONE = 1  # IN6_ADDR_GEN_MODE_NONE: the kernel makes no IPv6 address
_NO_IPV6_ADDRESSES = {
    "attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", _ADDR_GEN_MODE_NONE]]}]]
}


def _mac_for(ip: str) -> str:
    """A locally administered MAC derived from the address: a tenant that gets an
    address someone had before answers at the MAC the host's neighbour cache already
    holds, so the first packets are not sent to a vanished link."""
    return "02:68:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def _get_link(ipr: IPRoute, name: str) -> Any | None:
    """The link called `name`, or None. One lookup by name, not a dump of every link."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _index_here(name: str) -> int | None:
    """The index of link `name` in this thread's network namespace, or None (an ioctl,
    not a netlink request: ~10 us where pyroute2 takes ~0.5 ms)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _link_here(name: str) -> bool:
    """Whether link `name` exists in this thread's network namespace."""
    return _index_here(name) is not None


def _operstate(name: str) -> str:
    """Link `name`'s operational state in the host's namespace ("up", "down", ...;
    "" when it is gone): a sysfs read, not a netlink request."""
    try:
        return Path(f"/sys/class/net/{name}/operstate").read_text().strip()
    except OSError:
        return ""


def _write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", *key.split(".")).write_text(value)


class LinuxNetwork:
    """Network driver on the host's bridge and namespaces (needs root)."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        # Tenant → the address its attachment was made or checked with by this process.
        self._known: dict[str, str] = {}
        # Tenants attached by this process whose links the kernel may not yet carry
        # traffic on (see `wait_ready`).
        self._settling: set[str] = set()

    # --- names ----------------------------------------------------------------------

    def host_link(self, tid: str) -> str:
        """The host end of the tenant's veth: <= 15 bytes whatever the tenant id."""
        return self.config.name + hashlib.sha1(tid.encode()).hexdigest()[:8]

    def _netns_path(self, tid: str) -> Path:
        return NETNS_DIR / self.config.netns_name(tid)

    # --- bridge ---------------------------------------------------------------------

    def ensure_bridge(self) -> None:
        self._ensure_bridge(0)
        NETNS_DIR.mkdir(parents=True, exist_ok=True)

    def _ensure_bridge(self, index: int) -> int:
        """Bridge `index` up with the gateway address; returns its link index.

        Bridge 0 holds the gateway with the subnet's prefix (so the subnet's route);
        bridge k > 0 holds the gateway as a /32 (the host answers tenants there from
        the same address and MAC) and a route for its block of addresses.
        """
        cfg = self.config
        name = cfg.bridge_name(index)
        # A fixed MAC: tenants hold it as the gateway's permanent neighbour entry, and a
        # bridge without one takes its lowest port's, which changes as tenants come and go.
        mac = _mac_for(str(cfg.gateway))
        with self._lock, IPRoute() as ipr:
            bridge = _get_link(ipr, name)
            if bridge is None:
                try:
                    ipr.link("add", ifname=name, kind="bridge", address=mac)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise HostError(f"cannot create bridge {name}: {exc}") from exc
                bridge = _get_link(ipr, name)
                if bridge is None:
                    raise HostError(f"bridge {name} vanished as it was made; retry")
            link = int(bridge["index"])
            if bridge.get_attr("IFLA_ADDRESS") != mac:
                ipr.link("set", index=link, address=mac)
            have = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=link, family=2)
            }
            want = (str(cfg.gateway), cfg.network.prefixlen if index == 0 else 32)
            if want not in have:
                ipr.addr("add", index=link, address=want[0], prefixlen=want[1])
            ipr.link("set", index=link, state="up")
            if index > 0:
                block = cfg.bridge_block(index)
                ipr.route(
                    "replace",
                    dst=str(block.network_address),
                    dst_len=block.prefixlen,
                    oif=link,
                    scope=_SCOPE_LINK,
                    prefsrc=str(cfg.gateway),
                )
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            (f"net.ipv4.conf.{name}.proxy_arp", "1"),
            (f"net.ipv4.conf.{name}.proxy_arp_pvlan", "1"),
            (f"net.ipv4.conf.{name}.send_redirects", "0"),
            # Proxy ARP replies are delayed up to 0.8 s by default: answer at once.
            (f"net.ipv4.neigh.{name}.proxy_delay", "0"),
            (f"net.ipv6.conf.{name}.disable_ipv6", "1"),
        ):
            _write_sysctl(key, value)
        return link

    # --- tenants --------------------------------------------------------------------

    def attach(self, tid: str, ip: str) -> Path:
        path = self._netns_path(tid)
        if path.exists():  # a start after a stop or sleep, an agent restart, a half-made one
            # Made or checked by this process and its host end still there: whole (a
            # full check enters the namespace: 9-25 ms of a stopped tenant's wake).
            if self._known.get(tid) == ip and _link_here(self.host_link(tid)):
                return path
            if self._attached_with(tid, ip):
                self._known[tid] = ip
                return path
            self.detach(tid)
        host = self.host_link(tid)
        with Undo() as undo:
            NETNS_DIR.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=False)
            undo.add(lambda: self._remove_netns(path), "remove netns")
            # The host end of an earlier attachment whose netns the kernel is still
            # destroying would block the new pair's name: remove it first.
            if _link_here(host):
                self._unplug(host)
            undo.add(lambda: self._unplug(host), "unplug veth")
            try:
                on_own_thread(lambda: self._build_inside(path, host, ip))
            except (OSError, NetlinkError) as exc:
                raise HostError(f"cannot create the network of tenant {tid}: {exc}") from exc
            self._plug_host_end(tid, host, ip)
            undo.commit()
        self._known[tid] = ip
        self._settling.add(tid)
        return path

    def wait_ready(self, tid: str, timeout: float = 1.0) -> None:
        """Return once both ends of a new attachment carry traffic.

        Bringing the host end up turns both ends' carrier on, but the kernel puts a
        link in service (its queue, the bridge port's forwarding) later, on its
        linkwatch worker. A packet sent before that is dropped without a word: a
        tenant's first SYN, sent as its copy returned, waited for TCP's 1 s
        retransmit (about 1 in 700 copies at 4 at once). Waits at most `timeout` s,
        then logs a warning and returns: a late link still works, one second later.
        """
        if tid not in self._settling:
            return  # checked already, or made by an earlier agent long ago
        host = self.host_link(tid)
        deadline = time.monotonic() + timeout

        def wait() -> bool:
            # One thread in the tenant's netns and one netlink socket for every look;
            # the host end is read from the host's sysfs, which any thread sees.
            with IPRoute() as ipr:
                while True:
                    eth0 = _get_link(ipr, "eth0")
                    up = eth0 is not None and eth0.get_attr("IFLA_OPERSTATE") == "UP"
                    if up and _operstate(host) == "up":
                        return True
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.001)

        if not in_netns(self._netns_path(tid), wait):
            log.warning("the link of tenant %s is not up after %.1f s", tid, timeout)
        self._settling.discard(tid)

    def detach(self, tid: str) -> None:
        self._known.pop(tid, None)
        self._settling.discard(tid)
        self._unplug(self.host_link(tid))
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
                eth0 = _get_link(ipr, "eth0")
                if eth0 is None:
                    return None
                for addr in ipr.get_addr(index=eth0["index"], family=2):
                    return str(addr.get_attr("IFA_ADDRESS"))
            return None

        try:
            return in_netns(path, read)
        except OSError:
            return None  # a stale file, not a namespace

    def teardown(self) -> None:
        for tid in self.list_attached():
            self.detach(tid)
        with IPRoute() as ipr:
            extra = [
                str(link.get_attr("IFLA_IFNAME"))
                for link in ipr.get_links()
                if self.config.is_extra_bridge(str(link.get_attr("IFLA_IFNAME")))
            ]
        for name in [*extra, self.config.bridge]:
            self._delete_link(name)  # a bridge's block route goes with it

    # --- steps ----------------------------------------------------------------------

    def _attached_with(self, tid: str, ip: str) -> bool:
        with IPRoute() as ipr:
            if _get_link(ipr, self.host_link(tid)) is None:
                return False
        return self.tenant_ip(tid) == ip

    def _build_inside(self, path: Path, host: str, ip: str) -> None:
        """On a fresh thread: a new netns pinned at `path`, the veth pair made from
        inside it (eth0 here, `host` born in the agent's netns: moving a link between
        namespaces afterwards waits for an RCU grace period, ~17 ms here), and eth0
        configured: address, up, default route, and the gateway's MAC fixed so the
        tenant's first packets wait for no ARP."""
        cfg = self.config
        unshare(CLONE_NEWNET, str(path))
        mount("/proc/thread-self/ns/net", path, None, MS_BIND, None)
        _write_sysctl("net.ipv4.ip_unprivileged_port_start", "0")
        # eth0 is born with IPv6 off. Only `default` is written: it takes no lock,
        # whereas `all` (or a link's own) spins on the kernel's rtnl lock while other
        # tenants' links are being made (5 ms a copy at 4 at once). lo keeps ::1,
        # which reaches nothing outside the namespace.
        _write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        agent_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # the process's
        try:
            with IPRoute() as ipr:
                peer = {"ifname": host, "net_ns_fd": agent_netns}
                ipr.link(
                    "add", ifname="eth0", kind="veth", address=_mac_for(ip), peer=peer, state="up"
                )
                eth0 = _index_here("eth0")
                if eth0 is None:
                    raise HostError("the tenant's eth0 vanished as it was made")
                ipr.addr("add", index=eth0, address=ip, prefixlen=cfg.network.prefixlen)
                ipr.link("set", index=_LOOPBACK, state="up")
                gateway = str(cfg.gateway)
                ipr.neigh(
                    "replace",
                    dst=gateway,
                    lladdr=_mac_for(gateway),
                    ifindex=eth0,
                    state=NUD_PERMANENT,
                )
                ipr.route("add", dst="default", gateway=gateway)
        finally:
            os.close(agent_netns)

    def _plug_host_end(self, tid: str, host: str, ip: str) -> None:
        """Enslave the host end to the bridge as a port that carries only this tenant's
        frames, then bring it up.

        No flooding and no learning: the bridge sends a frame to this port only when it
        is addressed to the tenant's MAC (a static FDB entry), so a tenant in promiscuous
        mode sees nothing of its neighbours' traffic. The host knows the tenant's MAC
        for good (a permanent neighbour entry), so it never broadcasts ARP to tenants.
        """
        which = self.config.bridge_index(ip)
        bridge = _index_here(self.config.bridge_name(which))
        if bridge is None and which > 0 and _link_here(self.config.bridge):
            # Past the first bridge's block: its bridge is made by the first tenant
            # that needs it (on a network whose first bridge is up).
            bridge = self._ensure_bridge(which)
        if bridge is None:
            raise HostError(
                f"bridge {self.config.bridge_name(which)} is missing; restart the agent "
                "(`hoody node serve`) to recreate it"
            )
        index, mac = _index_here(host), _mac_for(ip)
        if index is None:
            raise HostError(f"veth {host} of tenant {tid} vanished while it was made")
        with IPRoute() as ipr:
            # No IPv6 address ever (set while the link is down, in a request that holds
            # the rtnl lock anyway): no link-local address or route per tenant on the
            # host, and nothing sent to the tenant. Its `disable_ipv6` sysctl would do
            # the same but spins on that lock while other tenants' links are made.
            ipr.link("set", index=index, master=bridge, ifalias=ip, IFLA_AF_SPEC=_NO_IPV6_ADDRESSES)
            ipr.brport(
                "set",
                index=index,
                isolated=1,
                learning=0,
                unicast_flood=0,
                mcast_flood=0,
                bcast_flood=0,
            )
            ipr.fdb("add", ifindex=index, lladdr=mac, state=NUD_NOARP, flags=NTF_MASTER)
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=bridge, state=NUD_PERMANENT)
            ipr.link("set", index=index, state="up")

    def _unplug(self, host: str) -> None:
        """Delete the host end `host` (its netns peer goes with it) and the host's
        neighbour entry for the tenant, found from the link's alias and bridge."""
        with IPRoute() as ipr:
            link = _get_link(ipr, host)
            if link is None:
                return
            ip, bridge = link.get_attr("IFLA_IFALIAS"), link.get_attr("IFLA_MASTER")
            if ip and bridge:
                with contextlib.suppress(NetlinkError):  # never made, or gone meanwhile
                    ipr.neigh("del", dst=ip, ifindex=bridge)
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=link["index"])

    def _remove_netns(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            umount(path, MNT_DETACH)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _delete_link(self, name: str) -> None:
        with IPRoute() as ipr, contextlib.suppress(NetlinkError):  # already gone
            ipr.link("del", ifname=name)
