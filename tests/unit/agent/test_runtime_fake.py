from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hoody.agent.ids import IdArea
from hoody.agent.runtime import ContainerSpec, ExecResult
from hoody.agent.runtime.fake import FakeRuntime
from hoody.agent.spec import Limits
from hoody.errors import Conflict, HostError
from tests.contract.runtime import MakeSpec, RuntimeContract


def spec(tid: str) -> ContainerSpec:
    return ContainerSpec(
        tid=tid,
        rootfs=Path("/nonexistent/rootfs"),
        args=("app",),
        limits=Limits(),
        netns=Path(f"/run/netns/{tid}"),
        log_path=Path(f"/nonexistent/{tid}.log"),
        ids=IdArea().ids(0),
        userns=Path("/fake/userns"),
        env={"PORT": "8080"},
    )


class TestFakeRuntime(RuntimeContract):
    @pytest.fixture
    def runtime(self) -> Iterator[FakeRuntime]:
        yield FakeRuntime()

    @pytest.fixture
    def make_spec(self) -> MakeSpec:
        return spec


def test_a_crashed_container_is_stopped_and_can_be_started_again() -> None:
    runtime = FakeRuntime()
    first = runtime.start(spec("t1"))
    runtime.crash("t1", oom=True)
    assert runtime.state("t1").status == "stopped"
    assert runtime.memory_events("t1")["oom_kill"] == 1
    with pytest.raises(Conflict, match="stopped"):
        runtime.exec("t1", ["true"])
    assert runtime.start(spec("t1")) != first


def test_canned_responses_win_over_builtins() -> None:
    runtime = FakeRuntime(responses={("echo", "x"): ExecResult(0, "canned\n", "")})
    runtime.start(spec("t1"))
    assert runtime.exec("t1", ["echo", "x"]).stdout == "canned\n"
    assert runtime.exec("t1", ["env"]).stdout.splitlines()[-1] == "PORT=8080"
    assert runtime.exec("t1", ["nope"]).exit_code == 127


def test_injected_start_failure_leaves_nothing() -> None:
    runtime = FakeRuntime()
    runtime.fail_start.add("t1")
    with pytest.raises(HostError):
        runtime.start(spec("t1"))
    assert runtime.state("t1").status == "absent"
    assert runtime.list() == []
