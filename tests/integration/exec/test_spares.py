"""Spares: the started, warmed-up Deno process each active project keeps for its next
worker. It must be locked down as a worker of that project is, serve that project
only, match its current limits, and take exactly the version it is given."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from hoody.exec.sandbox import EXEC_ID_BASE
from tests.integration.exec.conftest import ExecStack

PID = "export default {{ fetch: () => new Response(String(Deno.pid)) }};\n// {tag}\n"


def _spare(project: int, timeout: float = 20.0) -> int:
    """The pid of `project`'s spare (a worker started with no script yet), once it
    has exactly one (a replaced spare may take a moment to go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _spares(project)
        if len(found) == 1:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"project {project} has spares {_spares(project)} after {timeout} s")


def _spares(project: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if proc.stat().st_uid != EXEC_ID_BASE + project or argv[-2:] != [b"spare", b""]:
                continue
            if not any((proc / "cwd").iterdir()):  # no script linked in yet
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _memory_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text())
        if controllers == "" and Path(f"/sys/fs/cgroup{path}/memory.max").exists():
            return int(Path(f"/sys/fs/cgroup{path}/memory.max").read_text())
    raise AssertionError(f"no memory cgroup for {pid}")


def _limits(stack: ExecStack, **limits: int) -> None:
    r = httpx.put(
        f"{stack.api}/api/v1/projects/{stack.project}/exec",
        json={"limits": limits},
        headers={"Authorization": f"Bearer {stack.token}"},
    )
    assert r.status_code == 200, r.text


def test_a_spare_is_locked_down_and_takes_the_next_version(exec_stack: ExecStack) -> None:
    project = exec_stack.project
    exec_stack.deploy("pid", PID.format(tag=1))
    first = exec_stack.call("pid")
    assert first.status_code == 200, first.text
    spare = _spare(project)
    assert str(spare) != first.text
    # Everything a worker of the project has, before any script is in it.
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{spare}/status").read_text().splitlines()
    )
    uid = EXEC_ID_BASE + project
    assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split()[0] == str(uid)
    assert status["NoNewPrivs"].strip() == "1" and status["Groups"].strip() == ""
    assert _memory_limit(spare) == 256 << 20
    folder = os.readlink(f"/proc/{spare}/cwd")
    argv = _argv(spare)
    (read,) = [a for a in argv if a.startswith("--allow-read=")]
    allowed = read.removeprefix("--allow-read=").split(",")
    assert allowed[0] == folder and allowed[1].endswith(f"/p{project}/sdk"), allowed
    assert len(allowed) == 3 and allowed[2].endswith("/w.sock"), allowed
    assert Path(folder).stat().st_mode & 0o777 == 0o750 and Path(folder).stat().st_uid == 0
    (net,) = [a for a in argv if a.startswith("--allow-net=")]
    assert net.count(",") == 1 and "unix:" in net, net
    # Its project's Deno cache is the project uid's alone.
    deno_dir = Path(folder).parents[2] / "deno" / f"p{project}"
    assert deno_dir.stat().st_mode & 0o777 == 0o700 and deno_dir.stat().st_uid == uid
    # The next version's first request is served by the spare, with that version.
    exec_stack.deploy("pid", PID.format(tag=2).replace("Deno.pid)", "Deno.pid) + ' v2'"))
    second = exec_stack.call("pid")
    assert (second.status_code, second.text) == (200, f"{spare} v2")
    assert sorted(Path(folder).iterdir()) == [Path(folder) / "pid.ts"]
    time.sleep(0.5)
    assert exec_stack.logs("pid")[0]["cold"] is True
    # ... and a new spare is there for what comes next.
    assert _spare(project) not in (spare, int(first.text))


def test_a_spare_serves_its_project_only_and_its_current_limits(exec_stack: ExecStack) -> None:
    project = exec_stack.project
    exec_stack.deploy("lim", PID.format(tag="a"))
    assert exec_stack.call("lim").status_code == 200
    spare = _spare(project)
    with httpx.Client(headers={"Authorization": f"Bearer {exec_stack.admin}"}) as admin:
        other = admin.post(f"{exec_stack.api}/api/v1/projects", json={"name": "spare-other"})
        theirs = other.json()["id"]
        r = admin.put(
            f"{exec_stack.api}/api/v1/scripts/{theirs}/lim", json={"source": PID.format(tag="b")}
        )
        assert r.status_code == 200
    answer = httpx.get(f"{exec_stack.api}/exec/{theirs}/lim", timeout=60)
    assert answer.status_code == 200 and answer.text != str(spare)
    assert Path(f"/proc/{answer.text}/status").read_text().count(str(EXEC_ID_BASE + theirs)) >= 4
    # New limits: the spare started under the old ones is closed, never used.
    _limits(exec_stack, memory_mib=192)
    try:
        exec_stack.deploy("lim", PID.format(tag="c"))
        r = exec_stack.call("lim")
        assert r.status_code == 200 and r.text != str(spare)
        assert _memory_limit(int(r.text)) == 192 << 20
        deadline = time.monotonic() + 10
        while Path(f"/proc/{spare}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{spare}").exists(), "the spare with the old limits lives on"
        assert _memory_limit(_spare(project)) == 192 << 20
    finally:
        _limits(exec_stack, memory_mib=256)


def test_a_script_that_does_not_load_in_a_spare_is_named_by_line(exec_stack: ExecStack) -> None:
    exec_stack.deploy("ok", PID.format(tag="x"))
    assert exec_stack.call("ok").status_code == 200
    spare = _spare(exec_stack.project)
    exec_stack.deploy("bad", "export default {\n  fetch() {\n    let x = = 1;\n  }\n}\n")
    r = exec_stack.call("bad")
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert f"scripts/{exec_stack.project}/bad.ts:3:13" in message, message
    assert "spare" not in message
    deadline = time.monotonic() + 10
    while Path(f"/proc/{spare}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{spare}").exists(), "the spare that took it is gone"
