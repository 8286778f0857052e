"""Policy -> nft script is pure; the scripts are compared with golden files.

After an intended change, regenerate them with `HOODY_UPDATE_GOLDEN=1 pytest ...` and
review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hoody.agent.network import NetworkConfig
from hoody.agent.network.firewall import render_base, render_tenant
from hoody.agent.spec import EgressRule, FirewallPolicy, IngressRule

GOLDEN = Path(__file__).parent / "golden"
CONFIG = NetworkConfig(name="hoody", subnet="10.88.0.0/16")

CASES = {
    "base": lambda: render_base(CONFIG),
    "base_with_routers": lambda: render_base(
        NetworkConfig(name="n3", subnet="10.9.0.0/16", routers=("192.0.2.0/24", "198.51.100.7/32"))
    ),
    "base_no_nat": lambda: render_base(NetworkConfig(name="n2", subnet="10.9.0.0/16", nat=False)),
    "base_with_management": lambda: render_base(
        NetworkConfig(
            name="n4",
            subnet="10.9.0.0/16",
            management=("192.168.1.0/24", "10.10.0.0/16", "169.254.169.254/32"),
        )
    ),
    "tenant_default": lambda: render_tenant(CONFIG, "acme-1", "10.88.0.2", FirewallPolicy()),
    "tenant_rules_remapped": lambda: render_tenant(
        CONFIG,
        "acme-2",
        "10.88.0.3",
        FirewallPolicy(
            ingress=(IngressRule(8080), IngressRule(5432, "tcp", "10.88.0.2/32")),
            egress=(
                EgressRule("deny", "169.254.0.0/16"),
                EgressRule("allow", "10.88.0.4/32", 8080),
                EgressRule("allow", "192.0.2.0/24", 53, "udp"),
            ),
            egress_default="deny",
        ),
        mapped=True,
    ),
    # A copy's own allow its template does not cover: never to the guarded networks.
    "tenant_copy_confined": lambda: render_tenant(
        CONFIG,
        "acme-3",
        "10.88.0.5",
        FirewallPolicy(
            egress=(
                EgressRule("allow", "0.0.0.0/0", 443, confined=True),
                EgressRule("allow", "169.254.169.254/32", 80),
            ),
            egress_default="deny",
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_matches_golden_file(case: str) -> None:
    script = CASES[case]()
    path = GOLDEN / f"{case}.nft"
    if os.environ.get("HOODY_UPDATE_GOLDEN"):
        path.write_text(script)
    assert script == path.read_text()


def test_every_tenant_chain_ends_in_a_verdict() -> None:
    script = CASES["tenant_default"]()
    egress = [line for line in script.splitlines() if line.startswith("add rule inet hoody e-")]
    ingress = [line for line in script.splitlines() if line.startswith("add rule inet hoody i-")]
    assert egress[-3].endswith("ip daddr 10.88.0.0/16 drop"), "other tenants need a rule"
    assert egress[-2].endswith("ip daddr @guarded drop"), "so do the guarded networks"
    assert egress[-1].endswith("goto deliver")
    assert ingress[-1].endswith("drop")


def test_guarded_networks_merge_and_cover_metadata_loopback_and_multicast() -> None:
    config = NetworkConfig(management=("192.168.1.0/24", "192.168.0.0/23", "169.254.1.1/32"))
    assert config.guarded == [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "192.168.0.0/23",
        "224.0.0.0/3",
    ]
