"""A tenant's default egress does not reach link-local (cloud metadata) or the node's
management networks; an explicit allow of its template does, and without masquerade.

The "metadata service", the "management LAN" and an ordinary "outside" network are
namespaces this test makes, each behind a veth of its own with a link-local, a
management and an ordinary address: every probe stays on this machine.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hoody.agent.network import NetworkConfig
from hoody.agent.network.firewall import NftFirewall
from hoody.agent.network.linux import LinuxNetwork
from hoody.agent.spec import EgressRule, FirewallPolicy
from hoody.bench.scratch import _free_subnet
from hoody.proc import run
from hoody.syscalls import in_netns

PROBE_TIMEOUT = 1.0


@dataclass
class Outside:
    """A namespace on a /30 behind a veth of this host: `server` is its address."""

    ns: str
    host_end: str
    server: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.ns


def _outside(tag: str, net: ipaddress.IPv4Network, tenants: str) -> Outside:
    host, server = (str(a) for a in list(net.hosts())[:2])
    ns, host_end = f"egr{tag}{secrets.token_hex(2)}", f"eg{tag}{secrets.token_hex(2)}"
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "addr", "add", f"{host}/{net.prefixlen}", "dev", host_end])
    run(["ip", "link", "set", host_end, "up"])
    run(["ip", "-n", ns, "addr", "add", f"{server}/{net.prefixlen}", "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    # Replies to an unmasqueraded tenant go back through this host.
    run(["ip", "-n", ns, "route", "add", tenants, "via", host])
    return Outside(ns, host_end, server)


def _remove(o: Outside) -> None:
    run(["ip", "link", "delete", o.host_end], check=False)
    run(["ip", "netns", "delete", o.ns], check=False)


@dataclass
class World:
    network: LinuxNetwork
    firewall: NftFirewall
    tenant_ip: str
    metadata: Outside
    management: Outside
    ordinary: Outside


def _free_slash30(within: str) -> ipaddress.IPv4Network:
    """A /30 inside `within` that no route or address on this host overlaps."""
    used = [
        ipaddress.IPv4Network(line.split()[0], strict=False)
        for line in run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines()
        if line and line.split()[0][0].isdigit()
    ]
    space = ipaddress.IPv4Network(within)
    for _ in range(200):
        offset = secrets.randbelow(space.num_addresses // 4) * 4
        net = ipaddress.IPv4Network(f"{space.network_address + offset}/30")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /30 in {within} on this host")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    subnet = _free_subnet()
    # Not 169.254.169.254 itself: a route for it on this host would take the real one.
    link_local = _free_slash30("169.254.100.0/22")
    management = _free_slash30("172.31.0.0/16")
    ordinary = _free_slash30("172.30.0.0/16")
    config = NetworkConfig(name="tegr", subnet=subnet, management=(str(management),))
    made: list[Outside] = []
    network = LinuxNetwork(config)
    firewall = NftFirewall(config)
    try:
        for tag, net in (("m", link_local), ("g", management), ("o", ordinary)):
            made.append(_outside(tag, net, subnet))
        network.ensure_bridge()
        firewall.ensure_base()
        ip = str(config.network.network_address + 2)
        network.attach("t1", ip)
        yield World(network, firewall, ip, *made)
    finally:
        firewall.teardown()
        network.teardown()
        for o in made:
            _remove(o)
    assert "inet tegr" not in run(["nft", "list", "tables"]).stdout
    assert not [o for o in made if o.path.exists()]


def probe(world: World, outside: Outside, port: int = 7000) -> str | None:
    """The peer address the outside server saw for a connection from tenant t1, or
    None when the connection did not get through."""
    seen: list[str] = []
    server = in_netns(outside.path, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((outside.server, port))
    server.listen()
    server.settimeout(PROBE_TIMEOUT * 2)

    def accept() -> None:
        try:
            conn, peer = server.accept()
            seen.append(peer[0])
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    netns = world.network.config.netns_path("t1")
    client = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    client.settimeout(PROBE_TIMEOUT)
    try:
        client.connect((outside.server, port))
    except OSError:
        pass
    finally:
        client.close()
        thread.join()
        server.close()
    return seen[0] if seen else None


def test_default_egress_reaches_the_outside_but_not_metadata_or_management(
    world: World,
) -> None:
    world.firewall.apply_tenant("t1", world.tenant_ip, FirewallPolicy())
    assert probe(world, world.ordinary) is not None, "the probe itself works"
    assert probe(world, world.metadata) is None, "link-local (cloud metadata)"
    assert probe(world, world.management) is None, "a management network"


def test_an_explicit_allow_reaches_a_guarded_network_as_the_tenant(world: World) -> None:
    management = str(ipaddress.IPv4Network(f"{world.management.server}/30", strict=False))
    policy = FirewallPolicy(egress=(EgressRule("allow", management, 7000),))
    world.firewall.apply_tenant("t1", world.tenant_ip, policy)
    try:
        # Not masqueraded to this node's address (which other nodes trust as a router):
        # the management network sees the tenant's own address.
        assert probe(world, world.management) == world.tenant_ip
        assert probe(world, world.management, 7001) is None, "only the allowed port"
        assert probe(world, world.metadata) is None
    finally:
        world.firewall.apply_tenant("t1", world.tenant_ip, FirewallPolicy())


def test_the_guarded_set_holds_metadata_loopback_multicast_and_management(
    world: World,
) -> None:
    out = run(["nft", "list", "set", "inet", "tegr", "guarded"]).stdout
    for cidr in ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", *world.network.config.management):
        assert cidr in out, out


def test_a_copys_own_broad_allow_stays_out_of_guarded_networks(world: World) -> None:
    """What the node makes of a copy's `allow 0.0.0.0/0` its template does not cover
    (FirewallPolicy.for_copy): the outside, never metadata or management."""
    policy = FirewallPolicy.from_json(
        {"egress": [{"action": "allow", "cidr": "0.0.0.0/0"}], "egress_default": "deny"}
    ).for_copy(FirewallPolicy(), world.network.config.guarded, "web")
    assert policy.egress[0].confined
    world.firewall.apply_tenant("t1", world.tenant_ip, policy)
    try:
        assert probe(world, world.ordinary) is not None, "allowed out (the default is deny)"
        assert probe(world, world.metadata) is None
        assert probe(world, world.management) is None
    finally:
        world.firewall.apply_tenant("t1", world.tenant_ip, FirewallPolicy())
