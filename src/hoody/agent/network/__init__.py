"""Network: per-node bridges, a namespace and veth per tenant, nftables policy.

Tenant ports on a bridge are isolated from each other (bridge port isolation) and
the host answers ARP for the subnet (proxy_arp_pvlan), so every packet between two
tenants is routed through the host, where nftables decides with conntrack. One table
per node network, one chain per tenant, every change one atomic `nft -f -`.

A Linux bridge holds at most 1,023 ports, so a node has several: the subnet is cut
into blocks of `ports_per_bridge` addresses and a tenant's address says its bridge
(block 0: `<name>br`, which also holds the gateway; block k: `<name>-b<k>`, reached by
a host route for the block). No bookkeeping: an agent that restarts finds every
tenant's bridge from its address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hoody.agent.spec import FirewallPolicy
from hoody.errors import InvalidInput

__all__ = ["GUARDED", "PRIVATE", "Firewall", "Network", "NetworkConfig"]

# What a tenant's default egress never reaches, on any node: "this network", loopback,
# link-local (cloud metadata at 169.254.169.254), multicast and the reserved range with
# the broadcast address. The node's management networks are added to these.
GUARDED = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
# Private address space (RFC 1918, carrier-grade NAT), where fleets live: tenant
# traffic there is never masqueraded, so it always carries the tenant's own address.
PRIVATE = ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16")


@dataclass(frozen=True)
class NetworkConfig:
    """One node network. `name` (<= 6 chars, [a-z0-9]) prefixes every link, netns and table."""

    name: str = "hoody"
    subnet: str = "10.88.0.0/16"
    nat: bool = True
    # Sources treated like this server by "node" ingress rules: the fleet's routers.
    routers: tuple[str, ...] = ()
    # Tenant addresses per bridge: a power of two up to 512 (a bridge holds 1,023
    # ports). Tests set 4 to cross the ceiling with a handful of tenants.
    ports_per_bridge: int = 512
    # Where the fleet's servers talk to each other (agents, control plane, routers, and
    # other nodes' tenant subnets): tenants' default egress never reaches them.
    management: tuple[str, ...] = ()

    @property
    def guarded(self) -> list[str]:
        """GUARDED and the management networks, merged into disjoint CIDRs."""
        return _merged(*GUARDED, *self.management)

    @property
    def unmasqueraded(self) -> list[str]:
        """Where tenant traffic keeps its own source address: guarded and private
        networks (so it never arrives at another server as this node, which that
        server may trust as a router)."""
        return _merged(*GUARDED, *PRIVATE, *self.management)

    def __post_init__(self) -> None:
        n = self.ports_per_bridge
        if isinstance(n, bool) or not isinstance(n, int) or n < 4 or n > 512 or n & (n - 1):
            raise InvalidInput(
                f"ports per bridge {n!r} is invalid; give a power of two from 4 to 512 "
                "(a Linux bridge holds at most 1,023 ports)"
            )

    @property
    def bridge(self) -> str:
        """The first bridge: it holds the gateway address and the subnet's route."""
        return f"{self.name}br"

    @property
    def extra_bridge_glob(self) -> str:
        """Every other bridge of this network, as an nft interface wildcard. Node names
        have no '-', so no other node's links match it."""
        return f"{self.name}-b*"

    def bridge_index(self, ip: str) -> int:
        """Which bridge the tenant at `ip` is plugged into."""
        offset = int(ipaddress.IPv4Address(ip)) - int(self.network.network_address)
        return offset // self.ports_per_bridge

    def bridge_name(self, index: int) -> str:
        return self.bridge if index == 0 else f"{self.name}-b{index}"

    def bridge_block(self, index: int) -> ipaddress.IPv4Network:
        """The addresses of bridge `index` (routed to it by the host, for index > 0)."""
        start = self.network.network_address + index * self.ports_per_bridge
        prefix = 32 - (self.ports_per_bridge.bit_length() - 1)
        return ipaddress.IPv4Network(f"{start}/{max(prefix, self.network.prefixlen)}")

    def is_extra_bridge(self, link: str) -> bool:
        return re.fullmatch(rf"{re.escape(self.name)}-b[0-9]+", link) is not None

    @property
    def table(self) -> str:
        return f"{self.name}"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return next(self.network.hosts())

    def netns_name(self, tid: str) -> str:
        return f"{self.name}-{tid}"

    def netns_path(self, tid: str) -> Path:
        return Path("/run/netns") / self.netns_name(tid)


def _merged(*cidrs: str) -> list[str]:
    nets = [ipaddress.IPv4Network(c, strict=False) for c in cidrs]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


class Network(Protocol):
    """Links and namespaces. Contract: tests/contract/test_network.py."""

    config: NetworkConfig

    def ensure_bridge(self) -> None:
        """Bridge up with the gateway address, forwarding on; idempotent."""

    def attach(self, tid: str, ip: str) -> Path:
        """Create netns + veth for the tenant with `ip`; return the netns path.

        Idempotent for the same (tid, ip). Leaves nothing behind on failure.
        """

    def wait_ready(self, tid: str, timeout: float = 1.0) -> None:
        """Return once the links `attach` made carry traffic (at most `timeout` s);
        at once for a tenant not attached by this process since it last waited."""

    def detach(self, tid: str) -> None:
        """Remove the tenant's veth and netns; harmless when absent."""

    def list_attached(self) -> list[str]:
        """Tenant ids that have a netns on this network."""

    def teardown(self) -> None:
        """Remove the bridge and every tenant attachment (tests, benchmarks)."""


class Firewall(Protocol):
    """nftables policy. Contract: tests/contract/test_firewall.py."""

    config: NetworkConfig

    def ensure_base(self) -> None:
        """The node table with its base chains and NAT; idempotent."""

    def apply_tenant(self, tid: str, ip: str, policy: FirewallPolicy) -> None:
        """Atomically replace the tenant's chain with `policy`."""

    def remove_tenant(self, tid: str) -> None:
        """Remove the tenant's chain and map entries; harmless when absent."""

    def has_tenant(self, tid: str, ip: str) -> bool:
        """Whether the tenant's chain is in place for `ip` (applied, not removed since):
        a start after a stop or a sleep need not apply it again."""

    def list_tenants(self) -> list[str]: ...

    def teardown(self) -> None:
        """Delete the whole table."""
