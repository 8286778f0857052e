from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hoody.agent.ids import TenantIds
from hoody.agent.runtime import ContainerSpec, RuntimeCaps
from hoody.agent.runtime.bundle import (
    ALLOWED_SYSCALLS,
    DENIED_SYSCALLS,
    INIT_PATH,
    HostParts,
    oci_config,
    seccomp_profile,
)
from hoody.agent.spec import Limits

CAPS = RuntimeCaps(name="runc", cgroup="v1", memory_merge=False)


def config(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "tid": "shop-abc123",
        "rootfs": Path("/run/hoody/n1/tenants/shop-abc123/rootfs"),
        "args": ("python3", "-m", "http.server", "8080"),
        "limits": Limits(cpu=0.5, memory_mib=128, pids=64),
        "netns": Path("/run/netns/n1-shop-abc123"),
        "log_path": Path("/var/lib/hoody/logs/shop-abc123.log"),
        "env": {"PORT": "8080"},
        "cwd": "/srv",
        "ids": TenantIds(owner=1_000_000_007, base=1_000_524_288),
        "userns": Path("/proc/42/fd/7"),
    }
    fields.update(changes)
    return oci_config(ContainerSpec(**fields), "hoody-n1", CAPS)


def test_is_plain_json() -> None:
    assert json.loads(json.dumps(config())) == config()


def test_tenant_root_maps_to_its_own_range_in_the_namespace_made_for_it() -> None:
    linux = config()["linux"]
    expected = [{"containerID": 0, "hostID": 1_000_524_288, "size": 65536}]
    assert linux["uidMappings"] == expected
    assert linux["gidMappings"] == expected
    # Joined by path: the runtime neither makes it (root would own it) nor maps it.
    assert {"type": "user", "path": "/proc/42/fd/7"} in linux["namespaces"]


def test_namespaces_and_no_network_namespace_of_its_own() -> None:
    types = [ns["type"] for ns in config()["linux"]["namespaces"]]
    assert sorted(types) == ["cgroup", "ipc", "mount", "pid", "user", "uts"]
    no_cgroupns = oci_config(
        ContainerSpec(
            tid="a",
            rootfs=Path("/r"),
            args=("x",),
            limits=Limits(),
            netns=Path("/n"),
            log_path=Path("/l"),
            ids=TenantIds(owner=1, base=65536),
            userns=Path("/u"),
        ),
        "p",
        RuntimeCaps(name="runc", cgroup="v1", memory_merge=False, cgroupns=False),
    )
    assert "cgroup" not in [ns["type"] for ns in no_cgroupns["linux"]["namespaces"]]


def test_process() -> None:
    process = config()["process"]
    assert process["args"] == ["python3", "-m", "http.server", "8080"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False
    # Not settable in a namespace root does not own; see runtime/userns.py.
    assert "rlimits" not in process
    env = dict(e.split("=", 1) for e in process["env"])
    assert env["HOSTNAME"] == "shop-abc123"
    assert env["HOME"] == "/root"
    assert env["PORT"] == "8080"
    assert "/usr/bin" in env["PATH"].split(":")


def with_host(host: HostParts, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "tid": "shop-abc123",
        "rootfs": Path("/r"),
        "args": ("python3", "app.py"),
        "limits": Limits(),
        "netns": Path("/run/netns/x"),
        "log_path": Path("/l"),
        "ids": TenantIds(owner=1, base=65536),
        "userns": Path("/u"),
        **changes,
    }
    return oci_config(ContainerSpec(**fields), "hoody-n1", CAPS, host)


def test_the_hosts_init_runs_in_front_of_the_entrypoint_read_only() -> None:
    cfg = with_host(HostParts(init=Path("/usr/bin/tini-static")))
    assert cfg["process"]["args"] == [INIT_PATH, "--", "python3", "app.py"]
    mount = next(m for m in cfg["mounts"] if m["destination"] == INIT_PATH)
    assert mount["source"] == "/usr/bin/tini-static"
    assert {"bind", "ro", "nosuid", "nodev"} <= set(mount["options"])
    assert INIT_PATH.startswith("/dev/"), "on the /dev tmpfs: nothing left on the tenant's disk"


def test_no_init_when_the_entrypoint_is_one_or_the_host_has_none() -> None:
    for cfg in (
        with_host(HostParts(init=Path("/usr/bin/tini-static")), init=False),
        with_host(HostParts()),
    ):
        assert cfg["process"]["args"] == ["python3", "app.py"]
        assert INIT_PATH not in [m["destination"] for m in cfg["mounts"]]


def test_io_limits_apply_to_every_disk_under_the_pool() -> None:
    limits = Limits(io_mbps=20, iops=500)
    cfg = with_host(HostParts(block_devices=((7, 3), (8, 0))), limits=limits)
    block = cfg["linux"]["resources"]["blockIO"]
    rates = {
        key: [(d["major"], d["minor"], d["rate"]) for d in value] for key, value in block.items()
    }
    assert rates == {
        "throttleReadBpsDevice": [(7, 3, 20 << 20), (8, 0, 20 << 20)],
        "throttleWriteBpsDevice": [(7, 3, 20 << 20), (8, 0, 20 << 20)],
        "throttleReadIOPSDevice": [(7, 3, 500), (8, 0, 500)],
        "throttleWriteIOPSDevice": [(7, 3, 500), (8, 0, 500)],
    }
    assert "blockIO" not in with_host(HostParts())["linux"]["resources"]


def test_env_of_the_template_overrides_defaults() -> None:
    env = dict(e.split("=", 1) for e in config(env={"PATH": "/app/bin"})["process"]["env"])
    assert env["PATH"] == "/app/bin"


def test_capabilities_are_dockers_without_net_raw() -> None:
    caps = config()["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert "CAP_NET_RAW" not in caps["bounding"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert {"CAP_CHOWN", "CAP_SETUID", "CAP_NET_BIND_SERVICE"} <= set(caps["bounding"])


def test_hostname_and_root() -> None:
    cfg = config()
    assert cfg["hostname"] == "shop-abc123"
    assert cfg["root"] == {"path": "/run/hoody/n1/tenants/shop-abc123/rootfs", "readonly": False}


def test_limits_math() -> None:
    res = config()["linux"]["resources"]
    assert res["cpu"] == {"quota": 50_000, "period": 100_000}
    assert res["memory"] == {"limit": 128 << 20, "swap": 128 << 20}  # swap = limit: none
    assert res["pids"] == {"limit": 64}
    tiny = config(limits=Limits(cpu=0.01))["linux"]["resources"]["cpu"]
    assert tiny["quota"] == 1000  # the kernel's minimum quota
    assert config(limits=Limits(cpu=2))["linux"]["resources"]["cpu"]["quota"] == 200_000


def test_a_cpuset_is_given_only_when_placed() -> None:
    spec = ContainerSpec(
        tid="shop-abc123",
        rootfs=Path("/r"),
        args=("app",),
        limits=Limits(cpu=1),
        netns=Path("/run/netns/x"),
        log_path=Path("/l"),
        ids=TenantIds(owner=1_000_000_007, base=1_000_524_288),
        userns=Path("/proc/42/fd/7"),
    )
    pinned = oci_config(spec, "hoody-n1", CAPS, cpus="1")["linux"]["resources"]["cpu"]
    assert pinned == {"quota": 100_000, "period": 100_000, "cpus": "1"}
    assert "cpus" not in oci_config(spec, "hoody-n1", CAPS)["linux"]["resources"]["cpu"]


def test_cgroup_path_is_absolute_under_the_node_parent() -> None:
    assert config()["linux"]["cgroupsPath"] == "/hoody-n1/shop-abc123"


def test_sys_is_an_empty_read_only_tmpfs_and_cgroupfs_is_not_mounted() -> None:
    mounts = {m["destination"]: m for m in config()["mounts"]}
    assert mounts["/sys"]["type"] == "tmpfs"
    assert "ro" in mounts["/sys"]["options"]
    assert not any(m["type"] in ("sysfs", "cgroup", "cgroup2") for m in mounts.values())
    assert {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"} <= set(mounts)


def test_masked_and_read_only_paths() -> None:
    linux = config()["linux"]
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"} <= set(
        linux["maskedPaths"]
    )
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"} <= set(
        linux["readonlyPaths"]
    )


def test_seccomp_is_an_allowlist_answering_eperm() -> None:
    profile = config()["linux"]["seccomp"]
    assert profile == seccomp_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1  # EPERM
    allowed = profile["syscalls"][0]
    assert allowed["action"] == "SCMP_ACT_ALLOW" and "args" not in allowed
    assert {"read", "write", "openat", "execve", "futex", "epoll_pwait", "accept4"} <= set(
        allowed["names"]
    )
    assert len(set(ALLOWED_SYSCALLS)) == len(ALLOWED_SYSCALLS)


def test_seccomp_never_allows_the_denied_calls() -> None:
    assert len(set(DENIED_SYSCALLS)) == len(DENIED_SYSCALLS)
    assert not set(DENIED_SYSCALLS) & set(ALLOWED_SYSCALLS)
    named = {n for rule in seccomp_profile("x86_64")["syscalls"] for n in rule["names"]}
    assert not set(DENIED_SYSCALLS) & named
    for name in ("kexec_load", "init_module", "bpf", "mount", "keyctl", "add_key", "setns"):
        assert name in DENIED_SYSCALLS
    for name in ("io_uring_setup", "userfaultfd", "perf_event_open", "open_tree", "fsopen"):
        assert name in DENIED_SYSCALLS


def test_seccomp_lets_clone_and_unshare_pass_without_namespace_flags_only() -> None:
    rules = {r["names"][0]: r for r in seccomp_profile("x86_64")["syscalls"][1:]}
    masked = rules["clone"]["args"][0]
    assert masked["op"] == "SCMP_CMP_MASKED_EQ" and masked["valueTwo"] == 0
    assert masked["value"] & 0x10000000, "CLONE_NEWUSER: no nested user namespace"
    assert masked["value"] == 0x7E020000  # every CLONE_NEW* flag clone can carry
    assert rules["unshare"]["args"][0]["value"] == 0x7E020000 | 0x80  # and CLONE_NEWTIME
    assert rules["clone"]["action"] == rules["unshare"]["action"] == "SCMP_ACT_ALLOW"
    assert rules["clone3"] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    assert rules["socket"]["args"] == [
        {"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}  # no AF_VSOCK
    ]


def test_seccomp_lets_through_the_machines_64_bit_abi_only() -> None:
    assert seccomp_profile("x86_64")["architectures"] == ["SCMP_ARCH_X86_64"]
    assert seccomp_profile("aarch64")["architectures"] == ["SCMP_ARCH_AARCH64"]
