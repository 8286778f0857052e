"""Tenant A attacks the kernel's per-user counters; tenant B and host root must not notice.

Each test makes its own tenant A on the session's scratch node, exhausts one counter
from inside it (through `exec`, as a customer's script would) and holds it, then shows
that the module's tenant B and host root still get theirs. Per-user counters are
charged up to the uid that owns a user namespace, so these hold only because every
tenant's namespace has an owner and a host id range of its own (hoody.agent.ids).

The last tests look from the host: a process running with A's ids (as if it escaped
its namespaces) owns nothing of B, and snapshot-mode tenants get the same ids.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoody.agent.ids import TenantIds
from hoody.agent.runtime import userns
from hoody.agent.runtime.bundle import PTYS
from hoody.agent.runtime.userns import SIGPENDING
from hoody.agent.spec import TenantSpec
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode

# Shared by every probe: ctypes libc, `as_uid` (a child under another tenant uid,
# the uid-hopping that multiplied a tenant's share when counters were per uid) and
# `hold` (run the attack in a child that keeps what it took and reports one line).
PRELUDE = """
import ctypes, errno, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)

def err():
    return ctypes.get_errno()

def as_uid(uid, fn):
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid); os.setuid(uid); code = fn()
        except OSError as e:
            code = e.errno
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def hold(attack):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            out = attack()
        except BaseException as e:
            out = "error " + repr(e)
        os.write(w, (str(out) + "\\n").encode()); os.close(w)
        time.sleep(3600); os._exit(0)
    os.close(w)
    print(os.read(r, 65536).decode().strip())
"""


def run_in(scratch: ScratchNode, tid: str, code: str, timeout: float = 60) -> str:
    result = scratch.client.exec(tid, ["/usr/bin/python3", "-c", PRELUDE + code], timeout=timeout)
    assert result["exit_code"] == 0, result
    return str(result["stdout"]).strip()


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def on_host(code: str) -> str:
    """`code` run by host root in a process of its own (which takes its keys, signals
    and queues with it when it exits)."""
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sysctl(name: str) -> int:
    return int(Path("/proc/sys", *name.split(".")).read_text())


@pytest.fixture(scope="module")
def b(scratch: ScratchNode) -> Iterator[dict[str, Any]]:
    rec = scratch.client.copy("demo-app")
    wait_http_ok(rec["url"] + "healthz")
    yield rec
    scratch.client.delete(rec["id"])


@pytest.fixture
def a(scratch: ScratchNode) -> Iterator[dict[str, Any]]:
    rec = scratch.client.copy("demo-app", TenantSpec(limits={"memory_mib": 512}))
    yield rec
    scratch.client.delete(rec["id"])


def ids(scratch: ScratchNode, tid: str) -> TenantIds:
    return scratch.node.ids(scratch.node.tenant(tid))


# the counters


def test_inotify_instances(scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]) -> None:
    taken, first, hopped = numbers(
        run_in(
            scratch,
            a["id"],
            "def attack():\n"
            "    fds = []\n"
            "    while libc.inotify_init1(0) >= 0:\n"
            "        fds.append(1)\n"
            "    first = err()\n"
            "    other = as_uid(1, lambda: 0 if libc.inotify_init1(0) >= 0 else err())\n"
            "    return f'{len(fds)} {first} {other}'\n"
            "hold(attack)\n",
        )
    )
    assert (first, hopped) == (errno.EMFILE, errno.EMFILE)
    assert taken == sysctl("fs.inotify.max_user_instances")  # A's whole share, and no more
    probe = "fd = libc.inotify_init1(0); print(fd >= 0 or err())"
    assert run_in(scratch, b["id"], probe) == "True"
    assert on_host(probe) == "True"


def test_inotify_watches(scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]) -> None:
    limit = sysctl("fs.inotify.max_user_watches")
    files = limit // 100 + 100  # watched from ~100 instances, past the limit
    taken, code = numbers(
        run_in(
            scratch,
            a["id"],
            "def attack():\n"
            "    os.makedirs('/dev/shm/w')\n"
            f"    paths = [f'/dev/shm/w/{{i}}'.encode() for i in range({files})]\n"
            "    for p in paths:\n"
            "        open(p, 'w').close()\n"
            "    total = code = 0\n"
            "    while code == 0:\n"
            "        fd = libc.inotify_init1(0)\n"
            "        for p in paths:\n"
            "            if libc.inotify_add_watch(fd, p, 2) < 0:\n"
            "                code = err(); break\n"
            "            total += 1\n"
            "    return f'{total} {code}'\n"
            "hold(attack)\n",
            timeout=120,
        )
    )
    assert code == errno.ENOSPC
    assert taken == limit
    probe = (
        "fd = libc.inotify_init1(0); print(libc.inotify_add_watch(fd, b'/tmp', 2) >= 0 or err())"
    )
    assert run_in(scratch, b["id"], probe) == "True"
    assert on_host(probe) == "True"


MQ = """
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long),
                ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
def mq(name):
    attr = Attr(0, 10, 8192, 0)
    return libc.mq_open(name.encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr))
"""


def test_mqueue_bytes(scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]) -> None:
    queues, first, hopped = numbers(
        run_in(
            scratch,
            a["id"],
            MQ + "def attack():\n"
            "    n = 0\n"
            "    while mq(f'/hog{n}') >= 0:\n"
            "        n += 1\n"
            "    first = err()\n"
            "    other = as_uid(1, lambda: 0 if mq('/hop') >= 0 else err())\n"
            "    return f'{n} {first} {other}'\n"
            "hold(attack)\n",
        )
    )
    # RLIMIT_MSGQUEUE (819,200 bytes) holds for the whole tenant: ~9 queues of 80 KiB.
    assert (first, hopped) == (errno.EMFILE, errno.EMFILE)
    assert 5 <= queues <= 10
    probe = MQ + "name = f'/hoody-probe-{os.getpid()}'\nok = mq(name) >= 0\n"
    probe += "print(ok or err()); libc.mq_unlink(name.encode())"
    assert run_in(scratch, b["id"], probe) == "True"
    assert on_host(probe) == "True"


SIGQUEUE = """
sig = signal.SIGRTMIN
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
def queue_one():
    return 0 if libc.sigqueue(os.getpid(), sig, ctypes.c_void_p(0)) == 0 else err()
"""


def test_pending_signals(scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]) -> None:
    queued, first, hopped = numbers(
        run_in(
            scratch,
            a["id"],
            SIGQUEUE + "def attack():\n"
            "    n = 0\n"
            "    while n < 1_000_000 and queue_one() == 0:\n"
            "        n += 1\n"
            "    return f'{n} {err()} {as_uid(1, queue_one)}'\n"
            "hold(attack)\n",
        )
    )
    assert (first, hopped) == (errno.EAGAIN, errno.EAGAIN)
    assert queued == SIGPENDING  # the tenant's ceiling, set on its namespace's holder
    assert run_in(scratch, b["id"], SIGQUEUE + "print(queue_one())") == "0"
    assert on_host(SIGQUEUE + "print(queue_one())") == "0"


def test_ptys(scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]) -> None:
    opened, first = numbers(
        run_in(
            scratch,
            a["id"],
            "def attack():\n"
            "    fds = []\n"
            "    while True:\n"
            "        try:\n"
            "            fds.append(os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY))\n"
            "        except OSError as e:\n"
            "            return f'{len(fds)} {e.errno}'\n"
            "hold(attack)\n",
        )
    )
    assert (opened, first) == (PTYS, errno.ENOSPC)
    probe = "m, s = os.openpty(); print(os.ttyname(s).startswith('/dev/pts/'))"
    assert run_in(scratch, b["id"], probe) == "True"
    assert on_host(probe) == "True"


def test_processes(scratch: ScratchNode, b: dict[str, Any]) -> None:
    a = scratch.client.copy("demo-app", TenantSpec(limits={"pids": 64}))
    try:
        forks, code = numbers(
            run_in(
                scratch,
                a["id"],
                "def attack():\n"
                "    n = 0\n"
                "    while n < 10000:\n"
                "        try:\n"
                "            if os.fork() == 0:\n"
                "                time.sleep(3600); os._exit(0)\n"
                "        except OSError as e:\n"
                "            return f'{n} {e.errno}'\n"
                "        n += 1\n"
                "    return f'{n} 0'\n"
                "hold(attack)\n",
            )
        )
        assert code == errno.EAGAIN and forks < 64
        probe = (
            "n = 0\n"
            "for _ in range(20):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        os._exit(0)\n"
            "    os.waitpid(pid, 0); n += 1\n"
            "print(n)"
        )
        assert run_in(scratch, b["id"], probe) == "20"
        assert on_host(probe) == "20"
    finally:
        scratch.client.delete(a["id"])


def test_keys(scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]) -> None:
    add_key = {"x86_64": 248, "aarch64": 217}[platform.machine()]
    probe = (
        f"k = libc.syscall({add_key}, b'user', b'hoody-probe', b'x', 1, -1)\n"  # thread keyring
        "print(k >= 0 or err())"
    )
    # Tenants cannot make keys at all (seccomp), so there is nothing to exhaust ...
    assert run_in(scratch, a["id"], probe) == str(errno.EPERM)
    # ... and the session keyring runc gives each container is charged to that
    # tenant's own root uid: one key user per tenant, none shared.
    users = {
        int(line.split(":")[0]): line for line in Path("/proc/key-users").read_text().splitlines()
    }
    for tid in (a["id"], b["id"]):
        assert ids(scratch, tid).base in users, (tid, users)
    assert on_host(probe) == "True"


def test_nested_user_namespaces_and_who_owns_each_tenants(
    scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]
) -> None:
    unshare = "print(libc.unshare(0x10000000) == 0 or err())"  # CLONE_NEWUSER
    assert run_in(scratch, a["id"], unshare) == str(errno.EPERM)
    assert on_host(unshare) == "True"
    # Each tenant's own namespace is owned by its own owner uid (not root), so what
    # it charges (user namespaces included) comes out of that owner's share.
    owners = set()
    for tid in (a["id"], b["id"]):
        pid = scratch.client.tenant(tid)["pid"]
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
        try:
            raw = fcntl.ioctl(fd, 0xB704, bytes(4))  # NS_GET_OWNER_UID
        finally:
            os.close(fd)
        owner = struct.unpack("I", raw)[0]
        assert owner == ids(scratch, tid).owner
        owners.add(owner)
    assert len(owners) == 2 and 0 not in owners


# from the host: ids


def tenant_pids(scratch: ScratchNode, tid: str) -> list[int]:
    parent = scratch.node.config.cgroup_parent
    for path in (
        Path("/sys/fs/cgroup/pids", parent, tid, "cgroup.procs"),
        Path("/sys/fs/cgroup", parent, tid, "cgroup.procs"),
    ):
        if path.exists():
            return [int(p) for p in path.read_text().split()]
    raise AssertionError(f"no cgroup found for {tid}")


def rootfs(scratch: ScratchNode, tid: str) -> Path:
    return scratch.node.config.node_run_dir / "tenants" / tid / "rootfs"


def test_a_process_of_a_owns_nothing_of_b(
    scratch: ScratchNode, a: dict[str, Any], b: dict[str, Any]
) -> None:
    mine, theirs = ids(scratch, a["id"]), ids(scratch, b["id"])
    assert not (mine.owns(theirs.base) or theirs.owns(mine.base))
    run_in(scratch, b["id"], "open('/var/lib/demo-app/b-secret', 'w').write('b')\nprint(1)")
    for pid in tenant_pids(scratch, a["id"]):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        for field in ("Uid:", "Gid:"):
            line = next(x for x in status if x.startswith(field))
            assert all(mine.owns(int(v)) for v in line.split()[1:]), line
    # Every file of B, template files included, belongs to B's range (seen from the host).
    seen = 0
    for dirpath, dirs, files in os.walk(rootfs(scratch, b["id"])):
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        for name in (*dirs, *files):
            st = os.lstat(os.path.join(dirpath, name))
            assert theirs.owns(st.st_uid) and theirs.owns(st.st_gid), (dirpath, name)
            seen += 1
    assert seen > 1000
    # A process that escaped A with A's root ids reaches nothing of B.
    shadow = str(rootfs(scratch, b["id"]) / "etc" / "shadow")
    secret = str(rootfs(scratch, b["id"]) / "var" / "lib" / "demo-app" / "b-secret")
    escaped = (
        "import os, signal, json\n"
        "out = {}\n"
        f"try:\n    os.kill({scratch.client.tenant(b['id'])['pid']}, 0); out['kill'] = 0\n"
        "except OSError as e:\n    out['kill'] = e.errno\n"
        f"try:\n    open({shadow!r}).read(); out['read'] = 0\n"
        "except OSError as e:\n    out['read'] = e.errno\n"
        f"try:\n    open({secret!r}, 'a')"
        "; out['write'] = 0\n"
        "except OSError as e:\n    out['write'] = e.errno\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={mine.base}",
            f"--regid={mine.base}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            escaped,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "kill": errno.EPERM,
        "read": errno.EACCES,
        "write": errno.EACCES,
    }


def test_snapshot_mode_tenants_get_their_own_ids_too(scratch: ScratchNode) -> None:
    rec = scratch.client.copy("demo-app", mode="snapshot")
    try:
        wait_http_ok(rec["url"] + "healthz")
        mine = ids(scratch, rec["id"])
        assert (
            run_in(scratch, rec["id"], "open('/made-here', 'w').close(); print(os.getuid())") == "0"
        )
        root = rootfs(scratch, rec["id"])
        for path in (root, root / "usr" / "bin" / "python3.11", root / "made-here"):
            st = os.lstat(path)
            assert (st.st_uid, st.st_gid) == (mine.base, mine.base), path
        # A restart keeps the mapping (a new namespace with the same ids).
        scratch.client.action(rec["id"], "restart")
        wait_http_ok(rec["url"] + "healthz")
        assert run_in(scratch, rec["id"], "print(os.stat('/made-here').st_uid)") == "0"
    finally:
        scratch.client.delete(rec["id"])


def test_the_holder_is_gone_and_exec_joins_the_tenant(
    scratch: ScratchNode, b: dict[str, Any]
) -> None:
    """No process of the owner uid stays behind once the container runs."""
    owner = ids(scratch, b["id"]).owner
    leftovers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid_line = next(
                    x for x in (entry / "status").read_text().splitlines() if x.startswith("Uid:")
                )
            except (OSError, StopIteration):
                continue
            if str(owner) in uid_line.split():
                leftovers.append(entry.name)
    assert leftovers == []
    assert run_in(scratch, b["id"], "print(open('/proc/self/uid_map').read().split())") == str(
        ["0", str(ids(scratch, b["id"]).base), "65536"]
    )


def test_a_dead_namespace_helper_is_replaced(scratch: ScratchNode) -> None:
    """Holders are forked by a small helper of the agent's (userns._Holders); if it
    dies, the next tenant still starts, with a new one."""
    first = userns._holders._server()
    first.kill()
    first.wait()
    rec = scratch.client.copy("demo-app")
    try:
        wait_http_ok(rec["url"] + "healthz")
        assert userns._holders._server().pid != first.pid
    finally:
        scratch.client.delete(rec["id"])
