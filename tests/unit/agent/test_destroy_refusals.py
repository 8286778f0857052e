"""`hoody node destroy` and `hoody down --purge` remove nothing unless told --yes, and
nothing while the node's agent still answers: each refusal says what and how to go on;
the purge removes `hoody up`'s own files and keeps others'. (What they remove of a real
node is tested in tests/integration/control/test_up.py.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hoody.agent.config import NodeConfig
from hoody.agent.state import NodeStore
from hoody.cli.main import app
from hoody.errors import Conflict, InvalidInput, NotFound


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that answers, as a running agent's would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def _node(state_dir: Path, listen: str = "127.0.0.1:1") -> NodeConfig:
    config = NodeConfig(
        state_dir=state_dir, pool=state_dir / "pool", pool_image=None, listen=listen
    )
    config.save()
    NodeStore(config.db_path).close()
    return config


def _invoke(*argv: str) -> BaseException | None:
    return CliRunner().invoke(app, list(argv)).exception


def test_destroy_without_yes_says_what_it_would_remove(tmp_path: Path) -> None:
    _node(tmp_path)
    error = _invoke("node", "destroy", "--state-dir", str(tmp_path))
    assert isinstance(error, InvalidInput)
    assert "0 tenant(s)" in error.message and "--yes" in error.message
    assert (tmp_path / "node.json").exists() and (tmp_path / "node.db").exists()


def test_destroy_refuses_while_the_agent_answers(tmp_path: Path, listener: socket.socket) -> None:
    host, port = listener.getsockname()
    _node(tmp_path, f"{host}:{port}")
    error = _invoke("node", "destroy", "--yes", "--state-dir", str(tmp_path))
    assert isinstance(error, Conflict)
    assert f"{host}:{port}" in error.message and "stop it first" in error.message
    assert (tmp_path / "node.json").exists()


def test_destroy_of_no_node_names_the_folder(tmp_path: Path) -> None:
    error = _invoke("node", "destroy", "--yes", "--state-dir", str(tmp_path))
    assert isinstance(error, NotFound) and str(tmp_path) in error.message


def test_down_purge_without_yes_names_the_node_and_the_control_plane(tmp_path: Path) -> None:
    _node(tmp_path)
    (tmp_path / "control").mkdir()
    error = _invoke("down", "--purge", "--state-dir", str(tmp_path))
    assert isinstance(error, InvalidInput)
    assert "node hoody" in error.message and str(tmp_path / "control") in error.message
    assert "--yes" in error.message
    assert (tmp_path / "control").is_dir() and (tmp_path / "node.json").exists()


def test_purge_without_a_node_removes_ups_files_and_an_empty_exec_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hoody.cli.up import purge_up
    from hoody.exec import gateway

    state, exec_root = tmp_path / "state", tmp_path / "exec"
    (state / "control").mkdir(parents=True)
    (state / "control" / "admin.token").write_text("x")
    (state / "up.log").write_text("")
    exec_root.mkdir()
    monkeypatch.setattr(gateway, "RUN_ROOT", exec_root)
    assert purge_up(state) == 0
    assert not state.exists() and not exec_root.exists()


def test_purge_keeps_what_is_not_ups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hoody.cli.up import purge_up
    from hoody.exec import gateway

    state, exec_root = tmp_path / "state", tmp_path / "exec"
    state.mkdir()
    (state / "notes.txt").write_text("mine")
    (exec_root / "1234-abcdef").mkdir(parents=True)  # another gateway's sandboxes
    monkeypatch.setattr(gateway, "RUN_ROOT", exec_root)
    purge_up(state)
    assert (state / "notes.txt").read_text() == "mine"
    assert (exec_root / "1234-abcdef").is_dir()
