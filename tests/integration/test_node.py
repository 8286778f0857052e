"""Real tenants on a real node: what a user of the node engine would notice."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoody.agent.spec import TenantSpec
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode
from hoody.errors import Conflict, InvalidInput, NotFound
from hoody.proc import run


@pytest.fixture
def tenant(scratch: ScratchNode) -> Iterator[dict[str, Any]]:
    rec = scratch.client.copy("demo-app")
    wait_http_ok(rec["url"] + "healthz")
    yield rec
    scratch.client.delete(rec["id"])


def py(scratch: ScratchNode, tid: str, code: str, timeout: float = 30) -> dict[str, Any]:
    return scratch.client.exec(tid, ["/usr/bin/python3", "-c", code], timeout=timeout)


def visits(url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(url + "api/visits", timeout=5).json()
    return data


def test_tenant_answers_with_its_id_and_keeps_its_counter(scratch: ScratchNode) -> None:
    rec = scratch.client.copy("demo-app", TenantSpec(name="counter-test"))
    wait_http_ok(rec["url"] + "healthz")
    page = httpx.get(rec["url"], timeout=5)
    assert page.status_code == 200 and "counter-test" in page.text
    assert visits(rec["url"]) == {"tenant": "counter-test", "visits": 2}

    scratch.client.action("counter-test", "restart")
    wait_http_ok(rec["url"] + "healthz")
    assert visits(rec["url"])["visits"] == 3, "the SQLite counter survives a restart"

    rootfs = scratch.node.config.node_run_dir / "tenants" / "counter-test"
    scratch.client.delete("counter-test")
    assert not rootfs.exists()
    with pytest.raises(NotFound):
        scratch.client.tenant("counter-test")
    # The id is never reused, and a fresh tenant starts from the template's empty counter.
    with pytest.raises(Conflict):
        scratch.client.copy("demo-app", TenantSpec(name="counter-test"))
    fresh = scratch.client.copy("demo-app", TenantSpec(name="counter-test-2"))
    try:
        wait_http_ok(fresh["url"] + "healthz")
        assert visits(fresh["url"]) == {"tenant": "counter-test-2", "visits": 1}
    finally:
        scratch.client.delete("counter-test-2")


def test_tenant_root_is_an_unprivileged_host_uid(
    scratch: ScratchNode, tenant: dict[str, Any]
) -> None:
    pid = scratch.client.tenant(tenant["id"])["pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    ids = scratch.node.ids(scratch.node.tenant(tenant["id"]))
    assert uid_line.split()[1:] == [str(ids.base)] * 4, uid_line
    inside = py(scratch, tenant["id"], "import os; print(os.getuid())")
    assert inside["stdout"].strip() == "0", "root inside, unprivileged outside"
    assert (
        py(scratch, tenant["id"], "import socket; print(socket.gethostname())")["stdout"].strip()
        == tenant["id"]
    )


def test_memory_hog_is_killed_inside_its_own_cgroup(scratch: ScratchNode) -> None:
    hog = scratch.client.copy("demo-app", TenantSpec(limits={"memory_mib": 64}))
    neighbour = scratch.client.copy("demo-app")
    try:
        wait_http_ok(hog["url"])
        wait_http_ok(neighbour["url"])
        result = py(scratch, hog["id"], "x = bytearray(256 << 20); x[::4096] = b'1' * (65536)")
        assert result["exit_code"] != 0
        assert httpx.get(neighbour["url"], timeout=5).status_code == 200
        usage = scratch.client.tenant(hog["id"])["usage"]
        assert usage.get("oom_kill", 0) >= 1, usage
    finally:
        scratch.client.delete(hog["id"])
        scratch.client.delete(neighbour["id"])


def test_fork_bomb_is_capped_by_pids(scratch: ScratchNode) -> None:
    rec = scratch.client.copy("demo-app", TenantSpec(limits={"pids": 32}))
    try:
        wait_http_ok(rec["url"] + "healthz")
        code = (
            "import os, time\n"
            "n = 0\n"
            "try:\n"
            "    while n < 1000:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(3); os._exit(0)\n"
            "        n += 1\n"
            "except OSError as e:\n"
            "    print(n, e.errno)\n"
        )
        out = py(scratch, rec["id"], code)["stdout"].split()
        forked, errno = int(out[0]), int(out[1])
        assert forked < 32 and errno == 11, out  # EAGAIN from the pids controller
    finally:
        scratch.client.delete(rec["id"])


def test_cpu_spinner_stays_within_its_quota(scratch: ScratchNode) -> None:
    rec = scratch.client.copy("demo-app", TenantSpec(limits={"cpu": 0.2}))
    try:
        wait_http_ok(rec["url"] + "healthz")
        code = (
            "import time\n"
            "t = time.monotonic()\n"
            "while time.monotonic() - t < 2: pass\n"
            "print(time.process_time() / (time.monotonic() - t))\n"
        )
        share = float(py(scratch, rec["id"], code)["stdout"])
        assert share < 0.3, f"spinner got {share:.2f} of a core with a 0.2 quota"
    finally:
        scratch.client.delete(rec["id"])


def _listen(host: str) -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(8)
    threading.Thread(target=lambda: [srv.accept() for _ in range(8)], daemon=True).start()
    return srv, int(srv.getsockname()[1])


CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(1)\n"
    "try:\n"
    "    s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
    "except OSError as e:\n"
    "    print('closed', e)\n"
)


def _host_addresses() -> list[str]:
    """This host's own IPv4 addresses outside loopback (its LAN side, other bridges)."""
    out = run(["ip", "-4", "-o", "addr", "show"]).stdout
    found = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in found if not a.startswith("127.")]


def can_connect(scratch: ScratchNode, tid: str, host: str, port: int) -> bool:
    result = scratch.client.exec(tid, ["/usr/bin/python3", "-c", CONNECT, host, str(port)])
    return str(result["stdout"]).startswith("open")


def test_tenants_cannot_reach_each_other_the_host_or_the_agent(scratch: ScratchNode) -> None:
    a = scratch.client.copy("demo-app")
    b = scratch.client.copy("demo-app")
    srv, port = _listen("0.0.0.0")
    try:
        wait_http_ok(a["url"])
        wait_http_ok(b["url"])
        gateway = str(scratch.node.config.network.gateway)
        agent_port = int(scratch.url.rpartition(":")[2])
        assert can_connect(scratch, a["id"], a["ip"], 8080), "a tenant reaches itself"
        assert not can_connect(scratch, a["id"], b["ip"], 8080)
        assert not can_connect(scratch, a["id"], gateway, port)
        assert not can_connect(scratch, a["id"], gateway, agent_port)
        for address in _host_addresses():
            assert not can_connect(scratch, a["id"], address, port), f"host address {address}"
        assert httpx.get(b["url"], timeout=5).status_code == 200, "the node reaches B's port"
    finally:
        srv.close()
        scratch.client.delete(a["id"])
        scratch.client.delete(b["id"])


def test_a_rule_can_let_one_tenant_reach_another(scratch: ScratchNode) -> None:
    subnet = scratch.node.config.subnet
    a = scratch.client.copy(
        "demo-app",
        TenantSpec(firewall={"egress": [{"action": "allow", "cidr": subnet, "port": 8080}]}),
    )
    b = scratch.client.copy(
        "demo-app",
        TenantSpec(
            firewall={"ingress": [{"port": 8080}, {"port": 8080, "source": a["ip"] + "/32"}]}
        ),
    )
    c = scratch.client.copy("demo-app")
    try:
        for t in (a, b, c):
            wait_http_ok(t["url"])
        assert can_connect(scratch, a["id"], b["ip"], 8080), "A allowed out, B admits A"
        assert not can_connect(scratch, a["id"], c["ip"], 8080), "C does not admit A"
        assert not can_connect(scratch, c["id"], b["ip"], 8080), "C has no egress rule"
    finally:
        for t in (a, b, c):
            scratch.client.delete(t["id"])


def test_tenants_past_a_bridges_port_ceiling_answer_and_stay_isolated() -> None:
    # A Linux bridge holds at most 1,023 ports; a node puts each block of addresses on
    # a bridge of its own. With 4 addresses per bridge the first bridge holds .2 and .3
    # (.0 and the gateway .1 are in its block), so the third tenant is on the second.
    from hoody.bench.scratch import scratch_node

    with scratch_node("pb", ports_per_bridge=4) as node:
        node.demo_template()
        subnet = node.node.config.subnet
        first = node.client.copy("demo-app")
        # Admits any tenant that is itself allowed out to it.
        second = node.client.copy(
            "demo-app",
            TenantSpec(firewall={"ingress": [{"port": 8080}, {"port": 8080, "source": subnet}]}),
        )
        rest = [node.client.copy("demo-app") for _ in range(3)]
        past = rest[-1]  # .6, with .4 and .5 as neighbours on the second bridge
        prober = node.client.copy(  # .7: may go out to any tenant's 8080
            "demo-app",
            TenantSpec(firewall={"egress": [{"action": "allow", "cidr": subnet, "port": 8080}]}),
        )
        config = node.node.config.network
        assert config.bridge_index(first["ip"]) == 0
        assert config.bridge_index(past["ip"]) == config.bridge_index(prober["ip"]) == 1
        bridges = run(["ip", "-o", "link", "show", "type", "bridge"]).stdout
        assert f"{config.bridge_name(1)}:" in bridges
        for t in (first, second, *rest, prober):
            wait_http_ok(t["url"])
        assert httpx.get(past["url"], timeout=5).status_code == 200, "the node reaches it"
        gateway = str(config.gateway)
        # Isolated from neighbours on its own bridge and on the first, and from the host.
        for other in (first, second, rest[0], rest[1]):
            assert not can_connect(node, past["id"], other["ip"], 8080), other["ip"]
            assert not can_connect(node, other["id"], past["ip"], 8080), other["ip"]
        assert not can_connect(node, past["id"], gateway, int(node.url.rpartition(":")[2]))
        # Across bridges the firewall decides as on one: the prober reaches only the
        # tenant that admits it; one without an egress rule reaches nobody.
        assert can_connect(node, prober["id"], second["ip"], 8080)
        assert not can_connect(node, prober["id"], past["ip"], 8080)
        assert not can_connect(node, past["id"], second["ip"], 8080)


def _leftovers(scratch: ScratchNode, tid: str) -> list[str]:
    config = scratch.node.config
    found = []
    if (config.pool / "tenants" / tid).exists():
        found.append("subvolume")
    if tid in Path("/proc/self/mountinfo").read_text():
        found.append("mount")
    for controller in ("memory", "pids", "cpu"):
        if (Path("/sys/fs/cgroup") / controller / config.cgroup_parent / tid).exists():
            found.append(f"cgroup {controller}")
    if config.network.netns_path(tid).exists():
        found.append("netns")
    nft = subprocess.run(
        ["nft", "list", "table", "inet", config.network.table], capture_output=True, text=True
    ).stdout
    if f"t-{tid}" in nft:
        found.append("nft chain")
    if list(config.log_dir.glob(f"{tid}.log*")):
        found.append("log")
    if any(t.id == tid for t in scratch.node.store.tenants()):
        found.append("record")
    return found


def test_delete_leaves_nothing_and_twice_is_harmless(scratch: ScratchNode) -> None:
    links_before = _links(scratch)
    rec = scratch.client.copy("demo-app")
    wait_http_ok(rec["url"] + "healthz")
    assert _links(scratch) == links_before + 1
    assert scratch.client.delete(rec["id"])["existed"] is True
    assert _leftovers(scratch, rec["id"]) == []
    assert _links(scratch) == links_before
    assert scratch.client.delete(rec["id"])["existed"] is False
    with pytest.raises(NotFound):
        scratch.client.delete("never-made-this-one")


def _links(scratch: ScratchNode) -> int:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout
    prefix = scratch.node.config.name
    return sum(
        1
        for link in json.loads(out)
        if link["ifname"].startswith(prefix) and "br" not in link["ifname"]
    )


def test_bad_input_is_refused_and_leaves_nothing(scratch: ScratchNode) -> None:
    before = {t.id for t in scratch.node.store.tenants()}
    with pytest.raises(NotFound, match="template ls"):
        scratch.client.copy("no-such-template")
    with pytest.raises(InvalidInput, match="DNS-label"):
        scratch.client.copy("demo-app", TenantSpec(name="Not_A_Label"))
    with pytest.raises(InvalidInput, match="memory_mib"):
        scratch.client.copy("demo-app", TenantSpec(limits={"memory_mib": -5}))
    with pytest.raises(InvalidInput, match="unknown limit"):
        scratch.client.copy("demo-app", TenantSpec(limits={"gpus": 1}))
    with pytest.raises(InvalidInput, match="CIDR"):
        scratch.client.copy(
            "demo-app", TenantSpec(firewall={"egress": [{"action": "allow", "cidr": "x"}]})
        )
    with pytest.raises(InvalidInput, match="port"):
        scratch.client.copy("demo-app", TenantSpec(firewall={"ingress": [{"port": 70000}]}))
    assert {t.id for t in scratch.node.store.tenants()} == before
    assert sorted(p.name for p in (scratch.node.config.pool / "tenants").iterdir()) == sorted(
        before
    )


def test_a_failed_copy_undoes_every_step(scratch: ScratchNode) -> None:
    # A template whose entrypoint does not exist: the runtime refuses at start, which is
    # the last step of a copy; everything before it must be rolled back.
    scratch.client.create_template(
        "broken",
        {"rootfs": str(scratch.node.config.pool / "templates" / "demo-app" / "1")},
        args=["/does/not/exist"],
    )
    try:
        before = {t.id for t in scratch.node.store.tenants()}
        with pytest.raises(Exception):  # noqa: B017 - the runtime's own error
            scratch.client.copy("broken", TenantSpec(name="half-made"))
        assert _leftovers(scratch, "half-made") == []
        assert {t.id for t in scratch.node.store.tenants()} == before
        # The id was never really used, so it is free again.
        assert not scratch.node.store.id_used("half-made")
    finally:
        scratch.client.delete_template("broken")


def test_disk_limit_gives_enospc_inside_that_tenant_only(scratch: ScratchNode) -> None:
    small = scratch.client.copy("demo-app", TenantSpec(limits={"disk_mib": 32}))
    other = scratch.client.copy("demo-app")
    try:
        wait_http_ok(small["url"])
        fill = (
            "import errno\n"
            "f = open('/var/tmp/fill', 'wb')\n"
            "try:\n"
            "    for _ in range(128):\n"
            "        f.write(b'x' * (1 << 20)); f.flush()\n"
            "    import os; os.fsync(f.fileno()); print('wrote all')\n"
            "except OSError as e:\n"
            "    print('full', errno.errorcode[e.errno])\n"
        )
        out = py(scratch, small["id"], fill)["stdout"]
        assert out.startswith("full"), out
        assert "EDQUOT" in out or "ENOSPC" in out
        out2 = py(scratch, other["id"], fill.replace("range(128)", "range(40)"))["stdout"]
        assert out2.startswith("wrote all"), out2
        # Quota accounting is settled at each btrfs commit (every 30 s by default).
        run(["btrfs", "filesystem", "sync", str(scratch.node.config.pool)])
        usage = scratch.client.tenant(other["id"])["usage"]["disk_bytes"]
        assert usage >= 30 << 20, usage
    finally:
        scratch.client.delete(small["id"])
        scratch.client.delete(other["id"])


def test_exits_are_restarted_and_logs_are_kept(
    scratch: ScratchNode, tenant: dict[str, Any]
) -> None:
    tid = tenant["id"]
    assert "listening on :8080" in scratch.client.logs(tid)
    pid = scratch.client.tenant(tid)["pid"]
    os.kill(pid, 9)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rec = scratch.client.tenant(tid)
        if rec["pid"] not in (0, pid) and rec["state"] == "running":
            break
        time.sleep(0.2)
    else:
        pytest.fail("the tenant was not restarted after its main process died")
    wait_http_ok(tenant["url"])
    assert scratch.client.logs(tid).count("listening on :8080") == 2


def test_stop_start_keeps_address_and_files(scratch: ScratchNode, tenant: dict[str, Any]) -> None:
    tid = tenant["id"]
    py(scratch, tid, "open('/root/note', 'w').write('kept')")
    stopped = scratch.client.action(tid, "stop")
    assert stopped["state"] == "stopped"
    with pytest.raises(httpx.TransportError):
        httpx.get(tenant["url"], timeout=1)
    started = scratch.client.action(tid, "start")
    assert started["ip"] == tenant["ip"]
    wait_http_ok(tenant["url"])
    assert py(scratch, tid, "print(open('/root/note').read())")["stdout"].strip() == "kept"


def test_snapshot_makes_a_new_version_and_copies_see_it(
    scratch: ScratchNode, tenant: dict[str, Any]
) -> None:
    tid = tenant["id"]
    py(scratch, tid, "open('/etc/motd', 'w').write('from the snapshot')")
    version = scratch.client.action(tid, "snapshot", {"template": "snapped"})
    assert version["name"] == "snapped" and version["version"] == 1
    child = scratch.client.copy("snapped")
    try:
        wait_http_ok(child["url"])
        out = py(scratch, child["id"], "print(open('/etc/motd').read())")["stdout"]
        assert out.strip() == "from the snapshot"
        with pytest.raises(Conflict, match="delete them first"):
            scratch.client.delete_template("snapped")
    finally:
        scratch.client.delete(child["id"])
        scratch.client.delete_template("snapped")


def _cpu_seconds(scratch: ScratchNode, tid: str) -> float:
    base = Path("/sys/fs/cgroup/cpuacct") / scratch.node.config.cgroup_parent / tid
    if base.exists():
        return int((base / "cpuacct.usage").read_text()) / 1e9
    stat = Path("/sys/fs/cgroup") / scratch.node.config.cgroup_parent / tid / "cpu.stat"
    return int(stat.read_text().split()[1]) / 1e6


def _memory_charged(scratch: ScratchNode, tid: str) -> int:
    """Every byte charged to the tenant's memory cgroup, file cache included: the
    working set the API reports moves as the kernel ages pages, frozen or not."""
    base = Path("/sys/fs/cgroup/memory") / scratch.node.config.cgroup_parent / tid
    if base.exists():
        return int((base / "memory.usage_in_bytes").read_text())
    path = Path("/sys/fs/cgroup") / scratch.node.config.cgroup_parent / tid / "memory.current"
    return int(path.read_text())


def test_a_frozen_tenant_keeps_its_memory_and_uses_no_cpu_until_woken(
    scratch: ScratchNode, tenant: dict[str, Any]
) -> None:
    tid = tenant["id"]
    py(scratch, tid, "open('/root/note', 'w').write('kept')")
    scratch.client.exec(tid, ["/bin/sh", "-c", "while :; do :; done >/dev/null 2>&1 &"], timeout=10)
    memory = _memory_charged(scratch, tid)
    slept = scratch.client.sleep(tid, "frozen")
    assert (slept["state"], slept["sleep_mode"], slept["pid"]) == (
        "sleeping",
        "frozen",
        tenant["pid"],
    )
    before = _cpu_seconds(scratch, tid)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(tenant["url"], timeout=0.5)  # the kernel takes the connection; nobody answers
    time.sleep(0.5)
    assert _cpu_seconds(scratch, tid) - before < 0.01, "a frozen spinner used CPU"
    assert _memory_charged(scratch, tid) >= memory * 0.9
    time.sleep(1.5)
    assert scratch.client.tenant(tid)["state"] == "sleeping", "the supervisor woke it"
    start = time.monotonic()
    woken = scratch.client.wake(tid)
    assert woken["state"] == "running" and woken["pid"] == tenant["pid"]
    wait_http_ok(tenant["url"] + "healthz")
    assert time.monotonic() - start < 1.0
    assert py(scratch, tid, "print(open('/root/note').read())")["stdout"].strip() == "kept"


def test_a_command_into_a_frozen_tenant_is_refused_not_left_hanging(
    scratch: ScratchNode, tenant: dict[str, Any]
) -> None:
    """Collected and streamed exec alike: the command would join the frozen cgroup."""
    tid = tenant["id"]
    scratch.client.sleep(tid, "frozen")
    with pytest.raises(Conflict, match="frozen"):
        scratch.node.exec(tid, ["true"], timeout=10)
    with pytest.raises(Conflict, match="frozen"):
        scratch.node.open_exec(tid, ["true"])
    scratch.client.wake(tid)
    assert scratch.node.exec(tid, ["true"], timeout=10).exit_code == 0


def test_a_stopped_sleeper_frees_its_memory_and_wakes_with_its_files(
    scratch: ScratchNode, tenant: dict[str, Any]
) -> None:
    tid = tenant["id"]
    py(scratch, tid, "open('/root/note', 'w').write('kept')")
    slept = scratch.client.sleep(tid, "stopped")
    assert (slept["state"], slept["sleep_mode"], slept["pid"]) == ("sleeping", "stopped", 0)
    assert scratch.client.tenant(tid)["usage"]["memory_bytes"] == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(tenant["url"], timeout=1)
    time.sleep(1.5)
    assert scratch.client.tenant(tid)["state"] == "sleeping", "the supervisor restarted it"
    woken = scratch.client.wake(tid)
    assert woken["state"] == "running" and woken["ip"] == tenant["ip"]
    wait_http_ok(tenant["url"] + "healthz")
    assert py(scratch, tid, "print(open('/root/note').read())")["stdout"].strip() == "kept"
