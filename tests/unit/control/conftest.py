"""Fixtures of the control plane unit tests: stores on both databases, a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn

from hoody.control.api import create_app
from hoody.control.db import Store
from hoody.control.service import Fleet, Settings
from tests.control_support import ManualClock, pg_store, pg_url, store

__all__ = ["clock", "clocked_server", "pg_store", "pg_url", "server", "store"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Fleet]]:
    yield from server_on(tmp_path, time.time)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def clocked_server(tmp_path: Path, clock: ManualClock) -> Iterator[tuple[str, Fleet]]:
    """A live server whose fleet reads `clock`."""
    yield from server_on(tmp_path, clock)


def server_on(tmp_path: Path, clock: Callable[[], float]) -> Iterator[tuple[str, Fleet]]:
    store = Store(f"sqlite:///{tmp_path / 'control.db'}")
    fleet = Fleet(store, settings=Settings(heartbeat_timeout=0.6), clock=clock)
    app = create_app(fleet, check_every=0.1)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", fleet
    srv.should_exit = True
    thread.join(10)
    fleet.close()
    store.close()
