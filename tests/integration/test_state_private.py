"""A second local user reads nothing hoody keeps on disk, and hoody runs with umask 077.

A throwaway system user (made here, removed after) tries to list every directory and
read every file of a running node (state, logs, pool, runtime state, bundles, the way
down to a tenant's files) and of a control plane started with `hoody server`.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode, free_port
from hoody.proc import run

# Runs as the stranger: every path it could list or read.
PROBE = """
import json, os, sys
got = []
for path in json.load(sys.stdin):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        got.append(path)
    except OSError:
        pass
print(json.dumps(got))
"""


@pytest.fixture(scope="module")
def stranger() -> Iterator[pwd.struct_passwd]:
    name = f"hoodyx{secrets.token_hex(3)}"
    run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
    try:
        yield pwd.getpwnam(name)
    finally:
        run(["userdel", name])


def readable_by(user: pwd.struct_passwd, paths: list[str]) -> list[str]:
    result = subprocess.run(
        [
            *("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"),
            *("/usr/bin/python3", "-c", PROBE),
        ],
        input=json.dumps(paths),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found: list[str] = json.loads(result.stdout)
    return found


def tree(root: Path, depth: int = 4) -> list[str]:
    """Every path under `root` (itself included), `depth` levels down at most."""
    found = [str(root)]
    base = len(root.parts)
    for dirpath, dirs, files in os.walk(root):
        if len(Path(dirpath).parts) - base >= depth:
            dirs[:] = []
        found += [os.path.join(dirpath, n) for n in (*dirs, *files)]
    return found


def test_a_local_user_reads_nothing_of_a_node(
    scratch: ScratchNode, stranger: pwd.struct_passwd
) -> None:
    rec = scratch.client.copy("demo-app")
    try:
        wait_http_ok(rec["url"] + "healthz")
        scratch.client.exec(rec["id"], ["/bin/sh", "-c", "echo secret > /var/lib/demo-app/s"])
        config = scratch.node.config
        secret = Path("var", "lib", "demo-app", "s")
        mine = [
            config.node_run_dir / "tenants" / rec["id"] / "rootfs" / secret,
            config.pool / "tenants" / rec["id"] / "upper" / secret,
        ]
        assert all(p.read_text() == "secret\n" for p in mine)
        # Not the node's lxcfs mount: every tenant's root must read it, and it shows
        # each reader only the figures of its own cgroup (for a host user, the host's).
        lxcfs = str(config.node_run_dir / "lxcfs")
        paths = [
            *tree(config.state_dir),
            *tree(config.pool),
            *(p for p in tree(config.run_dir, depth=6) if not p.startswith(lxcfs)),
            *map(str, mine),
        ]
        assert len(paths) > 100
        assert readable_by(stranger, paths) == []
        # The files that matter, by mode too (not only by their directories).
        for path in (config.db_path, config.token_path, config.state_dir / "node.json"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for path in (config.state_dir, config.log_dir, config.pool):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        own = config.node_run_dir / "tenants" / rec["id"]
        assert stat.S_IMODE(own.stat().st_mode) == 0o700
        assert own.stat().st_uid == scratch.node.ids(scratch.node.tenant(rec["id"])).base
    finally:
        scratch.client.delete(rec["id"])


def test_the_control_plane_runs_with_umask_077_and_keeps_its_state_private(
    stranger: pwd.struct_passwd,
) -> None:
    state = Path(tempfile.mkdtemp(prefix="hoody-cp-", dir="/var/tmp"))
    state.chmod(0o755)  # even a readable parent: the state dir itself must close
    argv = [sys.executable, "-c", "from hoody.cli.main import main; main()", "server"]
    argv += ["--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(state / "control")]
    env = {k: v for k, v in os.environ.items() if k != "HOODY_DATABASE_URL"}
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    try:
        token = state / "control" / "admin.token"
        deadline = time.monotonic() + 60
        while not token.exists():
            assert child.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        umask = next(
            line.split()[1]
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines()
            if line.startswith("Umask:")
        )
        assert umask == "0077"
        files: dict[str, Any] = {p.name: p.stat() for p in (state / "control").iterdir()}
        assert "control.db" in files
        assert all(stat.S_IMODE(st.st_mode) & 0o077 == 0 for st in files.values()), files
        assert stat.S_IMODE((state / "control").stat().st_mode) == 0o700
        assert readable_by(stranger, tree(state / "control")) == []
    finally:
        child.terminate()
        child.wait(timeout=30)
        run(["rm", "-rf", str(state)])
