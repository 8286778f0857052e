"""The OCI config.json of one tenant: pure, so it can be read and tested as plain data.

What the tenant gets, and why:

- its own user namespace, made beforehand by `Runtime.user_namespace` (owned by the
  tenant's owner uid, tenant root = the first host id of the tenant's own range) and
  joined by path; pid, ipc, uts, mount and (when the kernel has them) cgroup
  namespaces. No network
  namespace is listed: the runtime is started inside the tenant's netns and the
  container inherits it (see `oci.py` for why joining it by path breaks `exec`);
- Docker's default capability set minus NET_RAW (no raw sockets: no ARP/ICMP spoofing
  of neighbours on the bridge), no_new_privileges. No `rlimits`: the runtime cannot set
  them in a namespace host root does not own (where root lacks CAP_SYS_RESOURCE); the
  per-tenant totals come from the namespace (`userns.ceilings`) and NOFILE is set on
  the runtime process;
- its own devpts instance, capped at `PTYS` terminals (the host keeps its reserve);
- /sys is an empty read-only tmpfs: sysfs cannot be mounted from a user namespace that
  does not own the (pre-created) network namespace, and a tenant needs nothing there;
  the cgroup filesystem is not mounted at all;
- the runc default masked and read-only /proc paths, and the node's lxcfs files
  (read-only) over /proc/meminfo, cpuinfo, stat, loadavg, uptime, swaps and
  diskstats, so the tenant sees its own memory limit and as many CPUs as its quota;
- a seccomp allowlist answering EPERM to everything else, anchored on Docker's
  default profile (see `seccomp.py`);
- cpu quota (and, below a whole host's cores, cores of its own: see `cpus.py`),
  memory without swap, a pids cap, and read/write bandwidth and IOPS caps
  on the disks under the pool (blk-throttle), in cgroup `/<cgroup_parent>/<tid>`. On
  cgroup v1 the I/O caps hold for reads, direct writes and writes the tenant syncs
  (measured: 7.3-7.9 MiB/s under an 8 MiB/s cap); writes it leaves in the page cache
  are written back by the kernel's flusher threads, outside its cgroup (v2's io.max
  with the memory controller charges that writeback to the tenant);
- (set by the runtime, not in config.json: runc 1.1 has no `process.scheduler`) the
  kernel's shortest scheduler slice for every tenant process, and a heavy weight for
  the node's parent cgroup: see TENANT_SLICE_NS in oci.py;
- a minimal init as PID 1 (the host's static tini, bind-mounted read-only at
  /dev/init) in front of the entrypoint, unless the template says its entrypoint is
  an init: an app as PID 1 reaps no orphans, and their zombies hold the pids quota
  for good (a fork loop left 252); tini also forwards stop's SIGTERM to the app, which
  as PID 1 would ignore it without a handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoody.agent.runtime import ContainerSpec, RuntimeCaps
from hoody.agent.runtime.seccomp import ALLOWED_SYSCALLS, DENIED_SYSCALLS, seccomp_profile

__all__ = [
    "ALLOWED_SYSCALLS",
    "CAPABILITIES",
    "CPU_PERIOD_US",
    "DEFAULT_PATH",
    "DENIED_SYSCALLS",
    "INIT_PATH",
    "MASKED_PATHS",
    "PTYS",
    "READONLY_PATHS",
    "HostParts",
    "cgroups_path",
    "oci_config",
    "seccomp_profile",
]

CPU_PERIOD_US = 100_000
# Where the node's init appears inside a tenant: on the /dev tmpfs, so the mount point
# leaves nothing on the tenant's disk.
INIT_PATH = "/dev/init"
# Terminals per tenant: kernel.pty.max is one host-wide pool, of which only the host's
# own devpts may use the last kernel.pty.reserve; the per-instance cap keeps one tenant
# from taking the tenants' share.
PTYS = 256
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default set without CAP_NET_RAW. Inside the user namespace these only act on
# things the namespace owns; SYS_ADMIN is absent, so mounts and most of the kernel's
# privileged surface stay closed even to tenant root.
CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
)

READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


@dataclass(frozen=True)
class HostParts:
    """What the host lends every tenant, found once by the runtime (see oci.py)."""

    # A static init (tini-static): reaps orphans and forwards signals as PID 1.
    init: Path | None = None
    # (major, minor) of the whole disks under the pool: where the I/O limits apply.
    block_devices: tuple[tuple[int, int], ...] = ()
    # The node's lxcfs files (…/proc/meminfo, …), each mounted over the tenant's own.
    proc_files: tuple[Path, ...] = ()


def cgroups_path(cgroup_parent: str, tid: str) -> str:
    """`/<parent>/<tid>`: absolute, so tenants land under the hierarchy root and not
    inside whatever cgroup the agent itself happens to run in (a relative path is
    joined to the runtime's own cgroup, which would also cap tenants by the agent's
    limits)."""
    return f"/{cgroup_parent.strip('/')}/{tid}"


def _block_io(spec: ContainerSpec, devices: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """blk-throttle on every disk under the pool: `io_mbps` and `iops` for reads and
    writes each (v1 blkio.throttle.*, v2 io.max, as the runtime translates)."""

    def each(rate: int) -> list[dict[str, int]]:
        return [{"major": major, "minor": minor, "rate": rate} for major, minor in devices]

    bps, iops = spec.limits.io_mbps << 20, spec.limits.iops
    return {
        "throttleReadBpsDevice": each(bps),
        "throttleWriteBpsDevice": each(bps),
        "throttleReadIOPSDevice": each(iops),
        "throttleWriteIOPSDevice": each(iops),
    }


def _resources(spec: ContainerSpec, host: HostParts, cpus: str | None) -> dict[str, Any]:
    limits = spec.limits
    memory = limits.memory_mib << 20
    cpu: dict[str, Any] = {
        "quota": max(1000, round(limits.cpu * CPU_PERIOD_US)),
        "period": CPU_PERIOD_US,
    }
    if cpus:
        cpu["cpus"] = cpus
    resources: dict[str, Any] = {
        "devices": [{"allow": False, "access": "rwm"}],  # the runtime adds /dev/null & co.
        "cpu": cpu,
        # OCI swap is memory+swap: equal to the limit means no swap at all, so a hog
        # is stopped at its limit instead of pushing neighbours' pages to disk.
        "memory": {"limit": memory, "swap": memory},
        "pids": {"limit": limits.pids},
    }
    if host.block_devices:
        resources["blockIO"] = _block_io(spec, host.block_devices)
    return resources


def _bind_ro(source: Path, dest: str) -> dict[str, Any]:
    return {
        "destination": dest,
        "type": "bind",
        "source": str(source),
        "options": ["bind", "ro", "nosuid", "nodev"],
    }


def _mounts() -> list[dict[str, Any]]:
    def tmpfs(dest: str, source: str, *options: str) -> dict[str, Any]:
        return {"destination": dest, "type": "tmpfs", "source": source, "options": list(options)}

    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        tmpfs("/dev", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": [
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                f"max={PTYS}",
            ],
        },
        tmpfs("/dev/shm", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        tmpfs("/sys", "sysfs", "nosuid", "noexec", "nodev", "ro"),
    ]


def oci_config(
    spec: ContainerSpec,
    cgroup_parent: str,
    caps: RuntimeCaps,
    host: HostParts | None = None,
    *,
    cpus: str | None = None,
) -> dict[str, Any]:
    """The config.json for `spec`, as a JSON-able dict. Pure: no I/O, no host lookups
    beyond the machine architecture for seccomp. `cpus`: the cpuset the tenant runs on
    (`cpus.CpuPlacer`), None for any CPU.

    With `spec.init` and `host.init`, the init runs as PID 1 with the entrypoint as
    its only child; the caller refuses `spec.init` without an init on the host.
    """
    host = host or HostParts()
    args = list(spec.args)
    mounts = _mounts()
    if spec.init and host.init is not None:
        # "--": everything after it is the entrypoint, even words starting with "-".
        args = [INIT_PATH, "--", *args]
        mounts.append(_bind_ro(host.init, INIT_PATH))
    # After /proc: its files as lxcfs computes them from the tenant's own cgroups.
    mounts += [_bind_ro(path, f"/proc/{path.name}") for path in host.proc_files]
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.tid, "HOME": "/root", **spec.env}
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "user", "path": str(spec.userns)},
    ]
    if caps.cgroupns:
        namespaces.append({"type": "cgroup"})
    ids = spec.ids.mapping()
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": list(CAPABILITIES),
                "effective": list(CAPABILITIES),
                "permitted": list(CAPABILITIES),
            },
            "noNewPrivileges": True,
            # When the whole host runs short, the kernel should pick a tenant before
            # the agent or sshd (a tenant's own limit is enforced by its cgroup).
            "oomScoreAdj": 500,
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.tid,
        "mounts": mounts,
        "linux": {
            "uidMappings": ids,
            "gidMappings": ids,
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path(cgroup_parent, spec.tid),
            "resources": _resources(spec, host, cpus),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": seccomp_profile(),
        },
    }
