"""libnftables in this process (nftlib.Nftables), checked against the `nft` program's
view of the kernel: the same batches, atomic; errors of one run not shown by the next;
JSON only when asked; calls from many threads all applied."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator

import pytest

from hoody.agent.network.nftlib import Nftables
from hoody.proc import run


@pytest.fixture
def table() -> Iterator[str]:
    name = f"inet hzlib{secrets.token_hex(3)}"
    yield name
    run(["nft", "-f", "-"], input=f"add table {name}\ndelete table {name}\n")


def test_a_batch_is_applied_whole_and_seen_by_nft(table: str) -> None:
    nft = Nftables()
    ok, _, errors = nft.run(f"add table {table}\nadd chain {table} c1\nadd chain {table} c2\n")
    assert ok, errors
    listed = run(["nft", "list", "table", *table.split()]).stdout
    assert "chain c1" in listed and "chain c2" in listed


def test_a_failed_batch_changes_nothing_and_its_error_is_not_repeated(table: str) -> None:
    nft = Nftables()
    assert nft.run(f"add table {table}\n")[0]
    ok, _, errors = nft.run(f"add chain {table} c3\nadd rule {table} c3 ip daddr nonsense drop\n")
    assert not ok and "Error" in errors
    assert "c3" not in run(["nft", "list", "table", *table.split()]).stdout
    ok, output, errors = nft.run(f"add chain {table} c4\n")
    assert ok and (output, errors) == ("", "")


def test_json_only_when_asked(table: str) -> None:
    nft = Nftables()
    assert nft.run(f"add table {table}\nadd chain {table} c5\n")[0]
    ok, output, _ = nft.run(f"list chains {table.split()[0]}", json_output=True)
    chains = [i["chain"]["name"] for i in json.loads(output)["nftables"] if "chain" in i]
    assert ok and "c5" in chains
    ok, output, _ = nft.run(f"list table {table}")
    assert ok and output.startswith("table inet") and "chain c5" in output


def test_changes_from_many_threads_are_all_applied(table: str) -> None:
    nft = Nftables()
    assert nft.run(f"add table {table}\nadd set {table} s {{ type ipv4_addr; }}\n")[0]

    def add(worker: int) -> None:
        for i in range(20):
            assert nft.run(f"add element {table} s {{ 10.9.{worker}.{i} }}\n")[0]

    threads = [threading.Thread(target=add, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listed = json.loads(run(["nft", "-j", "list", "set", *table.split(), "s"]).stdout)
    (s,) = [i["set"] for i in listed["nftables"] if "set" in i]
    assert len(s["elem"]) == 160
