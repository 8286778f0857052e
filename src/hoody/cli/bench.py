"""`hoody bench …`: benchmarks that print JSON, each on a scratch node of its own."""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(help="Benchmarks (JSON output; scratch pool and network, nothing left behind).")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (the default output).")]


@app.command()
def provision(
    count: Annotated[int, typer.Option(help="Tenants to create.")] = 20,
    concurrency: Annotated[int, typer.Option(help="Copies in flight.")] = 4,
    storage: Annotated[str, typer.Option(help="overlay or snapshot")] = "overlay",
    fleet: Annotated[
        int,
        typer.Option(
            help="Through a control plane placing on N local node agents (0: one agent, directly)."
        ),
    ] = 0,
    as_json: JsonOpt = True,
) -> None:
    """Copy request → first HTTP 200 on the tenant's address: p50/p99 ms."""
    from hoody.bench.provision import provision, provision_fleet

    if fleet:
        result = provision_fleet(count, concurrency, fleet, storage)
    else:
        result = provision(count, concurrency, storage)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def sweep() -> None:
    """Remove what benchmarks and tests killed before their cleanup left behind
    (their scratch nodes' tenants, mounts, loop devices, links, nft tables, cgroups)."""
    from hoody.bench.scratch import sweep as run

    swept = run()
    typer.echo(json.dumps({"swept": swept}))


@app.command()
def density(
    count: Annotated[int, typer.Option(help="Idle tenants to run.")] = 50,
    storage: Annotated[str, typer.Option(help="overlay or snapshot")] = "overlay",
    ksm: Annotated[bool, typer.Option(help="Let the template opt in to KSM.")] = False,
    through: Annotated[
        str,
        typer.Option(
            help="node: copies straight to one agent; api: through a control plane "
            "(placement included) with one node."
        ),
    ] = "node",
    concurrency: Annotated[int, typer.Option(help="Copies in flight (--through api).")] = 4,
    as_json: JsonOpt = True,
) -> None:
    """Marginal memory and disk per idle demo-app tenant."""
    from hoody.bench.density import density as run
    from hoody.bench.density import density_api

    if through == "api":
        result = density_api(count, storage, concurrency)
    elif through == "node":
        result = run(count, storage, ksm)
    else:
        raise typer.BadParameter(f"--through {through!r} is unknown; use node or api")
    typer.echo(json.dumps(result, indent=2))


@app.command()
def router(
    connections: Annotated[int, typer.Option(help="Concurrent keep-alive connections.")] = 32,
    seconds: Annotated[float, typer.Option(help="Seconds per measurement.")] = 4.0,
    rounds: Annotated[int, typer.Option(help="Rounds over the three targets.")] = 3,
    as_json: JsonOpt = True,
) -> None:
    """One tenant directly, through the hoody router and through nginx: rps and latency."""
    from hoody.bench.router import router_bench

    typer.echo(json.dumps(router_bench(connections, seconds, rounds), indent=2))


@app.command()
def dashboard(
    tenants: Annotated[
        int, typer.Option(help="Tenants in the fleet (records beyond one).")
    ] = 10000,
    pages: Annotated[int, typer.Option(help="Page loads to time.")] = 15,
    updates: Annotated[int, typer.Option(help="Copies to time until the counter moves.")] = 10,
    as_json: JsonOpt = True,
) -> None:
    """The dashboard in headless Chromium: first load with data, and copy → counter moved."""
    from hoody.bench.dashboard import bench_dashboard

    typer.echo(json.dumps(bench_dashboard(tenants, pages, updates), indent=2))


@app.command("exec")
def exec_(
    warm: Annotated[int, typer.Option(help="Warm invocations to time.")] = 300,
    cold: Annotated[int, typer.Option(help="Cold invocations (new worker) to time.")] = 30,
    signups: Annotated[int, typer.Option(help="Whole signups to time (0: skip).")] = 10,
    as_json: JsonOpt = True,
) -> None:
    """Exec: warm and cold invocation, and signed webhook → tenant page (p50/p99 ms)."""
    from hoody.bench.exec import bench_exec

    typer.echo(json.dumps(bench_exec(warm, cold, signups), indent=2))


@app.command()
def noisy(
    rounds: Annotated[int, typer.Option(help="Quiet/noisy round pairs.")] = 5,
    requests: Annotated[int, typer.Option(help="HTTP requests per round (0: none).")] = 500,
    wakeups: Annotated[int, typer.Option(help="1 ms sleeps per round in the victim.")] = 1500,
    spinners: Annotated[int, typer.Option(help="Busy processes in the neighbour.")] = 4,
    cpu: Annotated[float, typer.Option(help="Both tenants' CPU limit, in cores.")] = 1.0,
    as_json: JsonOpt = True,
) -> None:
    """A tenant's wake-up and HTTP p50/p99 while a neighbour spins at its CPU limit."""
    from hoody.bench.noisy import noisy as run

    typer.echo(json.dumps(run(rounds, requests, wakeups, spinners, cpu), indent=2))


@app.command()
def sleep(
    registered: Annotated[int, typer.Option(help="Tenants made through the API.")] = 200,
    active: Annotated[int, typer.Option(help="Of them, kept busy with requests.")] = 20,
    samples: Annotated[int, typer.Option(help="Wakes timed per sleep mode.")] = 40,
    idle_seconds: Annotated[int, typer.Option(help="Idle timeout of the idle tenants.")] = 10,
    memory: Annotated[
        int | None,
        typer.Option(
            help="Memory limit (MiB) of each tenant; default: demo-app's own (256 MiB), "
            "what its tenants get in production. Placement counts their measured use."
        ),
    ] = None,
    as_json: JsonOpt = True,
) -> None:
    """Through control plane, router and one node: idle tenants asleep; first request to
    a sleeping tenant → 200, p50/p95 ms for stopped and frozen sleep; node memory."""
    from hoody.bench.sleep import sleep_bench

    result = sleep_bench(registered, active, samples, idle_seconds, memory)
    typer.echo(json.dumps(result, indent=2))
