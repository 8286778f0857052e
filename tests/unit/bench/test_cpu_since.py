"""The provision bench's CPU figures: /proc/stat's steal share, and the CPU time spent
on work, between two reads."""

from __future__ import annotations

import os

import pytest

from hoody.bench import provision


def test_the_stolen_share_is_steal_over_all_time_between_two_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = iter([[100, 0, 50, 800, 10, 0, 0, 40], [160, 0, 90, 1000, 10, 0, 0, 90]])
    monkeypatch.setattr(provision, "_cpu_times", lambda: next(reads))
    stolen = provision.CpuSince()
    # 350 ticks passed, 50 of them stolen.
    assert stolen.fraction() == round(50 / 350, 3)


def test_it_reads_this_machines_counters() -> None:
    assert 0.0 <= provision.CpuSince().fraction() <= 1.0


def test_busy_seconds_count_work_not_idle_iowait_or_steal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # user nice system idle iowait irq softirq steal
    reads = iter([[100, 5, 50, 800, 10, 1, 2, 40], [160, 7, 90, 1000, 30, 2, 4, 90]])
    monkeypatch.setattr(provision, "_cpu_times", lambda: next(reads))
    cpu = provision.CpuSince()
    ticks = 60 + 2 + 40 + 1 + 2
    assert cpu.busy_seconds() == ticks / os.sysconf("SC_CLK_TCK")
