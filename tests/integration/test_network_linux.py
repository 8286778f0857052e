"""LinuxNetwork + NftFirewall on a scratch network: the contract with real sockets.

Every probe is a TCP connection between namespaces this test made (or from this host
to them); nothing leaves the machine. The module checks that no link, netns or nft
table of its scratch network is left behind.
"""

from __future__ import annotations

import itertools
import secrets
import socket
from collections.abc import Iterator

import pytest

from hoody.agent.network import NetworkConfig
from hoody.agent.network.firewall import NftFirewall
from hoody.agent.network.linux import LinuxNetwork
from hoody.bench.scratch import _free_subnet
from hoody.proc import run
from hoody.syscalls import in_netns
from tests.contract.network import NetworkContract, Reach

PROBE_TIMEOUT = 0.4


@pytest.fixture(scope="module")
def config() -> Iterator[NetworkConfig]:
    # A name of its own: other runs on the machine may test their networks meanwhile.
    name = f"tn{secrets.token_hex(2)}"
    cfg = NetworkConfig(name=name, subnet=_free_subnet())
    yield cfg
    assert name not in run(["ip", "-o", "link"]).stdout
    assert not any(n.startswith(f"{name}-") for n in run(["ip", "netns"]).stdout.split())
    assert f"inet {name}" not in run(["nft", "list", "tables"]).stdout


@pytest.fixture
def network(config: NetworkConfig) -> Iterator[LinuxNetwork]:
    net = LinuxNetwork(config)
    net.ensure_bridge()
    yield net
    net.teardown()
    assert net.list_attached() == []


@pytest.fixture
def firewall(config: NetworkConfig) -> Iterator[NftFirewall]:
    fw = NftFirewall(config)
    fw.ensure_base()
    yield fw
    fw.teardown()


def _socket_in(network: LinuxNetwork, who: str) -> socket.socket:
    if who == "node":
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    return in_netns(
        network.config.netns_path(who), lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    )


@pytest.fixture
def reach(network: LinuxNetwork) -> Reach:
    def probe(src: str, dst: str, port: int) -> bool:
        target = str(network.config.gateway) if dst == "node" else network.tenant_ip(dst)
        assert target is not None, f"{dst} is not attached"
        with _socket_in(network, dst) as server, _socket_in(network, src) as client:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((target, port))
            server.listen()
            client.settimeout(PROBE_TIMEOUT)
            try:
                client.connect((target, port))
            except OSError:
                return False
            server.settimeout(PROBE_TIMEOUT)
            conn, _ = server.accept()
            conn.close()
            return True

    return probe


class TestLinuxNetwork(NetworkContract):
    pass


def test_tenant_end_is_eth0_with_a_default_route(network: LinuxNetwork) -> None:
    network.attach("t1", str(network.config.network.network_address + 20))
    ns = network.config.netns_name("t1")
    assert (
        "inet " + str(network.config.network.network_address + 20)
        in run(["ip", "-n", ns, "-o", "addr", "show", "eth0"]).stdout
    )
    assert f"default via {network.config.gateway}" in run(["ip", "-n", ns, "route"]).stdout
    words = run(["bridge", "-d", "link", "show", "dev", network.host_link("t1")]).stdout.split()
    flags = dict(itertools.pairwise(words))
    for flag, value in [("isolated", "on")] + [
        (f, "off") for f in ("learning", "flood", "mcast_flood", "bcast_flood")
    ]:
        assert flags[flag] == value, f"{flag} {flags[flag]}"


def test_both_ends_of_a_new_link_are_in_service_once_ready(network: LinuxNetwork) -> None:
    # The kernel puts a new link in service on a worker of its own, after the call
    # that made it returned; a packet sent before then is lost without an error.
    network.attach("t2", str(network.config.network.network_address + 22))
    network.wait_ready("t2")
    ns, host = network.config.netns_name("t2"), network.host_link("t2")
    assert "state UP" in run(["ip", "-n", ns, "-o", "link", "show", "eth0"]).stdout
    assert "state UP" in run(["ip", "-o", "link", "show", "dev", host]).stdout
    # `bridge link` names the port's forwarding state last: "state forwarding".
    assert "state forwarding" in run(["bridge", "link", "show", "dev", host]).stdout


def test_neither_end_of_a_tenants_link_has_an_ipv6_address(network: LinuxNetwork) -> None:
    # The firewall drops IPv6 at the bridge; no end should even have an address: the
    # tenant's eth0 has IPv6 off, and the host end gets no link-local address or route
    # (2,000 tenants would be 2,000 of each on the host).
    network.attach("t6", str(network.config.network.network_address + 26))
    ns, host = network.config.netns_name("t6"), network.host_link("t6")
    assert run(["ip", "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0"]).stdout == ""
    off = run(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"])
    assert off.stdout.strip() == "1"
    assert run(["ip", "-6", "-o", "addr", "show", "dev", host]).stdout == ""
    assert run(["ip", "-6", "route", "show", "dev", host]).stdout == ""
    assert "addrgenmode none" in run(["ip", "-d", "link", "show", "dev", host]).stdout


def _tx_packets(link: str) -> int:
    with open(f"/sys/class/net/{link}/statistics/tx_packets") as f:
        return int(f.read())


def test_a_tenant_port_carries_none_of_its_neighbours_traffic(
    network: LinuxNetwork, firewall: NftFirewall
) -> None:
    # A tenant is root in its own netns and may put eth0 in promiscuous mode: the bridge
    # must not hand it frames meant for another tenant (no flooding; static FDB entries).
    base = network.config.network.network_address
    a, b = str(base + 30), str(base + 31)
    network.attach("ta", a)
    network.attach("tb", b)
    from hoody.agent.spec import FirewallPolicy

    firewall.apply_tenant("ta", a, FirewallPolicy())
    with _socket_in(network, "ta") as server:
        server.bind((a, 8080))
        server.listen()
        before = _tx_packets(network.host_link("tb"))
        for _ in range(20):
            with socket.create_connection((a, 8080), timeout=2):
                server.accept()[0].close()
        assert _tx_packets(network.host_link("tb")) == before
    # The host knows each tenant's MAC for good: no ARP broadcast reaches tenants.
    neigh = run(["ip", "neigh", "show", a, "dev", network.config.bridge]).stdout
    assert "PERMANENT" in neigh
    network.detach("ta")
    assert run(["ip", "neigh", "show", a, "dev", network.config.bridge]).stdout.strip() == ""


def test_firewall_changes_are_one_atomic_script(firewall: NftFirewall) -> None:
    # A bad rule (an address outside IPv4) fails the whole change: nothing half-applied.
    from hoody.agent.network.firewall import render_tenant
    from hoody.agent.spec import FirewallPolicy

    script = render_tenant(firewall.config, "bad", "not-an-ip", FirewallPolicy())
    with pytest.raises(Exception, match="nftables refused"):
        firewall._nft(script)
    assert firewall.list_tenants() == []


# --- past the bridge-port ceiling ------------------------------------------------------
# A Linux bridge holds at most 1,023 ports. With 4 addresses per bridge, the contract's
# tenants (.10, .11) sit on the third bridge, and a handful of tenants spans several.


@pytest.fixture(scope="class")
def small_bridges() -> Iterator[NetworkConfig]:
    # A name of its own: another run of this suite on the machine may be up meanwhile.
    name = f"tb{secrets.token_hex(2)}"
    cfg = NetworkConfig(name=name, subnet=_free_subnet(), ports_per_bridge=4)
    yield cfg
    assert f" {name}" not in run(["ip", "-o", "link"]).stdout
    assert not any(n.startswith(f"{name}-") for n in run(["ip", "netns"]).stdout.split())
    assert f"inet {name}\n" not in run(["nft", "list", "tables"]).stdout + "\n"


class TestLinuxNetworkManyBridges(NetworkContract):
    @pytest.fixture
    def config(self, small_bridges: NetworkConfig) -> NetworkConfig:
        return small_bridges

    def test_tenants_on_other_bridges_answer_and_stay_isolated(
        self, network: LinuxNetwork, firewall: NftFirewall, reach: Reach
    ) -> None:
        from hoody.agent.spec import EgressRule, FirewallPolicy, IngressRule

        # .2 on the first bridge (with the gateway), .5 on the second, .13 on the fourth.
        first = self.tenant(network, firewall, "a", 2)
        second = self.tenant(
            network,
            firewall,
            "b",
            5,
            FirewallPolicy(
                egress=(
                    EgressRule("allow", f"{first}/32", 8080),
                    EgressRule("allow", f"{self.ip(network, 13)}/32", 8080),
                )
            ),
        )
        self.tenant(
            network,
            firewall,
            "c",
            13,
            FirewallPolicy(ingress=(IngressRule(8080), IngressRule(8080, "tcp", f"{second}/32"))),
        )
        cfg = network.config
        links = run(["ip", "-o", "link", "show", "type", "bridge"]).stdout
        assert f"{cfg.bridge_name(1)}:" in links and f"{cfg.bridge_name(3)}:" in links
        assert f"{cfg.bridge_name(2)}:" not in links
        masters = {
            tid: run(["ip", "-o", "link", "show", network.host_link(tid)]).stdout
            for tid in ("a", "b", "c")
        }
        assert f"master {cfg.bridge} " in masters["a"]
        assert f"master {cfg.bridge_name(1)} " in masters["b"]
        assert f"master {cfg.bridge_name(3)} " in masters["c"]
        for tid in ("a", "b", "c"):
            assert reach("node", tid, 8080)
            assert not reach("node", tid, 9090)
            assert not reach(tid, "node", 8080)
        # Across bridges the firewall decides exactly as on one: b may reach c (rules on
        # both sides), nothing else (b's egress allows a, but a's ingress does not admit b).
        assert reach("b", "c", 8080)
        assert not reach("c", "b", 8080)
        assert not reach("b", "a", 8080)
        assert not reach("a", "c", 8080)
        assert not reach("c", "a", 8080)

    def test_a_port_past_the_first_bridge_carries_only_its_tenants_frames(
        self, network: LinuxNetwork, firewall: NftFirewall
    ) -> None:
        from hoody.agent.spec import FirewallPolicy

        # Two tenants on one extra bridge (.8 and .9: bridge 2).
        base = network.config.network.network_address
        a, b = str(base + 8), str(base + 9)
        network.attach("ta", a)
        network.attach("tb", b)
        firewall.apply_tenant("ta", a, FirewallPolicy())
        with _socket_in(network, "ta") as server:
            server.bind((a, 8080))
            server.listen()
            before = _tx_packets(network.host_link("tb"))
            for _ in range(20):
                with socket.create_connection((a, 8080), timeout=2):
                    server.accept()[0].close()
            assert _tx_packets(network.host_link("tb")) == before
        bridge = network.config.bridge_name(2)
        assert "PERMANENT" in run(["ip", "neigh", "show", a, "dev", bridge]).stdout
        network.detach("ta")
        assert run(["ip", "neigh", "show", a, "dev", bridge]).stdout.strip() == ""
