"""The engine's pipeline on fake drivers: ordering, undo on every step, lifecycle, reconcile.

The real drivers run the same flows in tests/integration/test_node.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hoody.agent.config import NodeConfig
from hoody.agent.engine import LOG_CHECK_EVERY, Node
from hoody.agent.network.fake import FakeFirewall, FakeNetwork
from hoody.agent.runtime.fake import FakeRuntime
from hoody.agent.spec import TenantSpec
from hoody.agent.state import NodeStore
from hoody.agent.storage.fake import FakeStorage
from hoody.agent.templates import TemplateSource
from hoody.errors import Conflict, HostError, InvalidInput, NotFound


def _rootfs(target: Path) -> None:
    (target / "app").mkdir()
    (target / "app" / "server.py").write_text("print('hi')\n")


SOURCE = TemplateSource(_rootfs, "a test rootfs")
Factory = Callable[[], Node]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Factory]:
    """Build a Node on fakes; calling it again gives a *restarted* agent on the same host."""
    config = NodeConfig(
        name="tu", state_dir=tmp_path / "state", run_dir=tmp_path / "run", pool=tmp_path / "pool"
    )
    config.log_dir.mkdir(parents=True)
    host = {
        "storage": FakeStorage(tmp_path / "storage"),
        "network": FakeNetwork(config.network),
        "firewall": FakeFirewall(config.network),
        "runtime": FakeRuntime(),
    }
    nodes: list[Node] = []

    def make() -> Node:
        node = Node(config=config, store=NodeStore(config.db_path), **host)  # type: ignore[arg-type]
        node.reconcile()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.store.close()


@pytest.fixture
def node(make_node: Factory) -> Node:
    node = make_node()
    node.create_template("app", SOURCE, args=["/usr/bin/python3", "/app/server.py"])
    return node


def fakes(node: Node) -> tuple[FakeStorage, FakeNetwork, FakeFirewall, FakeRuntime]:
    return node.storage, node.network, node.firewall, node.runtime  # type: ignore[return-value]


def nothing_of(node: Node, tid: str) -> bool:
    storage, network, firewall, runtime = fakes(node)
    return (
        tid not in storage.list_tenants()
        and tid not in network.list_attached()
        and tid not in firewall.list_tenants()
        and tid not in runtime.list()
        and not list(node.config.log_dir.glob(f"{tid}.log*"))
        and tid not in {t.id for t in node.tenants()}
    )


def test_copy_runs_every_step_and_keeps_the_template_defaults(node: Node) -> None:
    rec = node.copy("app", TenantSpec(name="t1", env={"PLAN": "pro"}, limits={"memory_mib": 64}))
    storage, network, firewall, runtime = fakes(node)
    assert rec.status == "running" and rec.pid > 0
    assert storage.is_mounted("t1")
    assert network.attached["t1"] == rec.ip
    assert firewall.policies["t1"] == (rec.ip, rec.firewall)
    spec = runtime.containers["t1"].spec
    assert spec.args == ("/usr/bin/python3", "/app/server.py")
    assert spec.env["PLAN"] == "pro" and spec.env["HOODY_TENANT"] == "t1"
    assert spec.limits.memory_mib == 64
    assert spec.netns == node.config.network.netns_path("t1")


@pytest.mark.parametrize("step", ["network", "runtime"])
def test_a_failure_at_any_step_undoes_the_steps_before(node: Node, step: str) -> None:
    _, network, _, runtime = fakes(node)
    if step == "network":
        network.fail_attach.add("half")
    else:
        runtime.fail_start.add("half")
    with pytest.raises(HostError, match="injected"):
        node.copy("app", TenantSpec(name="half"))
    assert nothing_of(node, "half")
    # A failed copy frees its id and its address.
    rec = node.copy("app", TenantSpec(name="half"))
    assert rec.ip == str(node.config.network.gateway + 1)


def test_bad_input_is_refused_before_anything_is_made(node: Node) -> None:
    with pytest.raises(NotFound, match="template"):
        node.copy("nope")
    with pytest.raises(InvalidInput, match="memory_mib"):
        node.copy("app", TenantSpec(name="bad", limits={"memory_mib": 1}))
    with pytest.raises(InvalidInput, match="DNS-label"):
        node.copy("app", TenantSpec(name="Bad_Name"))
    with pytest.raises(InvalidInput, match="unknown limit"):
        node.copy("app", TenantSpec(limits={"gpu": 1}))
    with pytest.raises(InvalidInput, match="port"):
        node.copy("app", TenantSpec(firewall={"ingress": [{"port": 70000}]}))
    assert node.tenants() == []


def test_ids_are_never_reused_and_delete_twice_is_harmless(node: Node) -> None:
    node.copy("app", TenantSpec(name="once"))
    assert node.delete("once") is True
    assert nothing_of(node, "once")
    assert node.delete("once") is False
    with pytest.raises(Conflict, match="never reused"):
        node.copy("app", TenantSpec(name="once"))
    with pytest.raises(NotFound):
        node.delete("never-existed")


def test_stop_start_keeps_the_address_and_files(node: Node) -> None:
    rec = node.copy("app", TenantSpec(name="t1"))
    node.stop("t1")
    _, _, _, runtime = fakes(node)
    assert node.tenant("t1").status == "stopped" and "t1" not in runtime.list()
    again = node.start("t1")
    assert again.ip == rec.ip and again.status == "running"


def test_supervisor_restarts_a_crashed_tenant_with_backoff(node: Node) -> None:
    node.copy("app", TenantSpec(name="t1"))
    _, _, _, runtime = fakes(node)
    runtime.crash("t1")
    assert node.supervise_once(now=1000.0) == ["t1"]
    runtime.crash("t1")
    assert node.supervise_once(now=1000.5) == []  # backoff: 1 s after the first restart
    assert node.supervise_once(now=1001.5) == ["t1"]
    node.stop("t1")
    assert node.supervise_once(now=2000.0) == []  # a stopped tenant stays stopped


def test_the_supervisor_rotates_logs_past_their_size_every_few_seconds(node: Node) -> None:
    node.copy("app", TenantSpec(name="t1"))
    log = node.log_path("t1")
    log.write_bytes(b"x" * (node.config.log_max_bytes + 1))
    node.supervise_once(now=1000.0)
    assert log.stat().st_size == 0
    assert log.with_name("t1.log.1").stat().st_size == node.config.log_max_bytes + 1
    log.write_bytes(b"y" * (node.config.log_max_bytes + 1))
    node.supervise_once(now=1000.0 + LOG_CHECK_EVERY / 2)
    assert log.stat().st_size > 0, "not looked at again so soon"
    node.supervise_once(now=1000.0 + LOG_CHECK_EVERY)
    assert log.stat().st_size == 0
    assert log.with_name("t1.log.2").exists()


def test_restarted_agent_keeps_running_tenants_and_removes_half_made_ones(
    make_node: Factory,
) -> None:
    first = make_node()
    first.create_template("app", SOURCE)
    kept = first.copy("app", TenantSpec(name="kept"))
    first.copy("app", TenantSpec(name="half"))
    first.store.update_tenant("half", status="creating")  # the agent died mid-copy
    storage, network, _, _ = fakes(first)
    # Something on the host without any record: an orphan.
    storage.create_tenant("orphan", storage.list_template_versions()[0], "overlay", 64, 0)
    network.attach("orphan", "10.88.9.9")

    second = make_node()
    assert {t.id for t in second.tenants()} == {"kept"}
    assert second.tenant("kept").pid == kept.pid, "a running tenant is not restarted"
    assert nothing_of(second, "half") and nothing_of(second, "orphan")


def test_template_in_use_cannot_be_deleted(node: Node) -> None:
    node.copy("app", TenantSpec(name="user"))
    with pytest.raises(Conflict, match="user"):
        node.delete_template("app")
    node.delete("user")
    node.delete_template("app")
    assert node.store.templates() == []


def test_snapshot_makes_a_new_version_from_a_tenant(node: Node) -> None:
    node.copy("app", TenantSpec(name="src"))
    rec = node.template_from_tenant("src")
    assert (rec.name, rec.version) == ("app", 2)
    child = node.copy("app", TenantSpec(name="child"))
    assert child.version == 2


def test_the_runtimes_host_parts_are_ready_on_start_and_gone_after_teardown(
    node: Node,
) -> None:
    runtime = fakes(node)[3]
    assert runtime.ready, "reconcile (agent start) readies lxcfs and co."
    runtime.ready = False
    node.supervise_once()
    assert runtime.ready, "each supervisor round brings back what died"
    node.teardown_all()
    assert not runtime.ready


@pytest.mark.parametrize("mode", ["stopped", "frozen"])
def test_a_sleeping_tenant_keeps_its_place_and_wakes(node: Node, mode: str) -> None:
    rec = node.copy("app", TenantSpec(name="t1"))
    storage, network, firewall, runtime = fakes(node)
    slept = node.sleep("t1", mode)
    assert (slept.status, slept.asleep) == ("sleeping", mode)
    assert node.tenant("t1").to_json()["sleep_mode"] == mode
    assert node.sleep("t1", "stopped").asleep == mode, "sleeping again changes nothing"
    # Address, files and firewall stay; only the processes sleep.
    assert storage.is_mounted("t1") and network.attached["t1"] == rec.ip
    assert "t1" in firewall.policies
    if mode == "frozen":
        assert runtime.frozen("t1") and runtime.state("t1").pid == rec.pid
        with pytest.raises(Conflict, match="frozen"):
            node.exec("t1", ["true"])
    else:
        assert runtime.state("t1").status == "absent"
    assert node.supervise_once(now=5000.0) == [], "the supervisor leaves a sleeper asleep"
    assert node.sleepers() == {"t1": {"mode": mode, "at": slept.slept_at}}
    woken, was = node.wake_from("t1")
    assert was == mode, "what it was woken from"
    assert woken.status == "running" and woken.ip == rec.ip and woken.asleep == ""
    assert node.sleepers() == {}
    assert runtime.state("t1").status == "running" and not runtime.frozen("t1")
    assert (woken.pid == rec.pid) is (mode == "frozen"), "a thaw keeps the processes"
    assert node.wake("t1").pid == woken.pid, "waking a running tenant is harmless"
    assert node.wake_from("t1")[1] == "", "it was awake"


def test_sleep_follows_the_policy_and_refuses_what_does_not_run(node: Node) -> None:
    node.create_template("quick", SOURCE, sleep={"idle_seconds": 60, "mode": "frozen"})
    rec = node.copy("quick", TenantSpec(name="q1"))
    assert rec.sleep.idle_seconds == 60 and rec.sleep.mode == "frozen"
    assert (
        node.copy("quick", TenantSpec(name="q2", sleep={"mode": "stopped"})).sleep.idle_seconds
        == 60
    )
    assert node.sleep("q1").asleep == "frozen"
    node.copy("app", TenantSpec(name="t1"))
    node.stop("t1")
    with pytest.raises(Conflict, match="only a running tenant"):
        node.sleep("t1")
    with pytest.raises(Conflict, match="not sleeping"):
        node.wake("t1")
    with pytest.raises(InvalidInput, match="sleep mode"):
        node.sleep("q2", "hibernate")
    with pytest.raises(InvalidInput, match="idle_seconds"):
        node.copy("app", TenantSpec(sleep={"idle_seconds": 0}))
    with pytest.raises(InvalidInput, match="unknown sleep setting"):
        node.copy("app", TenantSpec(sleep={"after": 5}))


def test_stop_start_and_delete_work_on_a_frozen_tenant(node: Node) -> None:
    node.copy("app", TenantSpec(name="t1"))
    _, _, _, runtime = fakes(node)
    node.sleep("t1", "frozen")
    assert node.start("t1").status == "running" and not runtime.frozen("t1")
    node.sleep("t1", "frozen")
    stopped = node.stop("t1")
    assert (stopped.status, stopped.asleep) == ("stopped", "")
    node.start("t1")
    node.sleep("t1", "frozen")
    node.delete("t1")
    assert nothing_of(node, "t1")


def test_a_restarted_agent_keeps_sleepers_asleep(make_node: Factory) -> None:
    first = make_node()
    first.create_template("app", SOURCE)
    frozen = first.copy("app", TenantSpec(name="cold"))
    first.copy("app", TenantSpec(name="nap"))
    first.sleep("cold", "frozen")
    first.sleep("nap", "stopped")
    second = make_node()
    _, _, _, runtime = fakes(second)
    assert second.tenant("cold").status == "sleeping" and runtime.frozen("cold")
    assert second.tenant("cold").pid == frozen.pid
    assert second.tenant("nap").status == "sleeping" and "nap" not in runtime.list()
    # A frozen tenant whose processes were lost (host restart) sleeps on, stopped.
    runtime.stop("cold")
    third = make_node()
    assert (third.tenant("cold").status, third.tenant("cold").asleep) == ("sleeping", "stopped")
    assert third.wake("cold").status == "running"


def test_a_copys_firewall_cannot_open_what_its_template_keeps_closed(make_node: Factory) -> None:
    node = make_node()
    metadata = {"action": "allow", "cidr": "169.254.169.254/32", "port": 80}
    node.create_template("app", SOURCE, args=["/app"])
    node.create_template("meta", SOURCE, args=["/app"], firewall={"egress": [metadata]})
    firewall = fakes(node)[2]
    with pytest.raises(InvalidInput, match="Only its template can"):
        node.copy("app", TenantSpec(name="sneaky", firewall={"egress": [metadata]}))
    assert nothing_of(node, "sneaky")
    # A broad allow of a copy reaches the internet, never metadata or loopback.
    broad = node.copy(
        "app",
        TenantSpec(name="broad", firewall={"egress": [{"action": "allow", "cidr": "0.0.0.0/0"}]}),
    )
    assert broad.firewall.egress[0].confined
    assert firewall.allows(broad.ip, "198.51.100.7", 443)
    assert not firewall.allows(broad.ip, "169.254.169.254", 80)
    assert not firewall.allows(broad.ip, "127.0.0.1", 80)
    # The template opened it: its copies may keep it, also in their own rules.
    plain = node.copy("meta", TenantSpec(name="plain"))
    own = node.copy(
        "meta", TenantSpec(name="own", firewall={"egress": [metadata], "egress_default": "deny"})
    )
    for rec in (plain, own):
        assert firewall.allows(rec.ip, "169.254.169.254", 80)
        assert not firewall.allows(rec.ip, "169.254.169.254", 443)
    assert not firewall.allows(own.ip, "198.51.100.7", 443), "its default is deny"
    # What the node keeps is what it applies after a restart.
    again = make_node()
    assert again.store.tenant("broad").firewall.egress[0].confined
