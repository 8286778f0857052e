"""Integration tests drive real kernel features and must run as root."""

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("tests/integration needs root (btrfs, netns, nftables, runc)")
