"""A node agent's engine over the fake drivers (the ones that pass the drivers'
contract suites), for tests of the agent's API in process."""

from __future__ import annotations

from pathlib import Path

from hoody.agent.config import NodeConfig
from hoody.agent.engine import Node
from hoody.agent.network.fake import FakeFirewall, FakeNetwork
from hoody.agent.runtime.fake import FakeRuntime
from hoody.agent.state import NodeStore
from hoody.agent.storage.fake import FakeStorage

__all__ = ["fake_node"]


def fake_node(root: Path, name: str) -> Node:
    """Node `name` with its state, run dir, pool and storage under `root`; the caller
    closes `node.store`."""
    config = NodeConfig(
        name=name, state_dir=root / "state", run_dir=root / "run", pool=root / "pool"
    )
    config.log_dir.mkdir(parents=True)
    return Node(
        config=config,
        store=NodeStore(config.db_path),
        storage=FakeStorage(root / "storage"),
        network=FakeNetwork(config.network),
        firewall=FakeFirewall(config.network),
        runtime=FakeRuntime(),
    )
