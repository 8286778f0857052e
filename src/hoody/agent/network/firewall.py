"""The real firewall driver: one nftables table per node network, one atomic batch per
change (through libnftables in this process, see nftlib.py).

    table inet <name>
      map egress  { ipv4_addr : verdict }   tenant address -> goto e-<tid>
      map ingress { ipv4_addr : verdict }   tenant address -> goto i-<tid>
      chain forward     established -> accept; from a bridge -> @egress, else drop;
                        to a bridge -> @ingress, else drop  (every rule about "the
                        bridge" is written twice: <name>br and <name>-b*, the others)
      chain deliver     after an egress allow: to the bridge -> @ingress, else accept
      chain output      from this host to the bridge -> @ingress; to no tenant: TCP
                        reset (the router fails fast for a tenant just deleted)
      chain input       from the bridge: only replies (tenants never reach the host)
      set guarded       link-local (metadata), loopback, multicast, reserved, and the
                        node's management networks (`hoody node init --management`)
      set unmasqueraded guarded and private networks (RFC 1918, CGNAT)
      chain postrouting masquerade the subnet leaving by another interface (NAT),
                        except towards unmasqueraded networks
      chain e-<tid>     the tenant's egress rules in order; other tenants and guarded
                        networks dropped unless a rule allows them; then the default
      chain i-<tid>     the tenant's ingress rules; everything else dropped

A connection between two tenants needs an egress allow on one side and an ingress
rule on the other; a reply is accepted by conntrack. "node" ingress means from a local
address of this server (`fib saddr type local`), e.g. a router here, or from the set
`routers` (the fleet's routers elsewhere, `hoody node init --allow-router CIDR`).

Guarded networks are reached only through an explicit egress allow rule of the
tenant's template: a copy's own allow rules are `confined` (`ip daddr != @guarded`)
unless its template's rules cover them. Tenant traffic is masqueraded towards the
internet only: towards private and guarded networks, where the fleet's servers are, it
keeps the tenant's own address, so on another node it never matches `routers` (this
node's address, where a router may live): a tenant cannot pose as a router, whatever
its rules allow.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from hoody.agent.network import NetworkConfig
from hoody.agent.network.nftlib import Nftables
from hoody.agent.spec import EgressRule, FirewallPolicy, IngressRule
from hoody.errors import HostError

__all__ = ["NftFirewall", "render_base", "render_tenant"]


def _ingress_rules(table: str, chain: str, ip: str, rule: IngressRule) -> list[str]:
    # "node": this server (a local source address) or one of the fleet's routers.
    sources = (
        ["fib saddr type local", "ip saddr @routers"]
        if rule.source == "node"
        else [f"ip saddr {rule.source}"]
    )
    match = f"{rule.proto} dport {rule.port} accept"
    return [f"add rule {table} {chain} ip daddr {ip} {source} {match}" for source in sources]


def _egress_rule(table: str, chain: str, rule: EgressRule) -> str:
    match = f"ip daddr {rule.cidr}"
    if rule.confined and rule.action == "allow":
        # A copy's own allow: it never opens the guarded networks (only a template may).
        match = f"ip daddr != @guarded {match}"
    if rule.port is not None:
        match += f" {rule.proto} dport {rule.port}"
    verdict = "goto deliver" if rule.action == "allow" else "drop"
    return f"add rule {table} {chain} {match} {verdict}"


def render_tenant(
    config: NetworkConfig, tid: str, ip: str, policy: FirewallPolicy, *, mapped: bool = False
) -> str:
    """The nft script that (re)places a tenant's two chains and map entries atomically.

    `mapped`: the address already has map entries, which must be deleted first (nft
    refuses to add a key twice).
    """
    t = f"inet {config.table}"
    e, i = f"e-{tid}", f"i-{tid}"
    lines = [
        f"add chain {t} {e}",
        f"flush chain {t} {e}",
        f"add chain {t} {i}",
        f"flush chain {t} {i}",
    ]
    lines += [_egress_rule(t, e, r) for r in policy.egress]
    lines.append(f"add rule {t} {e} ip daddr {config.subnet} drop")
    lines.append(f"add rule {t} {e} ip daddr @guarded drop")
    default = "goto deliver" if policy.egress_default == "allow" else "drop"
    lines.append(f"add rule {t} {e} {default}")
    lines += [line for r in policy.ingress for line in _ingress_rules(t, i, ip, r)]
    lines.append(f"add rule {t} {i} drop")
    for name, chain in (("egress", e), ("ingress", i)):
        if mapped:
            lines.append(f"delete element {t} {name} {{ {ip} }}")
        lines.append(f"add element {t} {name} {{ {ip} : goto {chain} }}")
    return "\n".join(lines) + "\n"


def render_base(config: NetworkConfig) -> str:
    """The nft script that creates the node table, its maps and base chains.

    Base chains are flushed and rebuilt each time; tenant chains and maps are kept.
    Every rule about the bridge is written for the first bridge and for the others
    (`<name>-b*`), so a tenant past the first bridge's ports is held to the same rules.
    """
    t, net = f"inet {config.table}", config.subnet
    bridges = (config.bridge, f'"{config.extra_bridge_glob}"')

    def each(template: str) -> str:
        return "".join(f"add rule {t} {template.format(br=br)}\n" for br in bridges)

    nat = (
        f"add rule {t} postrouting ip saddr {net} "
        + " ".join(f"oifname != {br}" for br in bridges)
        + " ip daddr != @unmasqueraded masquerade\n"
        if config.nat
        else ""
    )
    routers = (
        f"add element {t} routers {{ {', '.join(config.routers)} }}\n" if config.routers else ""
    )
    return (
        f"""add table {t}
add set {t} routers {{ type ipv4_addr ; flags interval ; }}
flush set {t} routers
{routers}add set {t} guarded {{ type ipv4_addr ; flags interval ; }}
flush set {t} guarded
add element {t} guarded {{ {", ".join(config.guarded)} }}
add set {t} unmasqueraded {{ type ipv4_addr ; flags interval ; }}
flush set {t} unmasqueraded
add element {t} unmasqueraded {{ {", ".join(config.unmasqueraded)} }}
add map {t} egress {{ type ipv4_addr : verdict ; }}
add map {t} ingress {{ type ipv4_addr : verdict ; }}
add chain {t} deliver
flush chain {t} deliver
"""
        + each("deliver oifname {br} ip daddr vmap @ingress")
        + each("deliver oifname {br} drop")
        + f"""add rule {t} deliver accept
add chain {t} forward {{ type filter hook forward priority filter ; policy accept ; }}
flush chain {t} forward
"""
        + each("forward iifname {br} meta nfproto ipv6 drop")
        + each("forward oifname {br} meta nfproto ipv6 drop")
        + f"""add rule {t} forward ct state established,related accept
add rule {t} forward ct state invalid drop
"""
        + each("forward iifname {br} ip saddr vmap @egress")
        + each("forward iifname {br} drop")
        + each("forward oifname {br} ip daddr vmap @ingress")
        + each("forward oifname {br} drop")
        + f"""add chain {t} output {{ type filter hook output priority filter ; policy accept ; }}
flush chain {t} output
"""
        + each("output oifname {br} ct state established,related accept")
        + each("output oifname {br} ip daddr vmap @ingress")
        + each("output oifname {br} meta l4proto tcp reject with tcp reset")
        + each("output oifname {br} drop")
        + f"""add chain {t} input {{ type filter hook input priority filter ; policy accept ; }}
flush chain {t} input
"""
        + each("input iifname {br} ct state established,related accept")
        + each("input iifname {br} drop")
        + f"""add chain {t} postrouting {{ type nat hook postrouting priority srcnat ; }}
flush chain {t} postrouting
{nat}"""
    )


class NftFirewall:
    """Firewall driver on nftables (needs root and libnftables)."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._owners: dict[str, str] | None = None
        self._nftables = Nftables()

    def _nft(self, script: str) -> None:
        ok, _, errors = self._nftables.run(script)
        if not ok:
            raise HostError(
                f"nftables refused the change to table {self.config.table}: {errors.strip()[:400]}"
            )

    def _list(self, what: str) -> list[dict[str, Any]]:
        """The objects of `list <what>` (nft's JSON), [] when there are none to list
        (e.g. the table does not exist yet)."""
        ok, output, _ = self._nftables.run(f"list {what}", json_output=True)
        if not ok or not output.strip():
            return []
        items = json.loads(output).get("nftables", [])
        return [item for item in items if isinstance(item, dict)]

    def ensure_base(self) -> None:
        with self._lock:
            self._owners = None
            self._nft(render_base(self.config))

    def apply_tenant(self, tid: str, ip: str, policy: FirewallPolicy) -> None:
        with self._lock:
            owners = self._known_owners()
            stale = [old for old, owner in owners.items() if owner == tid and old != ip]
            self._change(
                "".join(map(self._remove_elements, stale))
                + render_tenant(self.config, tid, ip, policy, mapped=ip in owners)
            )
            for old in stale:
                del owners[old]
            owners[ip] = tid

    def remove_tenant(self, tid: str) -> None:
        with self._lock:
            owners = self._known_owners()
            ips = [ip for ip, owner in owners.items() if owner == tid]
            if not ips and tid not in self._tenant_chains():
                return
            t = f"inet {self.config.table}"
            script = "".join(map(self._remove_elements, ips))
            for chain in (f"e-{tid}", f"i-{tid}"):
                script += f"add chain {t} {chain}\ndelete chain {t} {chain}\n"
            self._change(script)
            for ip in ips:
                del owners[ip]

    def has_tenant(self, tid: str, ip: str) -> bool:
        # The map entry and the chains are added and removed in one nft script each,
        # so the entry stands for both; the map is read from the kernel once per
        # process (a host restart empties it) and kept in step with every change.
        with self._lock:
            return self._known_owners().get(ip) == tid

    def list_tenants(self) -> list[str]:
        return sorted(self._tenant_chains())

    def teardown(self) -> None:
        with self._lock:
            self._owners = None
            # `add` first makes deleting an absent table harmless.
            self._nft(
                f"add table inet {self.config.table}\ndelete table inet {self.config.table}\n"
            )

    # --- reading the table ------------------------------------------------------------

    def _known_owners(self) -> dict[str, str]:
        """The map's address -> tid, read once and then kept in step with each change:
        this driver is the table's only writer, and a read costs a listing of the map."""
        if self._owners is None:
            self._owners = self._map_owners()
        return self._owners

    def _change(self, script: str) -> None:
        try:
            self._nft(script)
        except HostError:
            self._owners = None  # re-read: the kernel is the truth
            raise

    def _remove_elements(self, ip: str) -> str:
        t = f"inet {self.config.table}"
        return "".join(f"delete element {t} {name} {{ {ip} }}\n" for name in ("egress", "ingress"))

    def _tenant_chains(self) -> set[str]:
        found = set()
        for item in self._list("chains inet"):
            chain = item.get("chain")
            if isinstance(chain, dict) and chain.get("table") == self.config.table:
                name = str(chain.get("name", ""))
                if name.startswith("e-"):
                    found.add(name[2:])
        return found

    def _map_owners(self) -> dict[str, str]:
        """Tenant address -> tid, from the egress map (both maps change together).

        Lists the map alone: listing the whole table grows with every tenant's rules.
        """
        found: dict[str, str] = {}
        for item in self._list(f"map inet {self.config.table} egress"):
            entry = item.get("map")
            if not isinstance(entry, dict):
                continue
            for key, verdict in entry.get("elem", []):
                target = str(verdict.get("goto", {}).get("target", ""))
                if target.startswith("e-"):
                    found[str(key)] = target[2:]
        return found
