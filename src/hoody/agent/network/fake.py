"""In-memory network and firewall for unit tests: the same contract, no root needed.

FakeFirewall also *decides*: `allows(src, dst, port)` evaluates the applied policies
the way the nftables chains do, so the contract suite can check what gets through on
the fake exactly as it does with real sockets on the real driver.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hoody.agent.network import NetworkConfig
from hoody.agent.spec import FirewallPolicy
from hoody.errors import HostError

__all__ = ["FakeFirewall", "FakeNetwork"]


class FakeNetwork:
    def __init__(self, config: NetworkConfig | None = None) -> None:
        self.config = config or NetworkConfig()
        self.bridge_up = False
        self.attached: dict[str, str] = {}
        self.fail_attach: set[str] = set()  # tids whose next attach fails

    def ensure_bridge(self) -> None:
        self.bridge_up = True

    def attach(self, tid: str, ip: str) -> Path:
        if not self.bridge_up:
            raise HostError(f"bridge {self.config.bridge} is missing; restart the agent")
        if tid in self.fail_attach:  # one-shot, like FakeRuntime.fail_start
            self.fail_attach.discard(tid)
            raise HostError(f"cannot create veth for tenant {tid}: injected failure")
        self.attached[tid] = ip
        return self.config.netns_path(tid)

    def wait_ready(self, tid: str, timeout: float = 1.0) -> None:
        pass  # a fake link carries at once

    def detach(self, tid: str) -> None:
        self.attached.pop(tid, None)

    def list_attached(self) -> list[str]:
        return sorted(self.attached)

    def tenant_ip(self, tid: str) -> str | None:
        return self.attached.get(tid)

    def teardown(self) -> None:
        self.attached.clear()
        self.bridge_up = False


class FakeFirewall:
    NODE = "node"

    def __init__(self, config: NetworkConfig | None = None) -> None:
        self.config = config or NetworkConfig()
        self.base = False
        self.policies: dict[str, tuple[str, FirewallPolicy]] = {}

    def ensure_base(self) -> None:
        self.base = True

    def apply_tenant(self, tid: str, ip: str, policy: FirewallPolicy) -> None:
        if not self.base:
            raise HostError(f"table {self.config.table} is missing; restart the agent")
        self.policies[tid] = (ip, policy)

    def remove_tenant(self, tid: str) -> None:
        self.policies.pop(tid, None)

    def has_tenant(self, tid: str, ip: str) -> bool:
        applied = self.policies.get(tid)
        return self.base and applied is not None and applied[0] == ip

    def list_tenants(self) -> list[str]:
        return sorted(self.policies)

    def teardown(self) -> None:
        self.policies.clear()
        self.base = False

    # --- the model of the chains ----------------------------------------------------

    def _owner(self, ip: str) -> FirewallPolicy | None:
        return next((p for a, p in self.policies.values() if a == ip), None)

    def allows(self, src: str, dst: str, port: int, proto: str = "tcp") -> bool:
        """Would a new connection from `src` (an address, or "node") to dst:port pass?"""
        subnet = self.config.network
        if src != self.NODE:
            egress = self._owner(src)
            if egress is None or not self._egress(egress, ipaddress.ip_address(dst), port, proto):
                return False
        if ipaddress.ip_address(dst) not in subnet:
            return src != self.NODE
        ingress = self._owner(dst)
        if ingress is None:
            return False
        for rule in ingress.ingress:
            source_ok = (
                src == self.NODE
                if rule.source == "node"
                else src != self.NODE
                and ipaddress.ip_address(src) in ipaddress.ip_network(rule.source)
            )
            if source_ok and rule.port == port and rule.proto == proto:
                return True
        return False

    def _egress(
        self, policy: FirewallPolicy, dst: ipaddress._BaseAddress, port: int, proto: str
    ) -> bool:
        guarded = any(dst in ipaddress.ip_network(g) for g in self.config.guarded)
        for rule in policy.egress:
            if dst in ipaddress.ip_network(rule.cidr) and (
                rule.port is None or (rule.port == port and rule.proto == proto)
            ):
                if rule.confined and rule.action == "allow" and guarded:
                    continue  # `ip daddr != @guarded` does not match: on to the next rule
                return rule.action == "allow"
        if dst in self.config.network or guarded:
            return False
        return policy.egress_default == "allow"
