"""Overcommitted placement through the real control plane and a real node.

Limits are caps, not reservations: tenants whose memory limits add up past the node's
memory are accepted while what they use (and ask for) fits, and a copy whose request
does not fit is refused with the figure that refused it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from hoody.agent.spec import TenantSpec
from hoody.agent.templates import DEMO_ARGS
from hoody.bench.fleet import ScratchFleet, scratch_fleet
from hoody.bench.provision import wait_http_ok
from hoody.control.client import Client
from hoody.errors import Exhausted

MIB = 1 << 20
BIG = 8192  # MiB: the template's memory limit, four of them are more than this VM has


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def fleet() -> Iterator[ScratchFleet]:
    with scratch_fleet(1) as fleet:
        with fleet.nodes[0].client() as agent:
            agent.create_template(
                "bigcap", {"demo": True}, args=DEMO_ARGS, limits={"memory_mib": BIG}
            )
        wait_for(lambda: fleet.admin.nodes()[0]["estimates"], "the template on the node")
        yield fleet


@pytest.fixture(scope="module")
def client(fleet: ScratchFleet) -> Iterator[Client]:
    project = fleet.admin.create_project("dense")["id"]
    token = fleet.admin.create_token("project", project_id=project)["token"]
    with Client(fleet.url, token) as client:
        yield client


def test_limits_past_the_memory_are_accepted_while_use_fits(
    fleet: ScratchFleet, client: Client
) -> None:
    admin = fleet.admin
    node = admin.nodes()[0]
    total = node["capacity"]["memory_total_bytes"]
    count = total // (BIG * MIB) + 2  # their limits add up past the node's memory
    # The project is not told where or why (placement, address): the admin is.
    first = admin.container(client.copy("bigcap")["id"])
    assert "request (limit)" in first["placement"], "nothing measured yet: its limit counts"
    wait_http_ok(first["url"])

    def learned() -> dict[str, Any] | None:
        n = admin.nodes()[0]
        est = n["estimates"][0]
        # Learned from the running tenant, and no copy counted at its limit any more.
        if (
            est["request_source"] == "learned"
            and n["capacity"]["memory_committed_bytes"] < BIG * MIB
        ):
            return n
        return None

    node = wait_for(learned, "a request learned from the running tenant", 30)
    est = node["estimates"][0]
    assert est["memory_request_bytes"] < 64 * MIB, est
    assert est["further_tenants"] > count
    made = [first]
    for _ in range(count - 1):
        rec = admin.container(client.copy("bigcap")["id"])
        assert "request (learned)" in rec["placement"], rec["placement"]
        made.append(rec)
    for rec in made:
        wait_http_ok(rec["url"])
    assert sum(r["limits"]["memory_mib"] for r in made) * MIB > total
    cap = admin.nodes()[0]["capacity"]
    assert (
        cap["memory_committed_bytes"] < cap["memory_capacity_bytes"] - cap["memory_reserve_bytes"]
    )
    for rec in made:
        client.delete(rec["id"])


def test_a_request_that_does_not_fit_is_refused_naming_the_figure(
    fleet: ScratchFleet, client: Client
) -> None:
    admin = fleet.admin
    name = fleet.nodes[0].name
    cap = admin.nodes()[0]["capacity"]
    # Would fit in the memory, but not beside the host reserve.
    ask = cap["memory_free_bytes"] // MIB + 256
    with pytest.raises(Exhausted) as err:
        client.copy("bigcap", TenantSpec(limits={"memory_mib": ask, "memory_request_mib": ask}))
    # The project hears there is no room, not which nodes exist or what they have free.
    assert name not in err.value.message and "no room" in err.value.message
    project = client.whoami()["project_id"]
    with pytest.raises(Exhausted) as err:  # the operator gets the figure
        admin.copy(
            "bigcap",
            TenantSpec(limits={"memory_mib": ask, "memory_request_mib": ask}),
            project=project,
        )
    message = err.value.message
    assert f"{name}: full (memory, refused by the host reserve" in message, message
    assert "overcommit" in message
    before = {c["id"] for c in client.containers()["items"]}
    assert all(c["state"] != "creating" for c in client.containers()["items"])
    # The operator allows more: the same copy now fits (the request is not memory in use).
    node = admin.set_node(name, overcommit=2.0)
    assert node["capacity"]["overcommit"] == 2.0
    assert node["capacity"]["memory_capacity_bytes"] == 2 * cap["memory_total_bytes"]
    spec = TenantSpec(limits={"memory_mib": ask, "memory_request_mib": ask})
    made = client.copy("bigcap", spec)
    rec = admin.container(made["id"])
    assert "request (asked)" in rec["placement"]
    assert rec["limits"]["memory_request_mib"] == ask
    assert rec["id"] not in before
    client.delete(rec["id"])
    admin.set_node(name, overcommit=1.0, reserve="auto")
    with Client(fleet.url, fleet.admin_token) as again:
        assert again.nodes()[0]["capacity"]["overcommit"] == 1.0
