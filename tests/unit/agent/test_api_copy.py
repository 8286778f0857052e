"""A copy through the agent's own API: the body is a TenantSpec, checked by the same
rules as everywhere else before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoody.errors import InvalidInput
from tests.local_agent import LocalAgent


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"env": {"1A": "x"}}, "env name '1A' is invalid"),
        ({"env": {"A": "x" * 5000}}, "over 4096 bytes"),
        ({"limits": {"cpu": True}}, "cpu limit True is invalid"),
        ({"limits": {"gpu": 1}}, "unknown limit 'gpu'"),
        ({"sleep": {"mode": "hibernate"}}, "sleep mode 'hibernate' is invalid"),
        ({"colour": "red"}, "field colour"),
    ],
)
def test_the_agent_refuses_a_bad_spec_and_makes_nothing(
    tmp_path: Path, body: dict[str, object], match: str
) -> None:
    agent = LocalAgent("n1", tmp_path)
    with pytest.raises(InvalidInput, match=match):
        agent.client().copy("demo", **body)
    assert agent.tenants == {}
    agent.close()


def test_the_agent_makes_what_the_spec_asks(tmp_path: Path) -> None:
    agent = LocalAgent("n1", tmp_path)
    rec = agent.client().copy(
        "demo",
        name="t1",
        env={"PLAN": "pro"},
        limits={"memory_mib": 64},
        sleep={"idle_seconds": 30},
        metadata={"customer": "cus_1"},
        start=False,
    )
    assert (rec["id"], rec["state"], rec["env"]["PLAN"]) == ("t1", "stopped", "pro")
    assert rec["limits"]["memory_mib"] == 64 and rec["limits"]["cpu"] == 1.0
    assert rec["sleep"] == {"idle_seconds": 30, "mode": "stopped"}
    assert rec["metadata"] == {"customer": "cus_1"}
    agent.close()
