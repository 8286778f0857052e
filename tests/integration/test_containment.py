"""Containment, attacked from inside a tenant: what a hostile or sloppy tenant could do
to itself, its neighbours or the host, and what stops it (issue #10)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from hoody.agent.templates import DEMO_ARGS, demo_source
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode


def py(scratch: ScratchNode, tid: str, code: str, timeout: float = 60) -> dict[str, Any]:
    return scratch.client.exec(tid, ["/usr/bin/python3", "-c", code], timeout=timeout)


@pytest.fixture(scope="module")
def no_init_template(scratch: ScratchNode) -> str:
    """The demo app as a template that says its entrypoint is an init (it is not)."""
    scratch.node.create_template("noinit", demo_source(), args=DEMO_ARGS, init=False)
    return "noinit"


@pytest.fixture
def copy(scratch: ScratchNode) -> Iterator[Any]:
    made: list[str] = []

    def make(template: str = "demo-app", **body: Any) -> dict[str, Any]:
        rec = scratch.client.copy(template, **body)
        made.append(rec["id"])
        wait_http_ok(rec["url"] + "healthz")
        return rec

    yield make
    for tid in made:
        scratch.client.delete(tid)


# Orphans: each subshell forks a sleeper and exits at once, so the sleeper's parent
# becomes PID 1, which must reap it when it exits.
ORPHANS = "for i in $(seq 60); do (sleep 0.05 &); done; sleep 1"
COUNT = (
    "import os\n"
    "states = [open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0]\n"
    "          for p in os.listdir('/proc') if p.isdigit()]\n"
    "print(states.count('Z'), len(states))\n"
)


def zombies_and_pids(scratch: ScratchNode, tid: str) -> tuple[int, int]:
    # The counting process itself is in the list: one of the `len` is this python.
    zombies, total = py(scratch, tid, COUNT)["stdout"].split()
    return int(zombies), int(total)


def test_init_reaps_orphans_and_the_pids_quota_comes_back(scratch: ScratchNode, copy: Any) -> None:
    rec = copy(limits={"pids": 128})
    tid = rec["id"]
    before = scratch.client.tenant(tid)["usage"]["pids"]
    for _ in range(3):  # 180 orphans in all: more than the quota, were they kept
        result = scratch.client.exec(tid, ["/bin/sh", "-c", ORPHANS])
        assert result["exit_code"] == 0, result
    zombies, _ = zombies_and_pids(scratch, tid)
    assert zombies == 0
    assert scratch.client.tenant(tid)["usage"]["pids"] <= before + 1
    cmdline = py(scratch, tid, "print(open('/proc/1/cmdline').read().split(chr(0))[:3])")
    assert "/dev/init" in cmdline["stdout"] and "--" in cmdline["stdout"]


def test_without_init_the_same_orphans_stay_zombies(
    scratch: ScratchNode, copy: Any, no_init_template: str
) -> None:
    """The control for the test above: the app as PID 1 reaps nothing."""
    rec = copy(no_init_template, limits={"pids": 128})
    result = scratch.client.exec(rec["id"], ["/bin/sh", "-c", ORPHANS])
    assert result["exit_code"] == 0, result
    zombies, _ = zombies_and_pids(scratch, rec["id"])
    assert zombies >= 50


# An app that says goodbye on SIGTERM, in the tenant's log, and exits cleanly; sleep
# runs in the background so the shell runs its trap at once.
TRAPPER = [
    "/bin/sh",
    "-c",
    "trap 'echo got SIGTERM; exit 0' TERM; echo armed; while :; do sleep 0.1 & wait; done",
]


def test_stop_is_graceful_the_app_gets_sigterm(scratch: ScratchNode) -> None:
    scratch.node.create_template("trapper", demo_source(), args=TRAPPER)
    rec = scratch.client.copy("trapper")
    tid = rec["id"]
    try:
        deadline = time.monotonic() + 10
        while "armed" not in scratch.client.logs(tid) and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        stopped = scratch.client.action(tid, "stop")  # SIGKILL only after 5 s
        elapsed = time.monotonic() - started
        assert stopped["state"] == "stopped"
        assert "got SIGTERM" in scratch.client.logs(tid)
        assert elapsed < 4, f"stop took {elapsed:.1f} s: the app did not end on SIGTERM"
    finally:
        scratch.client.delete(tid)
        scratch.node.delete_template("trapper")
