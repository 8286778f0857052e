"""Memory pressure from PSI readings, and its relief: idle tenants put to sleep."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoody.agent.engine import Node
from hoody.agent.pressure import MemoryPressure, PressureRelief, Psi, read_psi
from hoody.agent.runtime.fake import FakeRuntime
from hoody.agent.spec import TenantSpec
from hoody.errors import Exhausted
from tests.unit.agent.test_engine import SOURCE, Factory, make_node

__all__ = ["make_node"]  # the fixture, shared with the engine tests


class Readings:
    """PSI as the kernel would show it: `stall(pct)` adds that share of a second."""

    def __init__(self) -> None:
        self.total = 0

    def stall(self, pct: float) -> None:
        self.total += int(pct * 1e4)

    def __call__(self) -> Psi:
        return Psi(0.0, 0.0, self.total, 0)


def test_psi_is_read_from_the_kernel_format(tmp_path: Path) -> None:
    path = tmp_path / "memory"
    path.write_text(
        "some avg10=12.50 avg60=3.00 avg300=0.50 total=123456\n"
        "full avg10=1.25 avg60=0.00 avg300=0.00 total=789\n"
    )
    assert read_psi(path) == Psi(12.5, 1.25, 123456, 789)
    assert read_psi(tmp_path / "absent") is None
    assert read_psi() is not None, "this kernel has PSI (/proc/pressure/memory)"


def test_pressure_is_sustained_only_after_enough_seconds_above_the_threshold() -> None:
    psi = Readings()
    pressure = MemoryPressure(pct=10, seconds=3, read=psi)
    now = 100.0
    pressure.sample(now)
    for pct in (50, 50, 5, 50, 50):  # a dip below restarts the count
        psi.stall(pct)
        now += 1
        pressure.sample(now)
    assert pressure.stall_pct == 50 and not pressure.sustained
    psi.stall(20)
    now += 1
    pressure.sample(now)
    assert pressure.sustained
    assert pressure.headroom()["memory_pressured"] == 1
    now += 1
    pressure.sample(now)  # no stall this second
    assert not pressure.sustained and pressure.headroom()["memory_pressured"] == 0


@pytest.fixture
def pressured(make_node: Factory) -> tuple[Node, Readings, PressureRelief]:
    psi = Readings()
    node = make_node()
    node.pressure = MemoryPressure(pct=10, seconds=2, read=psi)
    node.create_template("app", SOURCE)
    return node, psi, PressureRelief(node, node.pressure, idle_after=5, batch=2)


def test_under_pressure_the_idlest_sleep_and_busy_ones_keep_running(
    pressured: tuple[Node, Readings, PressureRelief],
) -> None:
    node, psi, relief = pressured
    runtime: FakeRuntime = node.runtime  # type: ignore[assignment]
    for tid in ("idle-a", "idle-b", "idle-c", "busy"):
        node.copy("app", TenantSpec(name=tid))
    now = 1000.0
    relief.once(now)
    for second in range(1, 11):
        runtime.burn("busy", 0.5)
        if second == 3:
            runtime.burn("idle-c", 0.5)  # idle-c did something 7 s ago
        relief.once(now + second)
    assert node.tenant("idle-a").status == "running", "no pressure, no sleep"
    now += 10
    for second in range(1, 3):
        psi.stall(40)
        runtime.burn("busy", 0.5)
        relief.once(now + second)
    assert node.pressure is not None and node.pressure.sustained
    with pytest.raises(Exhausted, match="memory pressure"):
        node.copy("app", TenantSpec(name="late"))
    states = {t.id: (t.status, t.asleep) for t in node.tenants()}
    assert states["idle-a"] == states["idle-b"] == ("sleeping", "stopped")
    assert states["busy"] == ("running", "")
    assert states["idle-c"] == ("running", ""), "two a round, idlest first"
    psi.stall(40)
    runtime.burn("busy", 0.5)
    assert relief.once(now + 3) == ["idle-c"]
    assert node.tenant("busy").status == "running"
    relief.once(now + 4)  # the pressure is over
    assert not node.pressure.sustained
    assert node.copy("app", TenantSpec(name="late")).status == "running"
