"""The behaviour every Runtime must show, real (runc/crun) or fake.

A test module subclasses RuntimeContract and provides two fixtures:

    runtime    a fresh Runtime whose containers are removed after the test
    make_spec  a callable `make_spec(tid) -> ContainerSpec` for a long-running tenant
               that exits on SIGTERM
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hoody.agent.runtime import EVENT_KEYS, ContainerSpec, ContainerState, Runtime
from hoody.errors import Conflict, NotFound

MakeSpec = Callable[[str], ContainerSpec]


class RuntimeContract:
    def test_start_runs_the_tenant_with_a_pid(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        pid = runtime.start(make_spec("ct-start"))
        assert pid > 0
        state = runtime.state("ct-start")
        assert state.status == "running"
        assert state.pid == pid

    def test_exec_returns_output_and_exit_code(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        runtime.start(make_spec("ct-exec"))
        result = runtime.exec("ct-exec", ["echo", "hello", "tenant"])
        assert (result.exit_code, result.stdout) == (0, "hello tenant\n")
        assert runtime.exec("ct-exec", ["false"]).exit_code == 1

    def test_exec_sees_the_tenant_hostname(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        runtime.start(make_spec("ct-host"))
        assert runtime.exec("ct-host", ["hostname"]).stdout.strip() == "ct-host"

    def test_stop_leaves_nothing_and_is_harmless_twice(
        self, runtime: Runtime, make_spec: MakeSpec
    ) -> None:
        runtime.start(make_spec("ct-stop"))
        runtime.stop("ct-stop", timeout=5)
        assert runtime.state("ct-stop").status == "absent"
        assert "ct-stop" not in runtime.list()
        runtime.stop("ct-stop", timeout=5)
        runtime.stop("ct-never", timeout=0)
        assert runtime.state("ct-never").status == "absent"

    def test_start_while_running_is_a_conflict(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        pid = runtime.start(make_spec("ct-twice"))
        with pytest.raises(Conflict, match="already running"):
            runtime.start(make_spec("ct-twice"))
        assert runtime.state("ct-twice").pid == pid

    def test_start_again_after_stop(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        runtime.start(make_spec("ct-again"))
        runtime.stop("ct-again", timeout=0)
        assert runtime.start(make_spec("ct-again")) > 0
        assert runtime.state("ct-again").status == "running"

    def test_list_names_the_containers(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        runtime.start(make_spec("ct-list-a"))
        runtime.start(make_spec("ct-list-b"))
        assert {"ct-list-a", "ct-list-b"} <= set(runtime.list())
        runtime.stop("ct-list-a", timeout=0)
        assert "ct-list-a" not in runtime.list()
        assert "ct-list-b" in runtime.list()

    def test_exec_in_an_absent_container_is_not_found(self, runtime: Runtime) -> None:
        with pytest.raises(NotFound):
            runtime.exec("ct-nobody", ["true"])

    def test_memory_events_are_counters(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        runtime.start(make_spec("ct-events"))
        events = runtime.memory_events("ct-events")
        assert set(events) == set(EVENT_KEYS)
        assert events["oom_kill"] == 0
        assert all(isinstance(v, int) for v in events.values())
        assert runtime.memory_events("ct-nobody") == dict.fromkeys(EVENT_KEYS, 0)

    def test_working_set_is_what_a_running_tenant_uses(
        self, runtime: Runtime, make_spec: MakeSpec
    ) -> None:
        runtime.start(make_spec("ct-ws"))
        used = runtime.working_set("ct-ws")
        # Something (its init at least), and within its limit.
        assert 0 < used <= make_spec("ct-ws").limits.memory_mib << 20
        assert runtime.working_set("ct-nobody") == 0
        runtime.stop("ct-ws", timeout=0)
        assert runtime.working_set("ct-ws") == 0

    def test_freeze_keeps_it_running_and_thaw_lets_it_go_on(
        self, runtime: Runtime, make_spec: MakeSpec
    ) -> None:
        pid = runtime.start(make_spec("ct-freeze"))
        assert not runtime.frozen("ct-freeze")
        runtime.freeze("ct-freeze")
        runtime.freeze("ct-freeze")  # twice is harmless
        assert runtime.frozen("ct-freeze")
        assert runtime.state("ct-freeze") == ContainerState("running", pid)
        with pytest.raises(Conflict, match="frozen"):
            runtime.exec("ct-freeze", ["true"])
        runtime.thaw("ct-freeze")
        runtime.thaw("ct-freeze")
        assert not runtime.frozen("ct-freeze")
        assert runtime.exec("ct-freeze", ["echo", "awake"]).stdout == "awake\n"

    def test_a_frozen_tenant_stops(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        runtime.start(make_spec("ct-frozen-stop"))
        runtime.freeze("ct-frozen-stop")
        runtime.stop("ct-frozen-stop", timeout=5)
        assert runtime.state("ct-frozen-stop").status == "absent"
        assert not runtime.frozen("ct-frozen-stop")
        assert runtime.start(make_spec("ct-frozen-stop")) > 0
        assert not runtime.frozen("ct-frozen-stop")

    def test_freeze_needs_a_running_tenant(self, runtime: Runtime) -> None:
        with pytest.raises(NotFound):
            runtime.freeze("ct-nobody")
        runtime.thaw("ct-nobody")  # harmless
        assert not runtime.frozen("ct-nobody")

    def test_cpu_time_counts_up_from_zero(self, runtime: Runtime, make_spec: MakeSpec) -> None:
        runtime.start(make_spec("ct-cpu"))
        used = runtime.cpu_time("ct-cpu")
        assert isinstance(used, float) and used >= 0.0
        assert runtime.cpu_time("ct-cpu") >= used
        assert runtime.cpu_time("ct-nobody") == 0.0
