"""Through the product (API → real agent): a copy's own firewall rules cannot open a
guarded network (cloud metadata, loopback, multicast, management) that its template
keeps closed; nothing is left of a refused copy, and a broad allow is confined in the
tenant's real nftables chain."""

from __future__ import annotations

import pytest

from hoody.agent.spec import TenantSpec
from hoody.agent.templates import DEMO_NAME
from hoody.bench.scratch import ScratchNode
from hoody.errors import InvalidInput
from hoody.proc import run
from tests.integration.stack import product_stack


def test_a_project_cannot_open_metadata_for_its_copy(scratch: ScratchNode) -> None:
    with product_stack(scratch, "fwcopy") as stack:
        before = {t.id for t in scratch.node.tenants()}
        for cidr in ("169.254.169.254/32", "127.0.0.1/32"):
            rules = {"egress": [{"action": "allow", "cidr": cidr, "port": 80}]}
            with pytest.raises(InvalidInput, match=f"template {DEMO_NAME}'s firewall"):
                stack.client.copy(DEMO_NAME, TenantSpec(firewall=rules))
        assert stack.client.containers()["items"] == []
        assert {t.id for t in scratch.node.tenants()} == before, "nothing made on the node"

        made = stack.client.copy(
            DEMO_NAME, TenantSpec(firewall={"egress": [{"action": "allow", "cidr": "0.0.0.0/0"}]})
        )
        table = scratch.node.config.network.table
        chain = run(["nft", "list", "chain", "inet", table, f"e-{made['id']}"]).stdout
        confined = [line for line in chain.splitlines() if "!= @guarded" in line]
        assert len(confined) == 1 and "goto deliver" in confined[0], chain
        stack.client.delete(made["id"])
