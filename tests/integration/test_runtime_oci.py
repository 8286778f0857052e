"""OciRuntime on the real runtime: the contract, then what isolation a tenant notices.

Each test gets its own runtime root, bundle dir and cgroup parent (`hoodytest-<rand>`);
each container its own host id range and user namespace (from a scratch id area), its
own overlay over the prototype rootfs (the demo template's debootstrap, unshifted, seen
through an idmapped lower layer) and its own netns. The finalizers check nothing is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hoody.agent.ids import IdArea, TenantIds
from hoody.agent.runtime import ContainerSpec
from hoody.agent.runtime.oci import CGROUP_ROOT, OciRuntime
from hoody.agent.runtime.userns import user_namespace
from hoody.agent.spec import Limits
from hoody.agent.storage.btrfs import mount_overlay
from hoody.agent.templates import CACHE_DIR, DEMO_PACKAGES, debootstrap_tarball
from hoody.bench.scratch import scratch_id_area
from hoody.errors import HostError
from tests.contract.runtime import RuntimeContract

# pid 1 of the tenant: exits on SIGTERM (an init without a handler ignores it).
SLEEPER = (
    "python3",
    "-c",
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('ready', flush=True)\n"
    "time.sleep(100000)\n",
)

SpecFactory = Callable[..., ContainerSpec]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="session")
def proto() -> Path:
    """The demo template's rootfs (bookworm minbase + python3), unpacked once per host
    into the cache next to the debootstrap tarball it comes from (made if missing)."""
    tarball = debootstrap_tarball("bookworm", DEMO_PACKAGES)
    rootfs = CACHE_DIR / f"proto-{tarball.stem}"
    if not rootfs.is_dir():
        work = Path(tempfile.mkdtemp(prefix=".proto-", dir=CACHE_DIR))
        sh("tar", "-xpf", str(tarball), "-C", str(work), "--numeric-owner")
        work.chmod(0o755)
        try:
            work.rename(rootfs)
        except OSError:  # another run unpacked it meanwhile
            shutil.rmtree(work)
    return rootfs


@pytest.fixture(scope="module")
def id_area() -> Iterator[IdArea]:
    with scratch_id_area() as area:
        yield area


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: that is 0700, and the tenant's root must be able to walk
    # down to its rootfs.
    path = Path(tempfile.mkdtemp(prefix="hoodytest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime(scratch_dir: Path, make_spec: SpecFactory) -> Iterator[OciRuntime]:
    # Depends on make_spec only so that the containers are gone before the rootfs
    # mounts and netns are removed (fixtures are torn down newest first).
    parent = f"hoodytest-{secrets.token_hex(3)}"
    rt = OciRuntime(
        root=scratch_dir / "runc", bundle_dir=scratch_dir / "bundles", cgroup_parent=parent
    )
    yield rt
    for tid in rt.list():
        rt.stop(tid, timeout=0)
    rt.teardown()
    rt.remove_cgroup_parent()
    left = [str(h / parent) for h in CGROUP_ROOT.iterdir() if (h / parent).exists()]
    assert left == [], f"cgroups left behind: {left}"
    assert rt.list() == []
    assert not any((scratch_dir / "bundles").glob("*"))


@pytest.fixture
def make_spec(scratch_dir: Path, proto: Path, id_area: IdArea) -> Iterator[SpecFactory]:
    """make_spec(tid, args=SLEEPER, limits=Limits(), ksm=False): a tenant with its own
    ids and user namespace, on its own overlay and netns; everything is unmounted and
    deleted after the test."""
    mounts: dict[str, Path] = {}
    netns: dict[str, str] = {}
    made: dict[str, tuple[TenantIds, Path]] = {}
    tag = secrets.token_hex(2)
    namespaces = contextlib.ExitStack()

    def make(tid: str, args: tuple[str, ...] = SLEEPER, **changes: Any) -> ContainerSpec:
        limits = changes.pop("limits", Limits())
        if tid not in mounts:
            ids = id_area.ids(len(made))
            userns = namespaces.enter_context(user_namespace(ids, limits))
            made[tid] = (ids, userns.path)
            base = scratch_dir / "tenants" / tid
            upper, work, merged = base / "upper", base / "work", base / "rootfs"
            for d in (upper, work, merged):
                d.mkdir(parents=True)
            os.chown(upper, ids.base, ids.base)
            upper.chmod(0o755)
            os.chmod(base.parent, 0o755)
            os.chmod(base, 0o755)
            mount_overlay(proto, base, merged, userns.fd)
            mounts[tid] = merged
            name = f"hoodyt-{tag}-{len(netns)}"
            sh("ip", "netns", "add", name)
            netns[tid] = name
            sh("ip", "-n", name, "link", "set", "lo", "up")
        ids, path = made[tid]
        return ContainerSpec(
            tid=tid,
            rootfs=mounts[tid],
            args=args,
            limits=limits,
            netns=Path("/run/netns") / netns[tid],
            log_path=scratch_dir / "logs" / f"{tid}.log",
            ids=ids,
            userns=path,
            env={"HOODY_TENANT": tid},
            **changes,
        )

    with namespaces:
        yield make
    for merged in mounts.values():
        sh("umount", str(merged))
    for name in netns.values():
        sh("ip", "netns", "delete", name)


class TestOciRuntime(RuntimeContract):
    """The shared contract, on runc/crun."""


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def test_tenant_root_is_an_unprivileged_host_uid(
    runtime: OciRuntime, make_spec: SpecFactory
) -> None:
    spec = make_spec("iso-uid")
    pid = runtime.start(spec)
    assert status_field(pid, "Uid").split() == [str(spec.ids.base)] * 4
    assert status_field(pid, "NoNewPrivs") == "1"
    assert status_field(pid, "Seccomp") == "2"
    inside = runtime.exec("iso-uid", ["id", "-u"])
    assert inside.stdout.strip() == "0"
    # Open files per process: set on the runtime (prlimit), inherited by run and exec.
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"Max open files\s+1024\s+1024", limits), limits
    assert runtime.exec("iso-uid", ["sh", "-c", "ulimit -n"]).stdout.strip() == "1024"


def test_tenant_cannot_mount_or_nest_user_namespaces(
    runtime: OciRuntime, make_spec: SpecFactory
) -> None:
    runtime.start(make_spec("iso-sec"))
    assert runtime.exec("iso-sec", ["unshare", "--user", "true"]).exit_code != 0
    assert runtime.exec("iso-sec", ["mount", "-t", "tmpfs", "x", "/mnt"]).exit_code != 0
    assert runtime.exec("iso-sec", ["ls", "/sys"]).stdout == ""
    # Seccomp answers EPERM even where the kernel would have said something else.
    probe = "import ctypes, os; ctypes.CDLL(None, use_errno=True).syscall(321, 0, 0, 0)"
    probe += "; print(ctypes.get_errno())"  # 321 = bpf on x86_64
    if os.uname().machine == "x86_64":
        assert runtime.exec("iso-sec", ["python3", "-c", probe]).stdout.strip() == "1"


def test_tenant_and_exec_share_the_tenants_network_namespace(
    runtime: OciRuntime, make_spec: SpecFactory
) -> None:
    spec = make_spec("iso-net")
    sh(
        "ip",
        "-n",
        spec.netns.name,
        "link",
        "add",
        "hoodymark0",
        "type",
        "veth",
        "peer",
        "hoodymark1",
    )
    pid = runtime.start(spec)
    assert "hoodymark0" in Path(f"/proc/{pid}/net/dev").read_text()
    assert "hoodymark0" in runtime.exec("iso-net", ["cat", "/proc/net/dev"]).stdout
    assert "hoodymark0" not in Path("/proc/self/net/dev").read_text()


def test_tenants_start_from_a_mount_namespace_without_the_hosts_other_mounts(
    runtime: OciRuntime, make_spec: SpecFactory, scratch_dir: Path
) -> None:
    """runc copies its caller's mounts for every container: it is started from the
    launch namespace, which holds no tenant's rootfs, no netns pin and nothing a host
    mounted later (see launch.py). The tenants do not notice."""
    first, second = make_spec("lean-a"), make_spec("lean-b")
    runtime.start(first)
    later = scratch_dir / "later"
    later.mkdir()
    sh("mount", "-t", "tmpfs", "hoodylater", str(later))
    try:
        runtime.start(second)
        table = runtime.launch.mountinfo()
        points = [line.split(" - ")[0].split()[4] for line in table.splitlines()]
        assert " nsfs " not in table, "no network namespace pin"
        assert str(first.rootfs) not in points and str(second.rootfs) not in points
        assert str(later) not in points
        assert len(points) < 40, points  # /, /proc, /sys with the cgroups, /dev
        assert str(first.rootfs) in Path("/proc/self/mountinfo").read_text(), "host unchanged"
    finally:
        sh("umount", str(later))
    for spec in (first, second):
        assert runtime.exec(spec.tid, ["cat", "/etc/debian_version"]).exit_code == 0
        # Its own root, not the launch namespace's: / is the overlay.
        root = runtime.exec(spec.tid, ["sh", "-c", "grep ' / / ' /proc/self/mountinfo"])
        assert " overlay " in root.stdout, root.stdout
    runtime.stop("lean-a")
    runtime.start(first)  # a start again, as a stopped tenant's wake does
    assert runtime.state("lean-a").status == "running"


def test_memory_hog_is_oom_killed_and_the_tenant_lives_on(
    runtime: OciRuntime, make_spec: SpecFactory
) -> None:
    runtime.start(make_spec("iso-oom", limits=Limits(memory_mib=64)))
    hog = runtime.exec("iso-oom", ["python3", "-c", "x = b'\\1' * (200 << 20); print('survived')"])
    assert hog.exit_code == 137, hog  # SIGKILL from the OOM killer
    assert "survived" not in hog.stdout
    events = runtime.memory_events("iso-oom")
    assert events["oom_kill"] >= 1
    assert events["memory_peak_bytes"] <= 64 << 20
    assert runtime.state("iso-oom").status == "running"
    assert runtime.exec("iso-oom", ["echo", "fine"]).stdout == "fine\n"


def test_fork_bomb_is_capped_by_the_pids_limit(runtime: OciRuntime, make_spec: SpecFactory) -> None:
    runtime.start(make_spec("iso-pids", limits=Limits(pids=32)))
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 1000:\n"
        "        if os.fork() == 0:\n"
        "            os.closerange(0, 3); time.sleep(60); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n"
    )
    result = runtime.exec("iso-pids", ["python3", "-c", bomb], timeout=30)
    forks, errno = map(int, result.stdout.split())
    assert errno == 11  # EAGAIN
    assert forks < 32
    assert runtime.memory_events("iso-pids")["pids_max_hit"] >= 1


def cpu_seconds(parent: str, tid: str) -> float:
    v1 = CGROUP_ROOT / "cpuacct" / parent / tid / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    stat = (CGROUP_ROOT / parent / tid / "cpu.stat").read_text()
    usage = next(line for line in stat.splitlines() if line.startswith("usage_usec"))
    return int(usage.split()[1]) / 1e6


def test_cpu_spinner_gets_its_quota_only(runtime: OciRuntime, make_spec: SpecFactory) -> None:
    spin = ("python3", "-c", "while True: pass")
    runtime.start(make_spec("iso-cpu", spin, limits=Limits(cpu=0.2)))
    time.sleep(0.3)  # past interpreter start-up
    before, t0 = cpu_seconds(runtime.cgroup_parent, "iso-cpu"), time.monotonic()
    time.sleep(2)
    used = cpu_seconds(runtime.cgroup_parent, "iso-cpu") - before
    share = used / (time.monotonic() - t0)
    assert 0.1 < share <= 0.25, share


def test_tenant_output_goes_to_its_log(runtime: OciRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("iso-log")
    runtime.start(spec)
    assert wait_for(lambda: "ready" in spec.log_path.read_text())


def test_ksm_tenant_starts_and_opts_in(runtime: OciRuntime, make_spec: SpecFactory) -> None:
    pid = runtime.start(make_spec("iso-ksm", ksm=True))
    assert runtime.state("iso-ksm").status == "running"
    ksm_stat = Path(f"/proc/{pid}/ksm_stat")
    if runtime.caps.memory_merge and ksm_stat.exists():
        assert "ksm_merge_any: yes" in ksm_stat.read_text()
    with contextlib.suppress(FileNotFoundError):
        assert "ksm_merge_any: yes" not in Path("/proc/self/ksm_stat").read_text()


def test_failed_start_leaves_nothing(runtime: OciRuntime, make_spec: SpecFactory) -> None:
    # Refused before the runtime runs (the entrypoint is checked) or by the runtime.
    with pytest.raises(HostError, match="start tenant iso-bad"):
        runtime.start(make_spec("iso-bad", ("/no/such/program",)))
    assert runtime.state("iso-bad").status == "absent"
    assert not (runtime.bundle_dir / "iso-bad").exists()
    assert not (CGROUP_ROOT / "memory" / runtime.cgroup_parent / "iso-bad").exists()


def test_a_tenants_init_is_the_launchers_child_and_reaped_when_it_exits(
    runtime: OciRuntime, make_spec: SpecFactory
) -> None:
    """Not the host init's: the launcher adopts it when `runc run` exits (launcher.py)."""
    pid = runtime.start(make_spec("iso-reap"))
    assert runtime.launcher.pid is not None
    assert int(status_field(pid, "PPid")) == runtime.launcher.pid
    runtime.stop("iso-reap", timeout=0)
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists()), "reaped, not left a zombie"
    quick = runtime.start(make_spec("iso-quick", ("true",)))  # exits on its own
    assert wait_for(lambda: not Path(f"/proc/{quick}").exists())
    assert runtime.state("iso-quick").status == "stopped"


def test_exited_tenant_is_stopped_then_replaced_by_start(
    runtime: OciRuntime, make_spec: SpecFactory
) -> None:
    runtime.start(make_spec("iso-exit", ("true",)))
    assert wait_for(lambda: runtime.state("iso-exit").status == "stopped")
    assert "iso-exit" in runtime.list()
    runtime.start(make_spec("iso-exit"))
    assert runtime.state("iso-exit").status == "running"


def test_exec_timeout_kills_the_command(runtime: OciRuntime, make_spec: SpecFactory) -> None:
    runtime.start(make_spec("iso-slow"))
    with pytest.raises(HostError, match="did not finish"):
        runtime.exec("iso-slow", ["sleep", "30"], timeout=0.5)
    ps = runtime.exec("iso-slow", ["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
    assert "sleep 30" not in ps.stdout


def test_stop_of_a_tenant_that_ignores_sigterm_kills_it(
    runtime: OciRuntime, make_spec: SpecFactory
) -> None:
    pid = runtime.start(make_spec("iso-stubborn", ("sleep", "100000")))
    t0 = time.monotonic()
    runtime.stop("iso-stubborn", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert runtime.state("iso-stubborn").status == "absent"
    with contextlib.suppress(FileNotFoundError):
        assert Path(f"/proc/{pid}/stat").read_text().split()[2] in ("Z", "X")


def test_unreachable_rootfs_is_refused_with_the_fix(
    runtime: OciRuntime, make_spec: SpecFactory, scratch_dir: Path
) -> None:
    spec = make_spec("iso-perm")
    scratch_dir.chmod(0o700)
    try:
        with pytest.raises(HostError, match="chmod o\\+x"):
            runtime.start(spec)
    finally:
        scratch_dir.chmod(0o755)
    assert runtime.state("iso-perm").status == "absent"
