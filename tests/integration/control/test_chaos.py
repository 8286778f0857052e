"""Chaos: SIGKILL the control plane, and separately an agent, at random points while
clients copy and delete, restart them, and check that the fleet converges.

Real processes (a control plane and two agents on this host, real tenants). Clients
retry as a billing webhook would: the same idempotency key until a copy is
acknowledged, the same delete until it is. After the last crash and one reconcile
period: no row is `creating` or `deleting`, every node's tenants are exactly its live
rows, nothing is on the host that the agents do not know of, every acknowledged
copy exists and answers, every acknowledged delete is gone.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hoody.agent.linux import build_node
from hoody.agent.templates import DEMO_ARGS, DEMO_NAME
from hoody.bench.fleet import ScratchFleet, scratch_fleet
from hoody.bench.provision import wait_http_ok
from hoody.control.client import Client
from hoody.errors import HoodyError, NotFound
from hoody.proc import run
from tests.integration.control.test_fleet import leftovers, on_nodes, wait_for

CGROUP_ROOT = Path("/sys/fs/cgroup")
RECONCILE_EVERY = 1.0
CREATING_DEADLINE = 3.0
ORPHAN_GRACE = 3.0


@dataclass
class Ledger:
    """What the clients were told, under one lock."""

    copied: dict[str, str] = field(default_factory=dict)  # cid -> idempotency key
    deleted: set[str] = field(default_factory=set)
    # Deletes sent but never acknowledged (the worker stopped while retrying): the
    # container may be gone or not, but not half of either.
    attempted: set[str] = field(default_factory=set)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def fleet() -> Iterator[ScratchFleet]:
    args = ("--reconcile-every", str(RECONCILE_EVERY), "--creating-deadline")
    args += (str(CREATING_DEADLINE), "--orphan-grace", str(ORPHAN_GRACE))
    with scratch_fleet(2, heartbeat_timeout=4.0, server_args=args) as f:
        names = [n.name for n in f.nodes]
        with f.nodes[0].client() as agent:
            agent.create_template(DEMO_NAME, {"demo": True}, args=DEMO_ARGS)
        wait_for(
            lambda: (
                set(on_nodes(f.admin, DEMO_NAME, 1).values()) == {"ready"}
                and len(on_nodes(f.admin, DEMO_NAME, 1)) == 2
            ),
            "demo-app ready on both nodes",
            120,
        )
        yield f
    assert leftovers(names) == []


def cgroups_under(parent: str) -> set[str]:
    """The cgroups under a node's parent cgroup (its tenants'), in every hierarchy."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # v2: one hierarchy
        roots = [CGROUP_ROOT]
    else:
        roots = [h for h in CGROUP_ROOT.iterdir() if h.is_dir()]
    return {
        p.name for r in roots if (r / parent).is_dir() for p in (r / parent).iterdir() if p.is_dir()
    }


def why_silent(fleet: ScratchFleet, cid: str) -> str:
    """What a running tenant that does not answer looks like on its node: the agent's
    record, the tenant's log, its listeners, and the tail of the agent's log (a failure
    seen once in CI, never reproduced)."""
    out = []
    for node in fleet.nodes:
        with node.client() as agent:
            recs = [t for t in agent.tenants() if t["id"] == cid]
        if not recs:
            continue
        log = node.config.log_dir / f"{cid}.log"
        tenant_log = log.read_text()[-2000:] if log.exists() else "(no log)"
        listening = run(
            ["ip", "netns", "exec", node.config.network.netns_name(cid), "ss", "-ltnp"],
            check=False,
        )
        init = run(["ps", "-o", "pid,ppid,stat,args", "-p", str(recs[0]["pid"])], check=False)
        agent_log = node.log.read_text().splitlines()[-60:]
        out += [f"node {node.name}: {recs[0]}", f"its init:\n{init.stdout}"]
        out += [f"tenant log:\n{tenant_log}"]
        out += [f"listening:\n{listening.stdout}{listening.stderr}", "agent log:", *agent_log]
    return "\n".join(out)


def client_loop(url: str, token: str, n: int, ledger: Ledger, stop: threading.Event) -> None:
    rng = random.Random(n)
    mine: list[str] = []
    with Client(url, token, timeout=60) as client:
        attempt = 0
        while not stop.is_set():
            attempt += 1
            if mine and rng.random() < 0.4:
                cid = mine[0]
                with ledger.lock:
                    ledger.attempted.add(cid)
                try:
                    client.delete(cid)
                except HoodyError:
                    with ledger.lock:
                        ledger.errors += 1
                    time.sleep(0.2)
                    continue  # not acknowledged: the same delete again
                mine.pop(0)
                with ledger.lock:
                    ledger.deleted.add(cid)
                continue
            key = f"c{n}-{attempt}"
            while not stop.is_set():
                try:
                    made = client.copy(DEMO_NAME, idempotency_key=key)
                except HoodyError:
                    with ledger.lock:
                        ledger.errors += 1
                    time.sleep(0.2)
                    continue  # not acknowledged: the same key again
                mine.append(made["id"])
                with ledger.lock:
                    ledger.copied[made["id"]] = key
                break


def test_the_fleet_converges_after_sigkills_during_churn(fleet: ScratchFleet) -> None:
    project = fleet.admin.create_project("chaos")["id"]
    token = fleet.admin.create_token("project", project_id=project)["token"]
    ledger = Ledger()
    stop = threading.Event()
    workers = [
        threading.Thread(target=client_loop, args=(fleet.url, token, n, ledger, stop))
        for n in range(4)
    ]
    for w in workers:
        w.start()
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    # Three control plane crashes and two of each agent, one at a time, in random order.
    victims = ["control"] * 3 + [n.name for n in fleet.nodes] * 2
    rng.shuffle(victims)
    print(f"chaos: seed {seed}, crashes in order {victims}")
    try:
        for victim in victims:
            time.sleep(rng.uniform(0.3, 2.0))
            if victim == "control":
                fleet.kill_control()
                time.sleep(rng.uniform(0.0, 0.5))
                fleet.start_control()
            else:
                node = fleet.node(victim)
                node.kill()
                time.sleep(rng.uniform(0.0, 0.5))
                node.start()
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(120)
    assert not any(w.is_alive() for w in workers)
    assert len(ledger.copied) >= 8, f"too little churn to mean anything: {ledger}"
    fleet.wait_nodes("up")

    admin = fleet.admin

    def live_rows() -> dict[str, dict[str, Any]]:
        return {
            c["id"]: c
            for state in ("running", "stopped", "failed")
            for c in admin.containers(state=state, limit=500)["items"]
        }

    def settled() -> bool:
        moving = [
            c["id"]
            for state in ("creating", "deleting")
            for c in admin.containers(state=state, limit=500)["items"]
        ]
        if moving or admin.orphans():
            return False
        # An orphan is listed only once a reconcile round has seen it: until then an
        # empty list proves nothing, so wait for the nodes to agree with the rows too.
        rows = live_rows()
        for node in fleet.nodes:
            with node.client() as agent:
                on_node = {t["id"] for t in agent.tenants()}
            if on_node != {cid for cid, c in rows.items() if c["node"] == node.name}:
                return False
        return True

    # One reconcile period after the deadline, plus the orphan grace and margin.
    wait_for(settled, "no transitional rows and no orphans", CREATING_DEADLINE + ORPHAN_GRACE + 15)

    rows = live_rows()
    for node in fleet.nodes:
        with node.client() as agent:
            on_node = {t["id"] for t in agent.tenants()}
        live = {cid for cid, c in rows.items() if c["node"] == node.name}
        assert on_node == live, (
            f"{node.name}: tenants without rows {on_node - live}, "
            f"rows without tenants {live - on_node}"
        )
        host = build_node(node.config)
        try:
            found = {
                "storage": set(host.storage.list_tenants()),
                "netns": set(host.network.list_attached()),
                "nft": set(host.firewall.list_tenants()),
                "runtime": set(host.runtime.list()),
            }
        finally:
            host.store.close()
        for kind, ids in found.items():
            assert ids == on_node, f"{node.name} {kind} leaked or lost: {ids ^ on_node}"
        # A tenant that is not running has no cgroup; one that is gone must have none.
        cgroups = cgroups_under(node.config.cgroup_parent)
        running = {cid for cid in live if rows[cid]["state"] == "running"}
        assert running <= cgroups, f"{node.name}: looked for cgroups in the wrong place"
        assert cgroups <= on_node, f"{node.name} cgroups of no tenant: {cgroups - on_node}"

    with Client(fleet.url, token) as client:
        for cid in ledger.copied:
            if cid in ledger.deleted:
                with pytest.raises(NotFound, match="was deleted"):
                    client.container(cid)
                continue
            if cid in ledger.attempted:
                try:
                    got = client.container(cid)
                except NotFound:
                    continue  # the delete took effect; its answer was lost
            else:
                got = client.container(cid)
            assert got["state"] == "running", got
            # No router here: the node-local URL is the admin's to know.
            url = admin.container(cid)["url"]
            try:
                wait_http_ok(url, timeout=20)
            except TimeoutError:
                pytest.fail(f"{cid} does not answer at {url}\n{why_silent(fleet, cid)}")
        # The same key answers with the same container after every crash.
        for cid, key in list(ledger.copied.items())[:5]:
            if cid not in ledger.attempted:
                assert client.copy(DEMO_NAME, idempotency_key=key)["id"] == cid
        for cid in set(ledger.copied) - ledger.deleted:
            client.delete(cid)  # harmless when already gone
    log = (fleet.control_dir / "server.log").read_text()
    print(
        f"chaos: {len(ledger.copied)} copies and {len(ledger.deleted)} deletes acknowledged, "
        f"{ledger.errors} failed calls retried; reconcile adopted "
        f"{log.count('left creating; node')}, failed {log.count('marked failed')}, finished "
        f"{log.count('delete finished')} deletes, released {log.count('released idempotency')} "
        f"keys, saw {log.count('no container row accounts for')} orphans"
    )
