"""The sleep bench's wake hops: a single wake's hops add up to its time, and the
tail names the hops of the slowest wakes."""

from __future__ import annotations

from hoody.bench.sleep import _breakdown, _tail


def _wake(agent: float, node: float, port: float, total_ms: float) -> dict[str, float]:
    # The router's sums for one wake at its node, in ms: no control plane hop.
    per = {"sum": agent + node, "control_plane": 0.0, "agent": agent, "node": node, "port": port}
    return _breakdown(per, [total_ms])


def test_one_wakes_hops_add_up_to_its_time() -> None:
    hops = _wake(agent=2.0, node=3.0, port=1.0, total_ms=10.0)
    assert hops["to_agent"] == 2.0
    assert hops["node"] == 3.0
    assert hops["first_answer"] == 4.0
    assert sum(hops.values()) == 10.0


def test_tail_names_the_slowest_wakes_and_each_hops_p95() -> None:
    hops = [_wake(2.0, 3.0, 1.0, 10.0) for _ in range(19)]
    hops.append(_wake(2.0, 3.0, 1.0, 90.0))  # one wake waited 80 ms for its answer
    tail = _tail(hops)
    assert tail["slowest_ms"][0]["first_answer"] == 84.0
    assert len(tail["slowest_ms"]) == 5
    assert tail["breakdown_p95_ms"]["node"] == 3.0
    assert _tail([]) == {}
