"""Integration tests drive real kernel features and must run as root.

One scratch node (own pool, bridge, subnet, nft table, cgroup parent) with the
demo-app template serves the whole session; each test makes and deletes its own
tenants. The debootstrap result is cached in /var/cache/hoody across runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hoody import services
from hoody.bench.scratch import ScratchNode, scratch_node, sweep


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("tests/integration needs root (btrfs, netns, nftables, runc)")
    # What an earlier run killed before its cleanup left (tenants, mounts, loop
    # devices, links, tables) is removed before this one makes its own.
    swept = sweep()
    if swept:
        print(f"swept the scratch nodes of killed runs: {', '.join(swept)}")


@pytest.fixture(scope="session")
def scratch() -> Iterator[ScratchNode]:
    with scratch_node("it") as node:
        node.demo_template()
        yield node


@pytest.fixture(scope="session", autouse=True)
def _no_services_cgroup_left() -> Iterator[None]:
    """Agents and `hoody up` started by tests join the hoody-services cgroup; remove
    it once the last of them is gone, as a benchmark's scratch teardown does."""
    yield
    services.remove_if_empty()
