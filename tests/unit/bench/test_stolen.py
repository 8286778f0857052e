"""The provision bench's steal figure: /proc/stat's steal share of the CPU time between
two reads."""

from __future__ import annotations

import pytest

from hoody.bench import provision


def test_the_stolen_share_is_steal_over_all_time_between_two_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = iter([[100, 0, 50, 800, 10, 0, 0, 40], [160, 0, 90, 1000, 10, 0, 0, 90]])
    monkeypatch.setattr(provision, "_cpu_times", lambda: next(reads))
    stolen = provision.Stolen()
    # 350 ticks passed, 50 of them stolen.
    assert stolen.fraction() == round(50 / 350, 3)


def test_it_reads_this_machines_counters() -> None:
    assert 0.0 <= provision.Stolen().fraction() <= 1.0
