import pytest

from hoody.agent.spec import (
    LIMIT_BOUNDS,
    EgressRule,
    FirewallPolicy,
    IngressRule,
    Limits,
    TenantSpec,
    check_tenant_id,
)
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


GUARDED = ["127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "192.168.7.0/24"]  # + management


def _copy(egress: list[dict[str, object]], template: FirewallPolicy) -> FirewallPolicy:
    return FirewallPolicy.from_json({"egress": egress}).for_copy(template, GUARDED, "web")


@pytest.mark.parametrize(
    "cidr",
    ["169.254.169.254/32", "169.254.0.0/16", "127.0.0.1/32", "224.0.0.251/32", "192.168.7.9"],
)
def test_a_copy_cannot_open_a_guarded_network_by_itself(cidr: str) -> None:
    with pytest.raises(InvalidInput, match="Only its template can") as err:
        _copy([{"action": "allow", "cidr": cidr}], FirewallPolicy())
    assert "template web" in err.value.message


def test_a_copys_broad_allow_is_confined_to_what_is_not_guarded() -> None:
    got = _copy(
        [
            {"action": "allow", "cidr": "0.0.0.0/0", "port": 443},
            {"action": "allow", "cidr": "192.168.0.0/16"},  # holds the management /24
            {"action": "allow", "cidr": "198.51.100.0/24"},  # guarded nowhere
            {"action": "deny", "cidr": "169.254.0.0/16"},  # denying is always fine
            {"action": "allow", "cidr": "10.0.0.0/8", "confined": False},  # not the caller's say
        ],
        FirewallPolicy(),
    )
    assert [r.confined for r in got.egress] == [True, True, False, False, False]
    # Kept as given otherwise, and through JSON (the node's records keep it).
    assert FirewallPolicy.from_json(got.to_json()) == got


def test_what_the_template_allows_a_copy_may_keep() -> None:
    template = FirewallPolicy(
        egress=(
            EgressRule("allow", "169.254.169.254/32", 80),
            EgressRule("allow", "192.168.7.0/24"),
            EgressRule("allow", "127.0.0.0/8", confined=True),  # a copy's, snapshotted
        )
    )
    got = _copy(
        [
            {"action": "allow", "cidr": "169.254.169.254/32", "port": 80},
            {"action": "allow", "cidr": "192.168.7.10/32", "port": 22},
        ],
        template,
    )
    assert [r.confined for r in got.egress] == [False, False]
    for egress in (
        [{"action": "allow", "cidr": "169.254.169.254/32", "port": 443}],  # another port
        [{"action": "allow", "cidr": "169.254.169.254/32"}],  # every port
        [{"action": "allow", "cidr": "169.254.0.0/16", "port": 80}],  # wider
        [{"action": "allow", "cidr": "127.0.0.1/32"}],  # a confined rule covers nothing
    ):
        with pytest.raises(InvalidInput, match="guarded"):
            _copy(egress, template)
    assert EgressRule("allow", "169.254.169.254/32", 80).covers(
        EgressRule("allow", "169.254.169.254/32", 80)
    )
    with pytest.raises(InvalidInput, match="confined"):
        EgressRule("allow", "10.0.0.0/8", confined="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"limits": {"gpu": 1}}, "unknown limit 'gpu'"),
        ({"limits": {"cpu": True}}, "cpu limit True is invalid"),
        ({"limits": {"memory_mib": "64"}}, "memory_mib limit '64' is invalid"),
        ({"limits": {"memory_request_mib": 0}}, "memory request 0 is invalid"),
        ({"env": {"1A": "x"}}, "env name '1A' is invalid"),
        ({"env": {f"V{i}": "x" for i in range(65)}}, "keep it to 64"),
        ({"env": {"A": 1}}, "env A must be a string"),
        ({"name": "Bad_Name"}, "DNS-label"),
        ({"version": 0}, "version 0 is invalid"),
        ({"sleep": {"idle_seconds": 0}}, "idle_seconds 0 is invalid"),
        ({"sleep": {"after": 5}}, "unknown sleep setting 'after'"),
        ({"firewall": {"ingress": [{"port": 70000}]}}, "port 70000"),
        ({"metadata": {"x": "y" * 20000}}, "metadata is too large"),
        ({"metadata": 5}, "field metadata"),
        ({"colour": "red"}, "field colour"),
    ],
)
def test_a_tenant_spec_names_what_is_wrong(data: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        TenantSpec.parse(data)


def test_a_tenant_spec_checks_limits_by_the_same_bounds_as_a_tenants_limits() -> None:
    for name, (low, high) in LIMIT_BOUNDS.items():
        wrong = {"cpu": low / 2}.get(name, int(low) - 1)
        with pytest.raises(InvalidInput) as by_spec:
            TenantSpec.parse({"limits": {name: wrong}})
        with pytest.raises(InvalidInput) as by_limits:
            Limits(**{"memory_mib": 1 << 22, name: wrong})  # type: ignore[arg-type]
        assert by_spec.value.message == by_limits.value.message
        assert TenantSpec.parse({"limits": {name: high}}).limit_overrides() == {name: high}


def test_a_tenant_spec_keeps_what_was_given_and_nothing_else() -> None:
    spec = TenantSpec.parse({"limits": {"memory_mib": 64, "memory_request_mib": None}})
    # An explicit null request clears the template's; an absent one keeps it.
    assert spec.limit_overrides() == {"memory_mib": 64, "memory_request_mib": None}
    assert TenantSpec.parse({"sleep": {"mode": None, "idle_seconds": 30}}).sleep_overrides() == {
        "idle_seconds": 30
    }
    assert TenantSpec().overrides() == {}
