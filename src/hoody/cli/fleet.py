"""Fleet commands: `hoody server`, `hoody login`, `hoody token create`, `hoody project`,
`hoody nodes`, `hoody templates`, and `hoody bench api`.

They talk to the control plane through `hoody.Client`, configured by `hoody login`
(or HOODY_URL / HOODY_TOKEN). Register them on the main app with

    from hoody.cli import fleet
    fleet.register(app, bench.app)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from hoody import services
from hoody.agent.storage.pool import parse_size
from hoody.cli.common import (
    CurrencyOpt,
    JsonOpt,
    MonthlyCostOpt,
    OvercommitOpt,
    ReserveOpt,
    console,
    emit,
    status,
)
from hoody.control.client import Client, save_config
from hoody.errors import HoodyError, InvalidInput
from hoody.keepalive import SERVER_KEEP_ALIVE
from hoody.private import private_dir, private_file

if TYPE_CHECKING:
    from hoody.control.service import Fleet

__all__ = ["register", "serve_control_plane", "token_app"]

token_app = typer.Typer(help="API tokens: admin, project, node-join and router tokens.")
project_app = typer.Typer(help="Projects: each owns its containers, templates and tokens.")
nodes_app = typer.Typer(
    help="Nodes of the fleet: list (the default), cordon, uncordon, drain.",
    invoke_without_command=True,
)
templates_app = typer.Typer(
    help="Templates across the fleet: list with where each version is (the default), show, rm.",
    invoke_without_command=True,
)

DEFAULT_CONTROL_DIR = Path(os.environ.get("HOODY_CONTROL_DIR", "/var/lib/hoody/control"))


def serve_control_plane(
    state_dir: Path,
    database_url: str | None = None,
    heartbeat_timeout: float = 8.0,
    strategy: str = "spread",
    domain: str | None = None,
    router_url: str | None = None,
    scripts_dir: Path | None = None,
    *,
    reconcile_every: float = 10.0,
    creating_deadline: float = 60.0,
    orphan_grace: float | None = 3600.0,
    exec_spares: bool = True,
) -> tuple[Fleet, str | None]:
    """Open the store (migrating it) and make sure an admin token exists.

    Returns (Fleet, the admin token if one was just minted or given by
    HOODY_ADMIN_TOKEN, else None). A new token is also written to
    <state_dir>/admin.token (mode 0600).
    """
    from hoody.control.db import Store
    from hoody.control.db import database_url as default_url
    from hoody.control.service import Fleet, Settings

    if strategy not in ("spread", "pack"):
        raise InvalidInput(f"--strategy {strategy!r} is invalid; use spread or pack")
    private_dir(state_dir)
    url = database_url or default_url(state_dir)
    if url == default_url(state_dir) and url.startswith("sqlite:///"):
        private_file(Path(url.removeprefix("sqlite:///")))  # claim keys, token hashes
    store = Store(url)
    fleet = Fleet(
        store,
        settings=Settings(
            heartbeat_timeout=heartbeat_timeout,
            strategy=strategy,  # type: ignore[arg-type]
            public_domain=domain,
            router_url=router_url,
            state_dir=state_dir,
            scripts_dir=scripts_dir,
            reconcile_every=reconcile_every,
            creating_deadline=creating_deadline,
            orphan_grace=orphan_grace,
            exec_spares=exec_spares,
        ),
    )
    admin = fleet.bootstrap_admin(os.environ.get("HOODY_ADMIN_TOKEN"))
    if admin and not os.environ.get("HOODY_ADMIN_TOKEN"):
        path = state_dir / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(admin + "\n")
    return fleet, admin


def server(
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve /api/v1 on.")] = "127.0.0.1:7080",
    state_dir: Annotated[
        Path, typer.Option(help="Where the SQLite database and admin.token live.")
    ] = DEFAULT_CONTROL_DIR,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="HOODY_DATABASE_URL",
            help="postgresql+psycopg://… for a fleet; default: SQLite in --state-dir.",
        ),
    ] = None,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds without heartbeats before a node is down.")
    ] = 8.0,
    strategy: Annotated[str, typer.Option(help="Placement: spread or pack.")] = "spread",
    domain: Annotated[
        str | None, typer.Option(help="Tenant URLs become https://<cid>.<domain>/.")
    ] = None,
    router_url: Annotated[
        str | None,
        typer.Option(help="The router's URL, e.g. http://localhost:8000: tenants at <cid>.<host>."),
    ] = None,
    history_every: Annotated[
        float, typer.Option(help="Seconds between points of the dashboard's fleet history.")
    ] = 60.0,
    reconcile_every: Annotated[
        float, typer.Option(help="Seconds between reconcile rounds with every node.")
    ] = 10.0,
    creating_deadline: Annotated[
        float,
        typer.Option(help="Seconds before a copy left `creating` by a crash is adopted or failed."),
    ] = 60.0,
    orphan_grace: Annotated[
        float,
        typer.Option(
            help="Seconds a tenant without a container row is reported before it is "
            "removed; negative: reported, never removed."
        ),
    ] = 3600.0,
    exec_spares: Annotated[
        bool,
        typer.Option(
            "--exec-spares/--no-exec-spares",
            help="Keep one warmed-up Deno process per active project for Exec's next "
            "worker (~11 MiB private memory each).",
        ),
    ] = True,
) -> None:
    """Run the control plane. Migrates the database, then serves until stopped.

    The first start mints an admin token into <state-dir>/admin.token (mode 0600);
    HOODY_ADMIN_TOKEN=hdy_… sets it instead.
    """
    import uvicorn

    from hoody.control.api import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per heartbeat otherwise
    logging.getLogger("alembic").setLevel(logging.WARNING)
    host, _, port = listen.rpartition(":")
    services.join()
    if not 0.5 <= history_every <= 86400:
        raise InvalidInput(f"--history-every {history_every} is invalid; give 0.5 to 86400 s")
    if not port.isdigit():
        raise InvalidInput(f"--listen {listen!r} is invalid; give HOST:PORT like 127.0.0.1:7080")
    for value, flag in (
        (reconcile_every, "--reconcile-every"),
        (creating_deadline, "--creating-deadline"),
    ):
        if not value > 0:
            raise InvalidInput(f"{flag} must be a positive number of seconds")
    fleet, admin = serve_control_plane(
        state_dir,
        database_url,
        heartbeat_timeout,
        strategy,
        domain,
        router_url,
        reconcile_every=reconcile_every,
        creating_deadline=creating_deadline,
        orphan_grace=orphan_grace if orphan_grace >= 0 else None,
        exec_spares=exec_spares,
    )
    if admin and not os.environ.get("HOODY_ADMIN_TOKEN"):
        path = state_dir / "admin.token"
        console.print(f"admin token written to {path}; `hoody login URL --token $(cat {path})`")
    try:
        uvicorn.run(
            create_app(fleet, history_every=history_every),
            host=host or "127.0.0.1",
            port=int(port),
            log_level="warning",
            timeout_keep_alive=SERVER_KEEP_ALIVE,
            # Dashboard browsers hold event streams open: end them after 2 s on exit.
            timeout_graceful_shutdown=2,
        )
    finally:
        fleet.close()
        fleet.store.close()


def login(
    url: Annotated[str, typer.Argument(help="The control plane, e.g. http://127.0.0.1:7080")],
    token: Annotated[str, typer.Option(help="An API token (hdy_…).")],
    project: Annotated[
        int | None, typer.Option(help="Default project for an admin token's copies.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the token against URL and save both for later commands."""
    with Client(url, token) as client:
        who = client.whoami()
    path = save_config(url, token, project)
    out = {**who, "url": url, "config": str(path), "default_project": project}
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        scope = who["scope"] + (f" (project {who['project_id']})" if who["project_id"] else "")
        console.print(f"logged in to {url} as {scope}; saved to {path}")


@token_app.command("create")
def token_create(
    project: Annotated[int | None, typer.Option(help="A token for this project id.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin token.")] = False,
    join: Annotated[
        bool, typer.Option("--join", help="A token that joins new nodes (expires: --ttl).")
    ] = False,
    router: Annotated[
        bool, typer.Option("--router", help="A router's token: route table and claims only.")
    ] = False,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    ttl: Annotated[
        int | None, typer.Option(help="Seconds until it expires (join tokens: 86400).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token (needs an admin login). The secret is printed only now."""
    options = (("project", project is not None), ("admin", admin), ("join", join))
    chosen = [s for s, on in (*options, ("router", router)) if on]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of --project N, --admin, --join, --router")
    with Client() as client:
        rec = client.create_token(
            chosen[0], project_id=project, description=description, ttl_seconds=ttl
        )
    if as_json:
        print(json.dumps(rec, indent=2))
    else:
        console.print(f"{rec['scope']} token {rec['id']} (shown once):")
        print(rec["token"])


@token_app.command("ls")
def token_ls(as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    with Client() as client:
        emit(client.tokens(), as_json, ["id", "prefix", "scope", "project_id", "node", "revoked"])


@token_app.command("revoke")
def token_revoke(token_id: int, as_json: JsonOpt = False) -> None:
    """Revoke a token at once."""
    with Client() as client:
        emit(client.revoke_token(token_id), as_json, ["id", "prefix", "scope", "revoked"])


@project_app.command("create")
def project_create(name: str, as_json: JsonOpt = False) -> None:
    """Create a project (admin)."""
    with Client() as client:
        emit(client.create_project(name), as_json, ["id", "name"])


_PROJECT_COLUMNS = ["id", "name", "tenants", "memory", "disk"]


def _project_row(p: dict[str, Any]) -> dict[str, Any]:
    """Use / quota per resource, for the table (--json prints the record itself)."""
    q, u = p["quota"], p["usage"]

    def mib(value: int | None) -> str:
        if value is None:
            return "-"
        return f"{value / 1024:g}G" if value >= 1024 and value % 1024 == 0 else f"{value}M"

    return {
        "id": p["id"],
        "name": p["name"],
        "tenants": f"{u['tenants']} / {q['max_tenants'] if q['max_tenants'] is not None else '-'}",
        "memory": f"{mib(u['memory_mib'])} / {mib(q['max_memory_mib'])}",
        "disk": f"{mib(u['disk_mib'])} / {mib(q['max_disk_mib'])}",
    }


def _emit_projects(data: Any, as_json: bool) -> None:
    if as_json:
        emit(data, True)
        return
    rows = [_project_row(p) for p in (data if isinstance(data, list) else [data])]
    emit(rows, False, _PROJECT_COLUMNS, title="use / quota (- : none)")


@project_app.command("ls")
def project_ls(as_json: JsonOpt = False) -> None:
    """List projects with their use and quotas (admin)."""
    with Client() as client:
        _emit_projects(client.projects(), as_json)


@project_app.command("show")
def project_show(project_id: int, as_json: JsonOpt = False) -> None:
    """A project's use and quotas (admin, or the project's own token)."""
    with Client() as client:
        _emit_projects(client.get_project(project_id), as_json)


def _quota(value: str | None, what: str, size: bool) -> dict[str, int | None]:
    """{} to keep, {key: None} to remove ("none"), else {key: number (MiB for sizes)}."""
    if value is None:
        return {}
    key = {"tenants": "max_tenants", "memory": "max_memory_mib", "disk": "max_disk_mib"}[what]
    if value.strip().lower() == "none":
        return {key: None}
    if not size:
        if not value.strip().isdigit():
            raise InvalidInput(f"--max-{what} {value!r} is invalid; give a whole number or none")
        return {key: int(value)}
    try:
        return {key: -(-parse_size(value) // (1 << 20))}
    except InvalidInput:
        raise InvalidInput(
            f"--max-{what} {value!r} is invalid; give a size like 4G or 512M, or none"
        ) from None


@project_app.command("set")
def project_set(
    project_id: int,
    max_tenants: Annotated[
        str | None, typer.Option(help="At most this many live containers (none: no quota).")
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(help="Sum of the containers' memory limits, e.g. 4G (none: no quota)."),
    ] = None,
    max_disk: Annotated[
        str | None,
        typer.Option(help="Sum of the containers' disk limits, e.g. 20G (none: no quota)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a project's quotas (admin): `hoody project set 3 --max-tenants 100
    --max-memory 4G --max-disk 20G`. Copies past one are refused, naming it."""
    changes = {
        **_quota(max_tenants, "tenants", False),
        **_quota(max_memory, "memory", True),
        **_quota(max_disk, "disk", True),
    }
    if not changes:
        raise InvalidInput("give --max-tenants, --max-memory and/or --max-disk")
    with Client() as client:
        _emit_projects(client.set_project(project_id, **changes), as_json)


def _gib(value: Any) -> str:
    return f"{(value or 0) / (1 << 30):.1f} GiB"


@nodes_app.callback()
def nodes(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List nodes: state, memory as placement counts it (capacity = memory x
    overcommit; requested and measured by its tenants; the host reserve; what is
    free), disk, and how many more tenants of each template it can take."""
    if ctx.invoked_subcommand is not None:
        return
    with Client() as client:
        rows = client.nodes()
    if as_json:
        emit(rows, True)
        return
    now = time.time()
    for row in rows:
        c = row["capacity"]
        row["tenants"] = row["containers"]
        row["capacity "] = f"{_gib(c['memory_capacity_bytes'])} (x{c['overcommit']:g})"
        row["requested"] = _gib(c["memory_requested_bytes"])
        row["measured"] = _gib(c["memory_measured_bytes"])
        row["reserve"] = _gib(c["memory_reserve_bytes"])
        row["memory free"] = _gib(c["memory_free_bytes"])
        row["disk free"] = _gib(c["disk_free_bytes"])
        row["more tenants"] = ", ".join(
            f"{e['template']} {e['further_tenants']}" for e in row["estimates"]
        )
        row["heartbeat"] = f"{now - row['last_heartbeat']:.0f} s ago"
    emit(
        rows,
        False,
        [
            "name",
            "state",
            "tenants",
            "capacity ",
            "requested",
            "measured",
            "reserve",
            "memory free",
            "disk free",
            "more tenants",
            "heartbeat",
        ],
    )


@nodes_app.command("set")
def node_set(
    name: str,
    overcommit: OvercommitOpt = None,
    reserve: ReserveOpt = None,
    monthly_cost: MonthlyCostOpt = None,
    currency: CurrencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change node NAME's overcommit ratio, host memory reserve and monthly cost."""
    if overcommit is None and reserve is None and monthly_cost is None and currency is None:
        raise InvalidInput(
            "nothing to set; give --overcommit, --reserve, --monthly-cost or --currency"
        )
    with Client() as client:
        rec = client.set_node(
            name,
            overcommit=overcommit,
            reserve=reserve,
            monthly_cost=monthly_cost,
            currency=currency,
        )
    summary = {"name": rec["name"], **rec["capacity"], "monthly_cost": rec["monthly_cost"]}
    emit(rec if as_json else {**summary, "currency": rec["currency"]}, as_json)


def _node_verb(verb: str, doc: str) -> None:
    def command(name: str, as_json: JsonOpt = False) -> None:
        with Client() as client:
            rec = getattr(client, verb)(name)
        emit(rec, as_json, ["name", "state", "containers"])

    command.__doc__ = doc
    nodes_app.command(verb)(command)


_node_verb("cordon", "Give NAME no new containers.")
_node_verb("uncordon", "Let NAME take new containers again.")
_node_verb("drain", "Cordon NAME and start a drain operation.")


def orphans(
    reconcile: Annotated[
        bool, typer.Option("--reconcile", help="Run a reconcile round first.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Tenants nodes have that no container accounts for (admin), and when each goes."""
    with Client() as client:
        if reconcile:
            client.reconcile()
        rows = client.orphans()
    if as_json:
        emit(rows, True)
        return
    now = time.time()
    for row in rows:
        row["seen for"] = f"{now - row['first_seen']:.0f} s"
        at = row["remove_at"]
        row["removed"] = "never (kept)" if at is None else f"in {max(0, at - now):.0f} s"
    emit(rows, False, ["node", "tenant", "state", "seen for", "removed"])


def _replica_cell(replica: dict[str, Any]) -> str:
    if replica["state"] == "ready":
        return str(replica["node"])
    return f"{replica['node']} ({replica['state']} {replica['progress']:.0%})"


def _version_state(version: dict[str, Any]) -> str:
    """What a project token learns of a version: whether it can be copied, not where."""
    if not version["ready"]:
        return "on its way"
    return "ready, still replicating" if version["replicating"] else "ready"


def _flatten(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": t["name"],
            "version": v["version"],
            "owner": "shared" if t["shared"] else f"project {t['project_id']}",
            # Admin tokens get the nodes holding each version, other tokens its state.
            **(
                {"nodes": ", ".join(_replica_cell(n) for n in v["nodes"])}
                if "nodes" in v
                else {"state": _version_state(v)}
            ),
        }
        for t in rows
        for v in t["versions"]
    ]


def _template_columns(flat: list[dict[str, Any]]) -> list[str]:
    where = "state" if flat and "state" in flat[0] else "nodes"
    return ["name", "version", "owner", where]


def _in_flight(rows: list[dict[str, Any]], nodes: list[str]) -> dict[str, float]:
    """Versions on their way to a node, and to `nodes` that lack them: label → progress
    (for a project token, which is not told the nodes: versions still replicating)."""
    out = {}
    for t in rows:
        for v in t["versions"]:
            if "nodes" not in v:
                if v["replicating"]:
                    out[f"{t['name']} v{v['version']}"] = 0.0
                continue
            have = {n["node"]: n for n in v["nodes"]}
            for name in sorted(set(have) | set(nodes)):
                replica = have.get(name)
                if replica is None or replica["state"] != "ready":
                    label = f"{t['name']} v{v['version']} → {name}"
                    out[label] = float(replica["progress"]) if replica else 0.0
    return out


@templates_app.callback()
def templates(
    ctx: typer.Context,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show transfers as progress bars until none is left.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List templates, their versions and which nodes hold each; a version still on its
    way to a node shows as `node (receiving 40%)`. With --wait, progress bars until
    every version is on every node."""
    if ctx.invoked_subcommand is not None:
        return
    with Client() as client:
        rows = client.templates()
        if wait and not as_json:
            _watch(client, rows)
            rows = client.templates()
    if as_json:
        emit(rows, True)
    else:
        flat = _flatten(rows)
        emit(flat, False, _template_columns(flat))


def _watch(client: Client, rows: list[dict[str, Any]]) -> None:
    try:  # an admin sees the nodes, and so the versions not yet on their way too
        nodes = [n["name"] for n in client.nodes() if n["state"] in ("up", "cordoned")]
    except HoodyError:
        nodes = []
    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%")
    ) as progress:
        while True:
            flight = _in_flight(rows, nodes)
            for label, done in flight.items():
                if label not in bars:
                    bars[label] = progress.add_task(label, total=1.0)
                progress.update(bars[label], completed=done)
            for label, task in bars.items():
                if label not in flight:
                    progress.update(task, completed=1.0)
            if not flight:
                return
            time.sleep(0.5)
            rows = client.templates()


@templates_app.command("show")
def template_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one template's versions and where each is."""
    with Client() as client:
        rec = client.template(name)
    if as_json:
        emit(rec, True)
    else:
        flat = _flatten([rec])
        emit(flat, False, _template_columns(flat))


@templates_app.command("rm")
def template_rm(name: str, as_json: JsonOpt = False) -> None:
    """Delete a template everywhere; refused while containers use it."""
    with Client() as client, status(f"deleting template {name}…", as_json):
        rec = client.delete_template(name)
    emit(rec, as_json, ["name", "deleted", *(["nodes"] if "nodes" in rec else [])])


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
    app.add_typer(project_app, name="project")
    app.add_typer(nodes_app, name="nodes")
    app.add_typer(templates_app, name="templates")
    app.command()(orphans)
    if bench_app is not None:
        bench_app.command("api")(bench_api)
