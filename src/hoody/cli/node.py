"""`hoody node …`: set up this server as a node and run its agent."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from hoody.agent.config import DEFAULT_STATE_DIR, NodeConfig

__all__ = ["app"]

app = typer.Typer(help="This server as a hoody node: init, serve, info.")

StateDir = Annotated[Path, typer.Option(help="Where the node keeps its state.")]


@app.command()
def init(
    size: Annotated[str, typer.Option(help="Size of the loop-file btrfs pool.")] = "20G",
    pool: Annotated[Path | None, typer.Option(help="Use this btrfs path as the pool.")] = None,
    subnet: Annotated[str, typer.Option(help="Tenant subnet.")] = "10.88.0.0/16",
    name: Annotated[str, typer.Option(help="Node name: prefixes links and tables.")] = "hoody",
    storage: Annotated[str, typer.Option(help="overlay or snapshot")] = "overlay",
    listen: Annotated[str, typer.Option(help="Agent API address.")] = "127.0.0.1:7070",
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create the btrfs pool (a loop file unless --pool is on btrfs) and the agent token.

    Safe to re-run: an existing pool and token are kept.
    """
    from hoody.agent.linux import init_node

    config = NodeConfig(
        name=name,
        state_dir=state_dir,
        pool=pool or state_dir / "pool",
        pool_image=None if pool else state_dir / "pool.img",
        pool_size=size,
        subnet=subnet,
        storage_mode=storage,
        listen=listen,
    )
    init_node(config)
    out = {
        "name": config.name,
        "pool": str(config.pool),
        "state_dir": str(state_dir),
        "listen": config.listen,
        "token_file": str(config.token_path),
    }
    typer.echo(json.dumps(out, indent=2) if as_json else f"node {name} ready: pool {config.pool}")


@app.command()
def serve(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    listen: Annotated[str | None, typer.Option(help="Override the API address.")] = None,
) -> None:
    """Run the node agent: reconcile, then serve the API and supervise tenants."""
    import uvicorn

    from hoody.agent.api import create_app
    from hoody.agent.linux import build_node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = NodeConfig.load(state_dir)
    host, _, port = (listen or config.listen).rpartition(":")
    node = build_node(config)
    token = config.token_path.read_text().strip()
    uvicorn.run(create_app(node, token), host=host, port=int(port), log_level="warning")


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Capabilities, headroom and KSM profit of the local node."""
    from hoody.cli.main import agent

    data = agent().node()
    typer.echo(json.dumps(data, indent=2))
