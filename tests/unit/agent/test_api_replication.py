"""Template versions between two agents over their HTTP API (fake drivers, in process):
one node sends, another receives, and what fails leaves nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hoody.agent.api import create_app
from hoody.agent.config import NodeConfig
from hoody.agent.engine import Node, TemplateSource
from hoody.agent.network.fake import FakeFirewall, FakeNetwork
from hoody.agent.runtime.fake import FakeRuntime
from hoody.agent.state import NodeStore
from hoody.agent.storage.fake import FakeStorage

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _rootfs(target: Path) -> None:
    (target / "app").mkdir()
    (target / "app" / "server.py").write_text("print('v1')\n")


def _node(tmp_path: Path, name: str) -> Node:
    config = NodeConfig(
        name=name,
        state_dir=tmp_path / name / "state",
        run_dir=tmp_path / name / "run",
        pool=tmp_path / name / "pool",
    )
    config.log_dir.mkdir(parents=True)
    return Node(
        config=config,
        store=NodeStore(config.db_path),
        storage=FakeStorage(tmp_path / name / "storage"),
        network=FakeNetwork(config.network),
        firewall=FakeFirewall(config.network),
        runtime=FakeRuntime(),
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, TestClient, Node, TestClient]]:
    a, b = _node(tmp_path, "na"), _node(tmp_path, "nb")
    a.create_template("app", TemplateSource(_rootfs, "test"), port=9000, env={"K": "v"})
    with TestClient(create_app(a, TOKEN)) as ha, TestClient(create_app(b, TOKEN)) as hb:
        yield a, ha, b, hb
    a.store.close()
    b.store.close()


def test_a_version_is_sent_and_received_with_its_record(
    pair: tuple[Node, TestClient, Node, TestClient],
) -> None:
    _, ha, b, hb = pair
    sent = ha.get("/v1/templates/app/1/send", headers=AUTH)
    assert sent.status_code == 200
    record = json.loads(sent.headers["x-hoody-template"])
    assert record["port"] == 9000 and int(sent.headers["x-hoody-size"]) > 0
    headers = {
        **AUTH,
        "X-Hoody-Template": sent.headers["x-hoody-template"],
        "X-Hoody-Uid-Base": sent.headers["x-hoody-uid-base"],
    }
    got = hb.post("/v1/templates/app/1/receive", content=sent.content, headers=headers)
    assert got.status_code == 201, got.text
    rec = b.store.template("app", 1)
    assert (rec.port, rec.env) == (9000, {"K": "v"})
    # The received version serves copies like one built here.
    tenant = b.copy("app")
    rootfs = b.storage.mount_tenant(tenant.id, -1)
    assert (rootfs / "app" / "server.py").read_text() == "print('v1')\n"
    again = hb.post("/v1/templates/app/1/receive", content=sent.content, headers=headers)
    assert again.status_code == 409


def test_what_cannot_be_received_is_refused_and_leaves_nothing(
    pair: tuple[Node, TestClient, Node, TestClient],
) -> None:
    _, ha, b, hb = pair
    sent = ha.get("/v1/templates/app/1/send", headers=AUTH)
    record = sent.headers["x-hoody-template"]
    cut = hb.post(
        "/v1/templates/app/1/receive",
        content=sent.content[: len(sent.content) // 2],
        headers={**AUTH, "X-Hoody-Template": record},
    )
    assert cut.status_code == 500 and "send it again" in cut.json()["error"]["message"]
    other_uids = hb.post(
        "/v1/templates/app/1/receive",
        content=sent.content,
        headers={**AUTH, "X-Hoody-Template": record, "X-Hoody-Uid-Base": "200000"},
    )
    assert other_uids.status_code == 400
    assert "shifted to uid 200000" in other_uids.json()["error"]["message"]
    no_record = hb.post("/v1/templates/app/1/receive", content=sent.content, headers=AUTH)
    assert no_record.status_code == 400
    assert b.store.templates() == [] and b.storage.list_template_versions() == []
    missing = ha.get("/v1/templates/app/1/send?parent=7", headers=AUTH)
    assert missing.status_code == 404
    assert ha.get("/v1/templates/app/1/send?parent=x", headers=AUTH).status_code == 400
