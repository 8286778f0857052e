"""Tenants' CPU placement: spread over the host's cores, whole-host limits unpinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoody.agent.runtime.cpus import CpuPlacer, cpu_list, held_cpusets, parse_cpu_list


@pytest.mark.parametrize(
    ("cpus", "text"), [({0}, "0"), ({0, 1, 2}, "0-2"), ({0, 2, 3, 7}, "0,2-3,7"), (set(), "")]
)
def test_cpu_lists_round_trip(cpus: set[int], text: str) -> None:
    assert cpu_list(cpus) == text
    assert parse_cpu_list(text) == cpus


def test_tenants_are_spread_over_the_cores() -> None:
    placer = CpuPlacer([0, 1])
    assert placer.place("a", 1.0) == "0"
    assert placer.place("b", 1.0) == "1"  # not on a's core
    assert placer.place("c", 0.5) == "0"
    assert placer.place("d", 0.5) == "1"
    assert placer.loads() == {0: 1.5, 1: 1.5}


def test_a_limit_is_rounded_up_to_whole_cores_and_counted_across_them() -> None:
    placer = CpuPlacer(range(4))
    assert placer.place("a", 1.5) == "0-1"
    assert placer.loads() == {0: 0.75, 1: 0.75, 2: 0.0, 3: 0.0}
    assert placer.place("b", 2.0) == "2-3"
    assert placer.place("c", 0.1) == "0"


def test_a_limit_covering_every_core_is_not_pinned() -> None:
    placer = CpuPlacer([0, 1])
    assert placer.place("a", 2.0) is None
    assert placer.place("b", 8) is None
    assert placer.loads() == {0: 0.0, 1: 0.0}


def test_released_and_replaced_placements_free_their_cores() -> None:
    placer = CpuPlacer([0, 1])
    placer.place("a", 1.0)
    placer.place("b", 1.0)
    placer.release("a")
    assert placer.place("c", 1.0) == "0"
    assert placer.place("c", 1.0) == "0"  # placed again (a restart): counted once
    assert placer.loads() == {0: 1.0, 1: 1.0}
    placer.release("never-placed")


def test_adopted_cpusets_count_and_whole_host_sets_do_not() -> None:
    placer = CpuPlacer([0, 1, 2, 3])
    placer.adopt("a", "0-1")
    placer.adopt("b", "0-3")  # everything: no pin
    placer.adopt("c", "9")  # not a CPU of this host
    assert placer.loads() == {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}
    assert placer.place("d", 2) == "2-3"


def test_adopting_a_placed_tenant_keeps_its_share() -> None:
    placer = CpuPlacer([0, 1])
    placer.place("a", 0.5)
    placer.adopt("a", "0")  # read back while this agent placed it: no change
    assert placer.loads() == {0: 0.5, 1: 0.0}


def test_held_cpusets_are_read_from_tenant_cgroups_with_processes(tmp_path: Path) -> None:
    for tid, procs, cpus in (("a", "42\n", "1\n"), ("b", "", "0\n")):
        group = tmp_path / "cpuset" / "hoody-n1" / tid
        group.mkdir(parents=True)
        (group / "cgroup.procs").write_text(procs)
        (group / "cpuset.cpus").write_text(cpus)
    assert list(held_cpusets(tmp_path, "v1", "hoody-n1")) == [("a", "1")]
    assert list(held_cpusets(tmp_path, "v2", "missing")) == []
