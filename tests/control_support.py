"""Shared by the control plane tests: databases (SQLite and a private PostgreSQL),
real agents over fake drivers (tests/local_agent.py) and a ready fleet (admin, one
project, two nodes with template demo).

PostgreSQL comes from scripts/postgres.sh (installs and starts a private cluster);
each test session gets its own database, dropped at the end, and each test starts
from empty tables.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from hoody.control.auth import Principal
from hoody.control.db import Base, Store
from hoody.control.service import Fleet, Settings
from tests.local_agent import LocalAgent, local_agents

ROOT = Path(__file__).resolve().parent.parent


class ManualClock:
    """The control plane's clock, moved only by the test (it starts at the wall clock's
    time): what a timeout decides then depends on the test's steps, not on how fast a
    loaded machine runs them."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def postgres_server() -> str:
    """The URL of the private test cluster's maintenance database."""
    if url := os.environ.get("HOODY_TEST_PG_URL"):
        return url
    result = subprocess.run(
        [str(ROOT / "scripts" / "postgres.sh")], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        # Not a skip: `make test` installs PostgreSQL (scripts/setup.sh), so a failure
        # here is a broken machine or script, and the fleet tests must not pass unseen.
        pytest.fail(f"scripts/postgres.sh failed: {result.stderr.strip()[-500:]}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    base = postgres_server()
    name = f"hoody_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty(store: Store) -> None:
    """Remove every row, keeping the schema (much faster than a new database)."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def pg_store(pg_url: str) -> Iterator[Store]:
    store = Store(pg_url)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty store on each database."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'control.db'}")
        yield s
        s.close()
    else:
        s = request.getfixturevalue("pg_store")
        empty(s)
        yield s


@dataclass
class World:
    """A fleet ready for copies: admin and project principals, their tokens, agents."""

    fleet: Fleet
    store: Store
    agents: dict[str, LocalAgent]
    admin: Principal
    admin_token: str
    project: int
    who: Principal
    project_token: str

    def heartbeat(self, name: str) -> dict[str, Any]:
        agent = self.agents[name]
        headroom = agent.headroom()
        usage = headroom.pop("templates")
        return self.fleet.heartbeat(self.admin, name, headroom, agent.template_list(), usage)


_STATE_DIRS: list[Path] = []


def _state_dir() -> Path:
    """A scratch control-plane state dir, removed when the test process exits (a unit
    run makes hundreds of worlds; each used to leave its folder in /tmp)."""
    if not _STATE_DIRS:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _STATE_DIRS])
    path = Path(tempfile.mkdtemp(prefix="hw-"))
    _STATE_DIRS.append(path)
    return path


def make_world(
    store: Store,
    nodes: dict[str, dict[str, Any]] | None = None,
    settings: Settings | None = None,
    clock: Any = None,
) -> World:
    nodes = nodes if nodes is not None else {"n1": {}, "n2": {}}
    settings = settings or Settings()
    if settings.state_dir is None:  # Exec keeps its key there
        settings = dataclasses.replace(settings, state_dir=_state_dir())
    root = _state_dir()
    agents = {
        name: LocalAgent(name, root / name, subnet=i + 1, **kw)
        for i, (name, kw) in enumerate(nodes.items())
    }
    kwargs: dict[str, Any] = {"agents": local_agents(agents.values()), "settings": settings}
    if clock is not None:
        kwargs["clock"] = clock
    fleet = Fleet(store, **kwargs)
    admin_token = fleet.bootstrap_admin()
    assert admin_token
    admin = fleet.authenticate(f"Bearer {admin_token}")
    project = fleet.create_project(admin, "acme")["id"]
    project_token = fleet.create_token(admin, "project", project_id=project)["token"]
    world = World(
        fleet,
        store,
        agents,
        admin,
        admin_token,
        project,
        fleet.authenticate(f"Bearer {project_token}"),
        project_token,
    )
    for name, agent in agents.items():
        fleet.join(admin, name, agent.url, agent.token)
        world.heartbeat(name)
    return world
