"""What the usage meter reads: a sleeper's cgroup not every round."""

from __future__ import annotations

import collections
import time

from hoody.agent.node_info import measure
from hoody.agent.runtime.fake import FakeRuntime
from hoody.agent.spec import TenantSpec
from hoody.agent.usage import TtlCache
from tests.unit.agent.test_engine import SOURCE, Factory, make_node

__all__ = ["make_node"]


def test_sleepers_are_read_once_per_sleep_and_stopped_ones_not_at_all(
    make_node: Factory,
) -> None:
    node = make_node()
    runtime: FakeRuntime = node.runtime  # type: ignore[assignment]
    node.create_template("app", SOURCE)
    for tid in ("awake", "cold", "frozen"):
        node.copy("app", TenantSpec(name=tid))
        runtime.used[tid] = 5 << 20
    node.sleep("cold", "stopped")
    node.sleep("frozen", "frozen")
    reads: collections.Counter[str] = collections.Counter()
    working_set = runtime.working_set

    def counted(tid: str) -> int:
        reads[tid] += 1
        return working_set(tid)

    runtime.working_set = counted  # type: ignore[method-assign]
    disk, frozen = TtlCache(), TtlCache(60.0)
    for _ in range(3):
        uses = {u.tid: u.memory for u in measure(node, disk, frozen)}
    assert uses == {"awake": 5 << 20, "cold": 0, "frozen": 5 << 20}
    assert reads == {"awake": 3, "frozen": 1}, (
        "a frozen tenant cannot grow; a stopped one has no cgroup"
    )

    node.wake("frozen")
    runtime.used["frozen"] = 7 << 20
    time.sleep(0.01)  # the next sleep is another one, by its time
    node.sleep("frozen", "frozen")
    assert {u.tid: u.memory for u in measure(node, disk, frozen)}["frozen"] == 7 << 20
    assert reads["frozen"] == 2
