"""Scratch nodes of one process never share a subnet, even before it is routed."""

from __future__ import annotations

import pytest

from hoody.bench import scratch


@pytest.fixture
def draws(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The random draws, in order (10.128+n.0.0/16); no route on the 'host'."""
    values: list[int] = []
    monkeypatch.setattr(scratch, "_routed", list)
    monkeypatch.setattr(scratch.secrets, "randbelow", lambda _: values.pop(0))
    return values


def test_a_subnet_held_by_a_live_node_is_not_drawn_again(draws: list[int]) -> None:
    # A netns fleet's nodes: none has a route on the host while the next one is made.
    draws += [5, 5, 9]
    with scratch.held_subnet() as first, scratch.held_subnet() as second:
        assert (first, second) == ("10.133.0.0/16", "10.137.0.0/16")


def test_a_subnet_is_free_again_once_its_node_is_gone(draws: list[int]) -> None:
    draws += [5, 5]
    with scratch.held_subnet() as first:
        pass
    assert scratch._free_subnet() == first
