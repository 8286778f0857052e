"""The behaviour every Network + Firewall pair must show, real (netns + nftables) or fake.

A test module subclasses NetworkContract and provides fixtures:

    network   a Network on its own scratch config, bridge up; torn down afterwards
    firewall  a Firewall on the same config, base table in place; torn down afterwards
    reach     `reach(src, dst, port) -> bool`: does a new TCP connection get through?
              src is a tenant id or "node" (this server); dst is a tenant id or "node"
              (the bridge's gateway address). The real driver opens real sockets in
              the namespaces; the fake asks its model of the chains.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hoody.agent.network import Firewall, Network
from hoody.agent.spec import EgressRule, FirewallPolicy, IngressRule
from hoody.errors import HostError

Reach = Callable[[str, str, int], bool]


class NetworkContract:
    def ip(self, network: Network, n: int) -> str:
        return str(network.config.network.network_address + n)

    def tenant(
        self,
        network: Network,
        firewall: Firewall,
        tid: str,
        n: int,
        policy: FirewallPolicy | None = None,
    ) -> str:
        ip = self.ip(network, n)
        network.attach(tid, ip)
        firewall.apply_tenant(tid, ip, policy or FirewallPolicy())
        return ip

    # --- links and namespaces -----------------------------------------------------

    def test_attach_is_idempotent_and_detach_harmless(self, network: Network) -> None:
        ip = self.ip(network, 10)
        path = network.attach("t1", ip)
        assert network.attach("t1", ip) == path
        assert network.list_attached() == ["t1"]
        network.detach("t1")
        network.detach("t1")
        assert network.list_attached() == []

    def test_wait_ready_returns_for_new_and_unknown_tenants(self, network: Network) -> None:
        network.attach("t1", self.ip(network, 10))
        network.wait_ready("t1")
        network.wait_ready("t1")  # ready already
        network.wait_ready("t9")  # never attached: nothing to wait for
        assert network.list_attached() == ["t1"]

    def test_reattach_with_a_new_address(self, network: Network) -> None:
        network.attach("t1", self.ip(network, 10))
        network.attach("t1", self.ip(network, 11))
        assert network.list_attached() == ["t1"]

    # --- policy ---------------------------------------------------------------------

    def test_has_tenant_follows_apply_and_remove(
        self, network: Network, firewall: Firewall
    ) -> None:
        ip = self.tenant(network, firewall, "t1", 10)
        assert firewall.has_tenant("t1", ip)
        assert not firewall.has_tenant("t1", self.ip(network, 11)), "another address"
        assert not firewall.has_tenant("t2", ip)
        firewall.remove_tenant("t1")
        assert not firewall.has_tenant("t1", ip)

    def test_default_policy_node_reaches_the_app_port_only(
        self, network: Network, firewall: Firewall, reach: Reach
    ) -> None:
        self.tenant(network, firewall, "a", 10)
        assert reach("node", "a", 8080)
        assert not reach("node", "a", 9090)

    def test_tenants_cannot_reach_each_other_or_the_host(
        self, network: Network, firewall: Firewall, reach: Reach
    ) -> None:
        self.tenant(network, firewall, "a", 10)
        self.tenant(network, firewall, "b", 11)
        assert not reach("a", "b", 8080)
        assert not reach("b", "a", 8080)
        assert not reach("a", "node", 8080)

    def test_a_rule_on_both_sides_lets_one_tenant_reach_another(
        self, network: Network, firewall: Firewall, reach: Reach
    ) -> None:
        ip_a, ip_b = self.ip(network, 10), self.ip(network, 11)
        self.tenant(
            network, firewall, "a", 10, FirewallPolicy(egress=(EgressRule("allow", ip_b, 8080),))
        )
        self.tenant(
            network,
            firewall,
            "b",
            11,
            FirewallPolicy(ingress=(IngressRule(8080), IngressRule(8080, source=ip_a))),
        )
        assert reach("a", "b", 8080)
        assert not reach("b", "a", 8080)  # one direction only
        assert reach("node", "b", 8080)

    def test_one_side_alone_is_not_enough(
        self, network: Network, firewall: Firewall, reach: Reach
    ) -> None:
        ip_a, ip_b = self.ip(network, 10), self.ip(network, 11)
        self.tenant(network, firewall, "a", 10)  # no egress allow
        self.tenant(
            network, firewall, "b", 11, FirewallPolicy(ingress=(IngressRule(8080, source=ip_a),))
        )
        assert not reach("a", "b", 8080)
        firewall.apply_tenant("a", ip_a, FirewallPolicy(egress=(EgressRule("allow", ip_b),)))
        assert reach("a", "b", 8080)
        assert not reach("node", "b", 8080)  # b dropped its "node" rule

    def test_deny_rule_comes_before_an_allow(
        self, network: Network, firewall: Firewall, reach: Reach
    ) -> None:
        ip_a, ip_b = self.ip(network, 10), self.ip(network, 11)
        policy = FirewallPolicy(
            egress=(EgressRule("deny", ip_b), EgressRule("allow", network.config.subnet))
        )
        self.tenant(network, firewall, "a", 10, policy)
        self.tenant(
            network, firewall, "b", 11, FirewallPolicy(ingress=(IngressRule(8080, source=ip_a),))
        )
        assert not reach("a", "b", 8080)

    def test_removed_tenant_is_unreachable_and_forgotten(
        self, network: Network, firewall: Firewall, reach: Reach
    ) -> None:
        ip = self.tenant(network, firewall, "a", 10)
        firewall.remove_tenant("a")
        firewall.remove_tenant("a")
        assert firewall.list_tenants() == []
        assert not reach("node", "a", 8080)
        firewall.apply_tenant("a", ip, FirewallPolicy())
        assert firewall.list_tenants() == ["a"]
        assert reach("node", "a", 8080)

    def test_moving_a_tenant_to_a_new_address_forgets_the_old_one(
        self, network: Network, firewall: Firewall, reach: Reach
    ) -> None:
        self.tenant(network, firewall, "a", 10)
        new_ip = self.tenant(network, firewall, "a", 12)
        assert firewall.list_tenants() == ["a"]
        assert reach("node", "a", 8080)
        assert new_ip == self.ip(network, 12)

    def test_attach_without_a_bridge_fails_cleanly(self, network: Network) -> None:
        network.teardown()
        with pytest.raises(HostError, match="bridge"):
            network.attach("t1", self.ip(network, 10))
        assert network.list_attached() == []
        network.ensure_bridge()
