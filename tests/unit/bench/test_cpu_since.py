"""The provision bench's CPU figures: /proc/stat's steal share, and the CPU time spent
on work, between two reads."""

from __future__ import annotations

import os

import pytest

from hoody.bench import provision


def between(
    monkeypatch: pytest.MonkeyPatch, first: list[int], second: list[int]
) -> provision.CpuSince:
    """A CpuSince whose two reads of /proc/stat's cpu line are `first` and `second`
    (user nice system idle iowait irq softirq steal)."""
    reads = iter([first, second])
    monkeypatch.setattr(provision, "_cpu_times", lambda: next(reads))
    return provision.CpuSince()


def test_the_stolen_share_is_steal_over_all_time_between_two_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = between(monkeypatch, [100, 0, 50, 800, 10, 0, 0, 40], [160, 0, 90, 1000, 10, 0, 0, 90])
    # 350 ticks passed, 50 of them stolen.
    assert cpu.fraction() == round(50 / 350, 3)


def test_it_reads_this_machines_counters() -> None:
    assert 0.0 <= provision.CpuSince().fraction() <= 1.0


def test_busy_seconds_count_work_not_idle_iowait_or_steal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = between(monkeypatch, [100, 5, 50, 800, 10, 1, 2, 40], [160, 7, 90, 1000, 30, 2, 4, 90])
    ticks = 60 + 2 + 40 + 1 + 2
    assert cpu.busy_seconds() == ticks / os.sysconf("SC_CLK_TCK")
