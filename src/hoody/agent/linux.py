"""Wire the real Linux drivers into a Node: btrfs, netns + nftables, runc/crun."""

from __future__ import annotations

import secrets

from hoody.agent.config import NodeConfig
from hoody.agent.engine import Node
from hoody.agent.host import tune_host
from hoody.agent.network.firewall import NftFirewall
from hoody.agent.network.linux import LinuxNetwork
from hoody.agent.runtime.lxcfs import Lxcfs
from hoody.agent.runtime.oci import OciRuntime
from hoody.agent.state import NodeStore
from hoody.agent.storage.btrfs import BtrfsStorage
from hoody.agent.storage.pool import ensure_pool

__all__ = ["build_node", "init_node"]


def init_node(config: NodeConfig) -> None:
    """Create (or re-check) the node's pool, directories and agent token; save its config."""
    ensure_pool(config.pool, config.pool_image, config.pool_size)
    for path in (config.state_dir, config.log_dir, config.node_run_dir):
        path.mkdir(parents=True, exist_ok=True)
    if not config.token_path.exists():
        config.token_path.write_text(secrets.token_urlsafe(32) + "\n")
        config.token_path.chmod(0o600)
    config.save()


def build_node(config: NodeConfig) -> Node:
    """A Node on this host's real drivers, the host tuned for many tenants
    (`tune_host`). The pool must exist (`init_node`)."""
    ensure_pool(config.pool, config.pool_image, config.pool_size)
    tune_host()
    run = config.node_run_dir
    return Node(
        config=config,
        store=NodeStore(config.db_path),
        storage=BtrfsStorage(config.pool, run / "tenants"),
        network=LinuxNetwork(config.network),
        firewall=NftFirewall(config.network),
        runtime=OciRuntime(
            root=run / "runc",
            bundle_dir=run / "bundles",
            cgroup_parent=config.cgroup_parent,
            pool=config.pool,
            lxcfs=Lxcfs(run / "lxcfs"),
        ),
    )
