from __future__ import annotations

from collections.abc import Iterator

import pytest

from hoody.agent.network import NetworkConfig
from hoody.agent.network.fake import FakeFirewall, FakeNetwork
from tests.contract.network import NetworkContract, Reach

CONFIG = NetworkConfig(name="tfake", subnet="10.77.0.0/16")


class TestFakeNetwork(NetworkContract):
    @pytest.fixture
    def network(self) -> Iterator[FakeNetwork]:
        net = FakeNetwork(CONFIG)
        net.ensure_bridge()
        yield net
        net.teardown()

    @pytest.fixture
    def firewall(self) -> FakeFirewall:
        fw = FakeFirewall(CONFIG)
        fw.ensure_base()
        return fw

    @pytest.fixture
    def reach(self, network: FakeNetwork, firewall: FakeFirewall) -> Reach:
        def probe(src: str, dst: str, port: int) -> bool:
            source = "node" if src == "node" else network.attached[src]
            target = str(CONFIG.gateway) if dst == "node" else network.attached[dst]
            return firewall.allows(source, target, port)

        return probe
