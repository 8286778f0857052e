import ipaddress
import time

import pytest

from hoody.agent.spec import FirewallPolicy, Limits
from hoody.agent.state import QUARANTINE, NodeStore, TemplateRecord, TenantRecord
from hoody.errors import Conflict, Exhausted, NotFound

SUBNET = ipaddress.IPv4Network("10.9.0.0/29")  # gateway .1, tenants .2 - .6


def tenant(tid: str) -> TenantRecord:
    return TenantRecord(
        id=tid,
        template="t",
        version=1,
        mode="overlay",
        ip="",
        desired="running",
        status="creating",
        pid=0,
        created_at=time.time(),
        args=("/bin/sh",),
        env={},
        port=8080,
        limits=Limits(),
        firewall=FirewallPolicy(),
        ksm=False,
        metadata={"plan": "pro"},
    )


def test_ips_are_leased_lowest_first_and_freed_after_a_quarantine() -> None:
    store = NodeStore(":memory:")
    now = 1_000.0
    ips = [store.reserve_tenant(tenant(f"t{i}"), SUBNET, now).ip for i in range(5)]
    assert ips == [f"10.9.0.{i}" for i in range(2, 7)]
    with pytest.raises(Exhausted, match="no free address"):
        store.reserve_tenant(tenant("t9"), SUBNET, now)
    store.remove_tenant("t1", now)
    # A router may still hold t1's route: its address goes to no one for a while.
    with pytest.raises(Exhausted, match="1 free again within 120 s"):
        store.reserve_tenant(tenant("t10"), SUBNET, now + QUARANTINE - 1)
    assert store.reserve_tenant(tenant("t11"), SUBNET, now + QUARANTINE + 1).ip == "10.9.0.3"


def test_a_quarantined_address_is_skipped_for_the_next_free_one() -> None:
    store = NodeStore(":memory:")
    store.reserve_tenant(tenant("a"), SUBNET, 0.0)
    store.remove_tenant("a", 0.0)
    assert store.reserve_tenant(tenant("b"), SUBNET, 1.0).ip == "10.9.0.3"


def test_ids_are_never_reused_but_a_forgotten_reservation_is() -> None:
    store = NodeStore(":memory:")
    store.reserve_tenant(tenant("a"), SUBNET)
    store.remove_tenant("a")
    with pytest.raises(Conflict, match="never reused"):
        store.reserve_tenant(tenant("a"), SUBNET)
    store.reserve_tenant(tenant("b"), SUBNET)
    store.forget_tenant("b")
    store.reserve_tenant(tenant("b"), SUBNET)


def test_id_slots_are_the_lowest_free_freed_on_delete_and_limited() -> None:
    store = NodeStore(":memory:")
    big = ipaddress.IPv4Network("10.9.0.0/24")
    slots = [store.reserve_tenant(tenant(f"t{i}"), big, slots=3).slot for i in range(3)]
    assert slots == [0, 1, 2]
    assert store.tenant("t1").slot == 1 and [t.slot for t in store.tenants()] == [0, 1, 2]
    with pytest.raises(Exhausted, match="id slots"):
        store.reserve_tenant(tenant("t3"), big, slots=3)
    store.remove_tenant("t1")
    assert store.reserve_tenant(tenant("t4"), big, slots=3).slot == 1
    store.forget_tenant("t4")
    store.remove_tenant("t0")
    assert store.reserve_tenant(tenant("t5"), big, slots=3).slot == 0


def test_records_round_trip() -> None:
    store = NodeStore(":memory:")
    rec = store.reserve_tenant(tenant("a"), SUBNET)
    assert store.tenant("a") == rec
    store.update_tenant("a", status="running", pid=42)
    assert store.tenant("a").pid == 42
    with pytest.raises(NotFound, match="hoody ls"):
        store.tenant("zzz")


def test_template_versions() -> None:
    store = NodeStore(":memory:")
    assert store.next_template_version("web") == 1
    store.add_template(TemplateRecord("web", 1, time.time(), ksm=True))
    store.add_template(TemplateRecord("web", 2, time.time()))
    assert store.template("web").version == 2
    assert store.template("web", 1).ksm is True
    assert store.template("web", 1).init is True, "an init unless the template says not"
    with pytest.raises(Conflict):
        store.add_template(TemplateRecord("web", 2, time.time()))
    store.add_template(TemplateRecord("web", 3, time.time(), init=False))
    assert store.template("web", 3).init is False
    with pytest.raises(NotFound, match="template ls"):
        store.template("nope")


def test_the_supervisors_list_of_awake_tenants() -> None:
    store = NodeStore(":memory:")
    states = {
        "up": ("running", "running"),
        "crashed": ("running", "failed"),
        "new": ("running", "creating"),
        "asleep": ("running", "sleeping"),
        "held": ("stopped", "stopped"),
        "going": ("running", "deleting"),
    }
    for tid, (desired, status) in states.items():
        store.reserve_tenant(tenant(tid), ipaddress.IPv4Network("10.9.0.0/28"))
        store.update_tenant(tid, desired=desired, status=status)
    everyone = store.lifecycle()
    assert sorted(everyone) == sorted((tid, d, s) for tid, (d, s) in states.items())
    assert sorted(t for t, _, _ in store.lifecycle(awake=True)) == ["crashed", "up"]
