"""The agent's exec session over its WebSocket (fake drivers, in process): the frames
of hoody.execwire, auth, bad input and errors as the last message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from hoody.agent.api import create_app
from hoody.agent.engine import Node, TemplateSource
from hoody.agent.spec import TenantSpec
from tests.fake_node import fake_node

AUTH = {"Authorization": "Bearer secret"}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Node, TestClient]]:
    node = fake_node(tmp_path, "n1")
    with TestClient(create_app(node, "secret")) as http:  # its start makes the bridge
        node.create_template("web", TemplateSource(lambda p: (p / "app").mkdir(), "test"))
        node.copy("web", TenantSpec(name="t1"))
        yield node, http


def session(http: TestClient, start: dict[str, object], stdin: bytes = b"") -> list[object]:
    frames: list[object] = []
    with http.websocket_connect("/v1/tenants/t1/exec", headers=AUTH) as ws:
        ws.send_text(json.dumps(start))
        if stdin:
            ws.send_bytes(b"\x00" + stdin)
        ws.send_text('{"type": "eof"}')
        while True:
            message = ws.receive()
            if message["type"] == "websocket.close":
                break
            frames.append(message.get("bytes") or json.loads(message["text"]))
    return frames


def test_output_frames_then_the_exit_code(agent: tuple[Node, TestClient]) -> None:
    _, http = agent
    frames = session(http, {"argv": ["echo", "hi"]})
    assert frames == [b"\x01hi\n", {"type": "exit", "exit_code": 0, "error": None}]
    assert session(http, {"argv": ["false"]})[-1] == {
        "type": "exit",
        "exit_code": 1,
        "error": None,
    }


def test_stdin_reaches_the_command(agent: tuple[Node, TestClient]) -> None:
    _, http = agent
    frames = session(http, {"argv": ["cat"]}, stdin=b"round trip\n")
    assert b"".join(f[1:] for f in frames if isinstance(f, bytes)) == b"round trip\n"


def test_bad_start_and_unknown_tenant_end_with_an_error(agent: tuple[Node, TestClient]) -> None:
    _, http = agent
    bad = session(http, {"argv": []})[-1]
    assert isinstance(bad, dict) and bad["exit_code"] is None
    assert bad["error"]["code"] == "invalid_input" and "argv" in bad["error"]["message"]
    with http.websocket_connect("/v1/tenants/nope/exec", headers=AUTH) as ws:
        ws.send_text(json.dumps({"argv": ["true"]}))
        missing = json.loads(ws.receive_text())
    assert missing["error"]["code"] == "not_found"


def test_a_wrong_token_is_refused_at_the_handshake(agent: tuple[Node, TestClient]) -> None:
    _, http = agent
    with (
        pytest.raises(WebSocketDisconnect),
        http.websocket_connect("/v1/tenants/t1/exec", headers={"Authorization": "Bearer x"}),
    ):
        pass
