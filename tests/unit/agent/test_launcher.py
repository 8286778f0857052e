"""The launcher: runs commands as its children, adopts what they leave behind (as a
tenant's init is left by `runc run --detach`), reaps it, and outlives the agent while
it has children. Plain shell commands stand in for the runtime; no root needed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoody.agent.runtime.launcher import Launcher
from hoody.errors import HostError


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    it = Launcher()
    yield it
    it.close()


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict; empty once the process is reaped."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def gone(pid: int, within: float = 5.0) -> bool:
    """True once `pid` is reaped (a zombie still has its /proc entry)."""
    deadline = time.monotonic() + within
    while status(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_run_answers_its_exit_code_and_appends_its_output(
    launcher: Launcher, tmp_path: Path
) -> None:
    out = tmp_path / "log"
    assert launcher.run(sh("echo one; exit 3"), out, timeout=10) == 3
    assert launcher.run(sh("echo two >&2; kill -TERM $$"), out, timeout=10) == -signal.SIGTERM
    assert out.read_text() == "one\ntwo\n"
    assert out.stat().st_mode & 0o777 == 0o600


def test_a_run_gets_null_stdin_default_signals_and_no_other_descriptor(
    launcher: Launcher, tmp_path: Path
) -> None:
    out = tmp_path / "log"
    script = "readlink /proc/self/fd/0; ls /proc/self/fd; grep SigIgn /proc/self/status"
    assert launcher.run(sh(f"exec 3>&-; {script}"), out, timeout=10) == 0
    lines = out.read_text().split()
    assert lines[0] == "/dev/null"
    # ls sees 0-2 and the directory it reads, nothing of the launcher's or the agent's
    assert lines[1:5] == ["0", "1", "2", "3"] and lines[5] == "SigIgn:"
    ignored = int(lines[6], 16)
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
        # The launcher ignores SIGINT, Python SIGPIPE and SIGXFSZ: its runs do not.
        assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored in a run"


def test_the_launcher_adopts_and_reaps_what_a_run_leaves(
    launcher: Launcher, tmp_path: Path
) -> None:
    """As `runc run --detach` leaves the tenant's init: the orphan is the launcher's
    child, not the host init's, and is reaped as soon as it exits."""
    pidfile = tmp_path / "pid"
    assert launcher.run(sh(f"sleep 60 & echo $! > {pidfile}"), tmp_path / "log", timeout=10) == 0
    orphan = int(pidfile.read_text())
    assert launcher.pid is not None
    assert int(status(orphan)["PPid"]) == launcher.pid
    os.kill(orphan, signal.SIGKILL)
    assert gone(orphan), "the launcher reaps the orphan when it exits: no zombie"


def test_runs_are_concurrent(launcher: Launcher, tmp_path: Path) -> None:
    codes: dict[str, int] = {}

    def run(name: str, script: str) -> None:
        codes[name] = launcher.run(sh(script), tmp_path / name, timeout=10)

    slow = threading.Thread(target=run, args=("slow", "sleep 1; exit 4"))
    slow.start()
    started = time.monotonic()
    run("quick", "exit 5")
    assert time.monotonic() - started < 0.9, "a quick run does not wait behind a slow one"
    slow.join()
    assert codes == {"quick": 5, "slow": 4}


def test_a_run_past_its_timeout_is_killed(launcher: Launcher, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        launcher.run(sh(f"echo $$ > {pidfile}; exec sleep 60"), tmp_path / "log", timeout=0.5)
    assert gone(int(pidfile.read_text()))


def test_the_launcher_outlives_the_agent_while_it_has_children(tmp_path: Path) -> None:
    launcher = Launcher()
    pidfile = tmp_path / "pid"
    assert launcher.run(sh(f"sleep 60 & echo $! > {pidfile}"), tmp_path / "log", timeout=10) == 0
    orphan, pid = int(pidfile.read_text()), launcher.pid
    assert pid is not None
    launcher.close()  # the agent is gone
    os.kill(pid, signal.SIGINT)  # and Ctrl-C at its terminal does not take the launcher
    time.sleep(0.3)
    assert status(pid) and status(pid)["State"][0] != "Z", "it stays for its child"
    assert int(status(orphan)["PPid"]) == pid
    os.kill(orphan, signal.SIGKILL)
    assert gone(orphan) and gone(pid), "the last child gone, so is the launcher"


def test_a_launcher_that_dies_fails_its_runs_and_is_started_again(
    launcher: Launcher, tmp_path: Path
) -> None:
    errors: list[BaseException] = []
    pidfile = tmp_path / "pid"

    def run() -> None:
        try:
            launcher.run(sh(f"echo $$ > {pidfile}; exec sleep 60"), tmp_path / "log", timeout=30)
        except BaseException as exc:
            errors.append(exc)

    waiting = threading.Thread(target=run)
    waiting.start()
    deadline = time.monotonic() + 5
    while launcher.pid is None or not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first = launcher.pid
    os.kill(first, signal.SIGKILL)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)  # its child, now the host init's
    waiting.join(10)
    assert len(errors) == 1 and isinstance(errors[0], HostError)
    assert "launcher" in str(errors[0]) and "retry" in str(errors[0])
    assert launcher.run(sh("exit 0"), tmp_path / "log", timeout=10) == 0
    assert launcher.pid not in (None, first)


def test_a_run_joins_namespaces_and_sets_rlimits_before_its_command(
    launcher: Launcher, tmp_path: Path
) -> None:
    # The run joins the namespaces given (here this process's own netns: joining
    # needs root, as the agent is, but no namespace of the test's own) and lowers NOFILE.
    out = tmp_path / "log"
    own = Path(f"/proc/{os.getpid()}/ns/net")
    script = "readlink /proc/self/ns/net; pwd; ulimit -n; ulimit -Hn"
    code = launcher.run(
        sh(script), out, setns=[(own, 0x40000000)], rlimits=[(7, 512, 600)], timeout=10
    )
    assert code == 0, out.read_text()
    assert out.read_text().split() == [os.readlink(own), "/", "512", "600"]


def test_a_namespace_that_cannot_be_joined_fails_the_run_and_says_why(
    launcher: Launcher, tmp_path: Path
) -> None:
    out = tmp_path / "log"
    code = launcher.run(sh("echo ran"), out, setns=[(tmp_path / "nope", 0x40000000)], timeout=10)
    assert code == 127
    assert "cannot start" in out.read_text() and "nope" in out.read_text()
    assert "ran" not in out.read_text()
