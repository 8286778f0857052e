"""Copy requests every door must refuse alike: the control plane's API and the node
agent's own API share one validator (hoody.agent.spec: check_env, Limits), and their
tests share this table of (limits, env, what the refusal says)."""

from __future__ import annotations

from typing import Any

BAD_LIMITS_AND_ENV: list[tuple[dict[str, Any] | None, dict[str, Any] | None, str]] = [
    ({"cpu": True}, None, "not true or false|cpu limit True"),
    ({"cpu": "2"}, None, "cpu"),
    ({"cpu": 0}, None, "cpu"),
    ({"cpu": 4096}, None, "cpu"),
    ({"memory_mib": True}, None, "not true or false|memory_mib limit True"),
    (None, {"1ABC": "x"}, "env name"),
    (None, {"A-B": "x"}, "env name"),
    (None, {"A" * 129: "x"}, "env name"),
    (None, {"A": "x\x00y"}, "NUL"),
    (None, {"A": "x" * 5000}, "4096 bytes"),
    (None, {"A": 1}, "must be a string|valid string"),
    (None, {f"V{i}": "x" for i in range(65)}, "65 variables"),
    (None, {f"V{i}": "x" * 4000 for i in range(10)}, "in all"),
]
