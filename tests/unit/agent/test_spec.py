import pytest

from hoody.agent.spec import EgressRule, FirewallPolicy, IngressRule, Limits, check_tenant_id
from hoody.errors import InvalidInput


@pytest.mark.parametrize("tid", ["a", "acme-42", "x" * 63, "0abc"])
def test_dns_label_ids_are_accepted(tid: str) -> None:
    assert check_tenant_id(tid) == tid


@pytest.mark.parametrize("tid", ["", "A", "-a", "a-", "a_b", "a.b", "x" * 64, "ümlaut"])
def test_other_ids_are_refused_with_the_rule(tid: str) -> None:
    with pytest.raises(InvalidInput, match="lowercase letters, digits"):
        check_tenant_id(tid)


def test_limits_merge_and_validate() -> None:
    base = Limits()
    assert base.merged({"memory_mib": 64}).memory_mib == 64
    with pytest.raises(InvalidInput, match="unknown limit 'gpus'"):
        base.merged({"gpus": 1})
    with pytest.raises(InvalidInput, match="memory_mib"):
        Limits(memory_mib=1)
    with pytest.raises(InvalidInput, match="cpu"):
        Limits(cpu=0)
    with pytest.raises(InvalidInput, match="pids"):
        Limits(pids=True)  # bools are not counts
    assert base.merged({"io_mbps": 20, "iops": 300}).to_json()["io_mbps"] == 20
    with pytest.raises(InvalidInput, match="io_mbps limit 0 is invalid"):
        base.merged({"io_mbps": 0})  # a cap, not a way to turn the disk off
    with pytest.raises(InvalidInput, match="iops"):
        Limits(iops=2.5)  # type: ignore[arg-type]


def test_firewall_round_trips_through_json() -> None:
    policy = FirewallPolicy(
        ingress=(IngressRule(8080), IngressRule(9000, "udp", "10.0.0.0/8")),
        egress=(EgressRule("deny", "192.168.1.7", 22),),
        egress_default="deny",
    )
    again = FirewallPolicy.from_json(policy.to_json())
    assert again == policy
    assert again.egress[0].cidr == "192.168.1.7/32"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"ingress": [{"port": 0}]}, "port"),
        ({"ingress": [{"port": 80, "proto": "icmp"}]}, "protocol"),
        ({"egress": [{"action": "maybe", "cidr": "1.2.3.0/24"}]}, "action"),
        ({"egress": [{"action": "allow", "cidr": "nope"}]}, "CIDR"),
        ({"egress": [{"action": "allow"}]}, "malformed"),
        ({"egress_default": "sometimes"}, "egress_default"),
        ({"whatever": 1}, "unknown firewall key"),
    ],
)
def test_bad_firewall_rules_are_refused(data: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        FirewallPolicy.from_json(data)
