"""Fleet commands: `hoody server`, `hoody login`, `hoody token create`, `hoody nodes`,
`hoody templates`, and `hoody bench api`.

They talk to the control plane through `hoody.control.client.Client`, configured by
`hoody login` (or HOODY_URL / HOODY_TOKEN). Register them on the main app with

    from hoody.cli import fleet
    fleet.register(app, bench.app)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hoody.control.client import Client, save_config
from hoody.errors import InvalidInput

__all__ = ["register", "token_app"]

console = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
token_app = typer.Typer(help="API tokens: admin, project and node-join tokens.")


def _emit(data: Any, as_json: bool, columns: list[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    table = Table()
    for col in columns:
        table.add_column(col)
    for row in data if isinstance(data, list) else [data]:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


def server(
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve /api/v1 on.")] = "127.0.0.1:7080",
    state_dir: Annotated[
        Path, typer.Option(help="Where the SQLite database and admin.token live.")
    ] = Path(os.environ.get("HOODY_CONTROL_DIR", "/var/lib/hoody/control")),
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="HOODY_DATABASE_URL",
            help="postgresql+psycopg://… for a fleet; default: SQLite in --state-dir.",
        ),
    ] = None,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds without heartbeats before a node is down.")
    ] = 10.0,
    strategy: Annotated[str, typer.Option(help="Placement: spread or pack.")] = "spread",
    domain: Annotated[
        str | None, typer.Option(help="Tenant URLs become https://<cid>.<domain>/.")
    ] = None,
) -> None:
    """Run the control plane. Migrates the database, then serves until stopped.

    The first start mints an admin token into <state-dir>/admin.token (mode 0600);
    HOODY_ADMIN_TOKEN=hdy_… sets it instead.
    """
    import uvicorn

    from hoody.control.api import create_app
    from hoody.control.db import Store
    from hoody.control.db import database_url as default_url
    from hoody.control.service import Fleet, Settings

    if strategy not in ("spread", "pack"):
        raise InvalidInput(f"--strategy {strategy!r} is invalid; use spread or pack")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(database_url or default_url(state_dir))
    fleet = Fleet(
        store,
        settings=Settings(
            heartbeat_timeout=heartbeat_timeout,
            strategy=strategy,  # type: ignore[arg-type]
            public_domain=domain,
        ),
    )
    admin = fleet.bootstrap_admin(os.environ.get("HOODY_ADMIN_TOKEN"))
    if admin and not os.environ.get("HOODY_ADMIN_TOKEN"):
        path = state_dir / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(admin + "\n")
        console.print(f"admin token written to {path}; `hoody login URL --token $(cat {path})`")
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise InvalidInput(f"--listen {listen!r} is invalid; give HOST:PORT like 127.0.0.1:7080")
    uvicorn.run(create_app(fleet), host=host or "127.0.0.1", port=int(port), log_level="warning")


def login(
    url: Annotated[str, typer.Argument(help="The control plane, e.g. http://127.0.0.1:7080")],
    token: Annotated[str, typer.Option(help="An API token (hdy_…).")],
    as_json: JsonOpt = False,
) -> None:
    """Check the token against URL and save both for later commands."""
    with Client(url, token) as client:
        who = client.whoami()
    path = save_config(url, token)
    out = {**who, "url": url, "config": str(path)}
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        scope = who["scope"] + (f" (project {who['project_id']})" if who["project_id"] else "")
        console.print(f"logged in to {url} as {scope}; saved to {path}")


@token_app.command("create")
def token_create(
    project: Annotated[int | None, typer.Option(help="A token for this project id.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin token.")] = False,
    join: Annotated[bool, typer.Option("--join", help="A token that joins nodes.")] = False,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a token (needs an admin login). The secret is printed only now."""
    chosen = [
        s for s, on in (("project", project is not None), ("admin", admin), ("join", join)) if on
    ]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of --project N, --admin, --join")
    with Client() as client:
        rec = client.create_token(chosen[0], project_id=project, description=description)
    if as_json:
        print(json.dumps(rec, indent=2))
    else:
        console.print(f"{rec['scope']} token {rec['id']} (shown once):")
        print(rec["token"])


def nodes(as_json: JsonOpt = False) -> None:
    """List nodes with state and headroom."""
    with Client() as client:
        rows = client.nodes()
    for row in rows:
        h = row.get("headroom") or {}
        row["memory_free"] = f"{(h.get('memory_headroom_bytes') or 0) / (1 << 30):.1f} GiB"
    _emit(
        rows,
        as_json,
        ["name", "state", "url", "containers", "memory_promised_mib", "memory_free"],
    )


def templates(as_json: JsonOpt = False) -> None:
    """List templates, their versions and which nodes hold each (replication progress)."""
    with Client() as client:
        rows = client.templates()
    if as_json:
        _emit(rows, True, [])
        return
    flat = [
        {
            "name": t["name"],
            "version": v["version"],
            "owner": "shared" if t["shared"] else f"project {t['project_id']}",
            "nodes": ", ".join(
                n["node"] + ("" if n["state"] == "ready" else f" ({n['progress']:.0%})")
                for n in v["nodes"]
            ),
        }
        for t in rows
        for v in t["versions"]
    ]
    _emit(flat, False, ["name", "version", "owner", "nodes"])


def bench_api(
    tenants: Annotated[int, typer.Option(help="Container records in the store.")] = 10000,
    samples: Annotated[int, typer.Option(help="Requests timed per measurement.")] = 200,
    database_url: Annotated[
        str | None, typer.Option(help="Measure against this database (default: scratch SQLite).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the default).")] = True,
) -> None:
    """API latency over a store of N container records: list, get, copy (records only)."""
    from hoody.bench.api import bench_api as run

    print(json.dumps(run(tenants, samples, database_url), indent=2))


def register(app: typer.Typer, bench_app: typer.Typer | None = None) -> None:
    """Add the fleet commands to `app` (and `bench api` to `bench_app`)."""
    app.command()(server)
    app.command()(login)
    app.add_typer(token_app, name="token")
    app.command()(nodes)
    app.command()(templates)
    if bench_app is not None:
        bench_app.command("api")(bench_api)
