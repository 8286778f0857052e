"""Network: a per-node bridge, a namespace and veth per tenant, nftables policy.

Tenant ports on the bridge are isolated from each other (bridge port isolation) and
the host answers ARP for the subnet (proxy_arp_pvlan), so every packet between two
tenants is routed through the host, where nftables decides with conntrack. One table
per node network, one chain per tenant, every change one atomic `nft -f -`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hoody.agent.spec import FirewallPolicy

__all__ = ["Firewall", "Network", "NetworkConfig"]


@dataclass(frozen=True)
class NetworkConfig:
    """One node network. `name` (<= 6 chars, [a-z0-9]) prefixes every link, netns and table."""

    name: str = "hoody"
    subnet: str = "10.88.0.0/16"
    nat: bool = True
    # Sources treated like this server by "node" ingress rules: the fleet's routers.
    routers: tuple[str, ...] = ()

    @property
    def bridge(self) -> str:
        return f"{self.name}br"

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
