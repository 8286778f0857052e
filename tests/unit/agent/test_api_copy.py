"""A copy through the agent's own API: the body is a TenantSpec, checked by the same
rules as everywhere else before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoody.agent.client import raise_for_error
from hoody.agent.spec import LimitsSpec, SleepSpec, TenantSpec
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
    # Sent as raw JSON: the client's own TenantSpec would refuse it before sending.
    answer = agent.client().http.post("/v1/templates/demo/copy", json=body)
    assert answer.status_code == 400
    with pytest.raises(InvalidInput, match=match):
        raise_for_error(answer)
    assert agent.tenants == {}
    agent.close()


def test_the_agent_makes_what_the_spec_asks(tmp_path: Path) -> None:
    agent = LocalAgent("n1", tmp_path)
    spec = TenantSpec(
        name="t1",
        env={"PLAN": "pro"},
        limits=LimitsSpec(memory_mib=64),
        sleep=SleepSpec(idle_seconds=30),
        metadata={"customer": "cus_1"},
    )
    rec = agent.client().copy("demo", spec, start=False)
    assert (rec["id"], rec["state"], rec["env"]["PLAN"]) == ("t1", "stopped", "pro")
    assert rec["limits"]["memory_mib"] == 64 and rec["limits"]["cpu"] == 1.0
    assert rec["sleep"] == {"idle_seconds": 30, "mode": "stopped"}
    assert rec["metadata"] == {"customer": "cus_1"}
    agent.close()
