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

__all__ = ["Firewall", "Network", "NetworkConfig"]


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


class Network(Protocol):
    """Links and namespaces. Contract: tests/contract/test_network.py."""

    config: NetworkConfig

    def ensure_bridge(self) -> None:
        """Bridge up with the gateway address, forwarding on; idempotent."""

    def attach(self, tid: str, ip: str) -> Path:
        """Create netns + veth for the tenant with `ip`; return the netns path.

        Idempotent for the same (tid, ip). Leaves nothing behind on failure.
        """

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

    def list_tenants(self) -> list[str]: ...

    def teardown(self) -> None:
        """Delete the whole table."""
