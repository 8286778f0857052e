"""The node agent's own API refuses what the control plane's refuses (one validator,
one table of bad requests: tests/bad_input.py), and makes nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hoody.agent.api import create_app
from hoody.agent.engine import Node, TemplateSource
from tests.bad_input import BAD_LIMITS_AND_ENV
from tests.fake_node import fake_node

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _rootfs(target: Path) -> None:
    (target / "app").mkdir()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Node, TestClient]]:
    node = fake_node(tmp_path, "ai")
    node.create_template("app", TemplateSource(_rootfs, "test"), args=["/app"])
    with TestClient(create_app(node, TOKEN)) as http:
        yield node, http
    node.store.close()


@pytest.mark.parametrize(("limits", "env", "problem"), BAD_LIMITS_AND_ENV)
def test_a_bad_copy_is_refused_by_the_agent_too(
    agent: tuple[Node, TestClient],
    tmp_path: Path,
    limits: dict[str, Any] | None,
    env: dict[str, Any] | None,
    problem: str,
) -> None:
    node, http = agent
    body = {"name": "bad", "limits": limits, "env": env}
    r = http.post("/v1/templates/app/copy", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert re.search(problem, r.json()["error"]["message"]), r.json()
    assert node.tenants() == []
    # A template is held to the same rules.
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    r = http.post(
        "/v1/templates",
        json={"name": "bad", "source": {"rootfs": str(rootfs)}, "env": env, "limits": limits},
        headers=AUTH,
    )
    assert r.status_code == 400, r.text
    assert [t.name for t in node.store.templates()] == ["app"]


def test_a_good_copy_passes(agent: tuple[Node, TestClient]) -> None:
    node, http = agent
    body = {"name": "good", "limits": {"cpu": 0.5}, "env": {"PLAN": "pro", "_X1": "é" * 100}}
    r = http.post("/v1/templates/app/copy", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert node.tenant("good").env["PLAN"] == "pro" and node.tenant("good").limits.cpu == 0.5


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/v1/templates/app/copy", '{"name": "t1", "limits": {"cpu": %s}}'),
        ("PATCH", "/v1/node", '{"overcommit": %s}'),
        ("POST", "/v1/templates/app/copy", '{"name": "t1", "metadata": {"n": [1, %s]}}'),
    ],
)
def test_numbers_that_are_not_finite_are_refused(
    agent: tuple[Node, TestClient], method: str, path: str, template: str, number: str
) -> None:
    """Python's json reads NaN and Infinity (not JSON) and 1e999 as infinity; the
    agent refuses them before any handler sees the body."""
    node, http = agent
    overcommit = node.config.overcommit
    r = http.request(method, path, content=template % number, headers=AUTH)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "not finite" in message or "no field can take" in message, message
    assert "finite numbers" in message
    assert node.tenants() == [] and node.config.overcommit == overcommit


def test_request_bodies_are_capped_at_one_mib(agent: tuple[Node, TestClient]) -> None:
    node, http = agent
    padded = '{"name": "big", "metadata": {"pad": "%s"}}'
    limit = 1 << 20
    # Declared over the limit: refused before a byte of it is read.
    r = http.post("/v1/templates/app/copy", content=padded % ("x" * limit), headers=AUTH)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large" and "1048576-byte limit" in error["message"]
    # Sent without a length (chunked): refused once the bytes pass the limit.
    chunks = (b"x" * 65536 for _ in range(64))
    r = http.post("/v1/templates/app/copy", content=chunks, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    assert node.tenants() == []
    # Just under the limit is a body like any other (padded with whitespace: the
    # fields themselves have their own, smaller limits).
    small = '{"name": "big", "metadata": {"pad": "x"}}'
    body = small + " " * (limit - len(small))
    assert len(body) == limit
    r = http.post("/v1/templates/app/copy", content=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert [t.id for t in node.tenants()] == ["big"]


def test_a_template_record_with_a_time_that_is_no_time_is_refused(
    agent: tuple[Node, TestClient],
) -> None:
    _, http = agent
    for record in ('{"created_at": "nan"}', '{"created_at": NaN}', '{"created_at": "inf"}'):
        r = http.post(
            "/v1/templates/app/7/receive",
            content=b"",
            headers={**AUTH, "X-Hoody-Template": record},
        )
        assert r.status_code == 400 and "X-Hoody-Template" in r.text, r.text
