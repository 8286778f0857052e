"""Containers across the fleet, through the control plane: `hoody copy`, `hoody ls`,
`hoody show`, `hoody start`, `hoody stop`, `hoody sleep`, `hoody wake`, `hoody rm`,
`hoody snapshot`.

Every command goes through the SDK (`hoody.Client`), configured by `hoody login URL
--token T` (or HOODY_URL / HOODY_TOKEN). The same work on one node without the control
plane is `hoody node copy|ls|rm|…`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hoody.cli.common import (
    CpuOpt,
    DiskOpt,
    IoMbpsOpt,
    IopsOpt,
    JsonOpt,
    MemOpt,
    PidsOpt,
    RequestOpt,
    console,
    emit,
    firewall,
    key_values,
    limits,
    status,
    tenant_spec,
)
from hoody.control.client import Client

__all__ = ["register"]

COLUMNS = ["id", "template", "version", "node", "state", "url"]
SleepModeOpt = Annotated[
    str | None,
    typer.Option(
        "--sleep-mode",
        help="How it sleeps when idle: stopped (memory freed) or frozen (instant wake).",
    ),
]


def _shown(row: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """For people, a sleeper's state says how it sleeps: `sleeping (frozen)`."""
    if as_json or row.get("state") != "sleeping" or not row.get("sleep_mode"):
        return row
    return {**row, "state": f"sleeping ({row['sleep_mode']})"}


def _sleep_policy(after: int | None, mode: str | None) -> dict[str, Any] | None:
    policy: dict[str, Any] = {}
    if after is not None:
        policy["idle_seconds"] = after
    if mode is not None:
        policy["mode"] = mode
    return policy or None


def copy(
    template: str,
    name: Annotated[str | None, typer.Option(help="Container id (DNS label).")] = None,
    version: Annotated[int | None, typer.Option(help="Template version (default: newest).")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE kept with it (customer, plan…).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="The same key always gives the same container (e.g. an event id)."),
    ] = None,
    project: Annotated[
        int | None, typer.Option(help="Project id (admin tokens; default: `hoody login`'s).")
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="Placement: spread or pack.")] = None,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    memory_request: RequestOpt = None,
    pids: PidsOpt = None,
    disk: DiskOpt = None,
    io_mbps: IoMbpsOpt = None,
    iops: IopsOpt = None,
    firewall_json: Annotated[
        str | None, typer.Option("--firewall", help="Firewall policy as JSON.")
    ] = None,
    sleep_after: Annotated[
        int | None,
        typer.Option(help="Sleep after this many seconds without a request (default: template's)."),
    ] = None,
    sleep_mode: SleepModeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a container from TEMPLATE on the node with the most headroom."""
    with Client() as client, status(f"copying {template}…", as_json):
        spec = tenant_spec(
            name=name,
            version=version,
            limits=limits(cpu, memory, pids, disk, memory_request, io_mbps, iops),
            env=key_values(env, "env") or None,
            firewall=firewall(firewall_json),
            metadata=key_values(metadata, "metadata") or None,
            sleep=_sleep_policy(sleep_after, sleep_mode),
        )
        rec = client.copy(
            template, spec, idempotency_key=idempotency_key, project=project, strategy=strategy
        )
    emit(rec, as_json, _columns(rec))
    if not as_json and rec.get("placement"):  # admin tokens only: placement is theirs
        console.print(f"[dim]placement: {rec['placement']}[/]", highlight=False)


def _columns(rec: dict[str, Any] | None, columns: list[str] = COLUMNS) -> list[str]:
    """`columns` that `rec` has: project tokens get no node, address or placement."""
    if rec is None:
        return columns
    return [c for c in columns if c in rec]


def ls(
    template: Annotated[str | None, typer.Option(help="Only this template.")] = None,
    node: Annotated[str | None, typer.Option(help="Only this node.")] = None,
    state: Annotated[
        str | None, typer.Option(help="Only this state (deleted lists tombstones).")
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE that must match; repeatable.")
    ] = None,
    project: Annotated[int | None, typer.Option(help="Only this project (admin).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List containers, oldest first."""
    rows: list[dict[str, Any]] = []
    with Client() as client:
        for row in client.iter_containers(
            template=template,
            node=node,
            state=state,
            metadata=key_values(metadata, "metadata") or None,
            project=project,
            limit=min(limit, 500),
        ):
            rows.append(_shown(row, as_json))
            if len(rows) >= limit:
                break
    emit(rows, as_json, _columns(rows[0] if rows else None))


def show(cid: str, as_json: JsonOpt = False) -> None:
    """Show one container: node, address, limits, metadata and why it was placed there."""
    with Client() as client:
        rec = client.container(cid)
        emit(
            _shown(rec, as_json),
            as_json,
            _columns(rec, [*COLUMNS, "ip", "sleep", "placement", "metadata"]),
        )


def start(cid: str, as_json: JsonOpt = False) -> None:
    """Start a stopped container."""
    with Client() as client, status(f"starting {cid}…", as_json):
        rec = client.start(cid)
    emit(rec, as_json, _columns(rec))


def stop(cid: str, as_json: JsonOpt = False) -> None:
    """Stop a container; its files and address stay."""
    with Client() as client, status(f"stopping {cid}…", as_json):
        rec = client.stop(cid)
    emit(rec, as_json, _columns(rec))


def sleep(
    cid: str,
    mode: Annotated[
        str | None,
        typer.Option(help="stopped (memory freed) or frozen (memory kept); default: its own."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Put a container to sleep; its next request through the router wakes it."""
    with Client() as client, status(f"putting {cid} to sleep…", as_json):
        rec = client.sleep(cid, mode)
    emit(_shown(rec, as_json), as_json, _columns(rec))


def wake(cid: str, as_json: JsonOpt = False) -> None:
    """Wake a sleeping container."""
    with Client() as client, status(f"waking {cid}…", as_json):
        rec = client.wake(cid)
    emit(rec, as_json, _columns(rec))


def rm(
    cids: Annotated[list[str], typer.Argument(metavar="CID...", help="Containers to delete.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete containers and everything they had. Deleting twice is harmless."""
    out = []
    with Client() as client, status(f"deleting {len(cids)} container(s)…", as_json):
        for cid in cids:
            out.append(client.delete(cid))
    emit(out, as_json, ["id", "deleted", "existed"])


def snapshot(
    cid: str,
    template: Annotated[
        str | None, typer.Option(help="Template name (default: the container's own).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a new template version from a container's files; it then reaches every node
    (`hoody templates` shows the progress)."""
    with Client() as client, status(f"snapshotting {cid}…", as_json):
        op = client.snapshot(cid, template)
    if as_json:
        emit(op, True)
    else:
        r = op["result"]
        console.print(f"template {r['template']} version {r['version']} made on {r['node']}")


def register(app: typer.Typer) -> None:
    """Add the container commands to `app`."""
    for fn in (copy, ls, show, start, stop, sleep, wake, rm, snapshot):
        app.command()(fn)
