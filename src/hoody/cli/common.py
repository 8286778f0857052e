"""What every command shares: output (a rich table or `--json`), options, parsing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hoody.agent.spec import TenantSpec
from hoody.errors import InvalidInput

__all__ = [
    "CpuOpt",
    "DiskOpt",
    "IoMbpsOpt",
    "IopsOpt",
    "JsonOpt",
    "MemOpt",
    "PidsOpt",
    "RequestOpt",
    "console",
    "emit",
    "firewall",
    "key_values",
    "limits",
    "status",
    "tenant_spec",
]

console = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
MonthlyCostOpt = Annotated[
    float | None, typer.Option(help="What the server costs a month, e.g. 29 (the bill is the sum).")
]
CurrencyOpt = Annotated[str | None, typer.Option(help="ISO code of the cost, e.g. USD.")]
OvercommitOpt = Annotated[float | None, typer.Option(help="Placement counts up to memory x this.")]
ReserveOpt = Annotated[
    str | None,
    typer.Option(help="Memory kept for the host: 2G, 512M, 10%, or auto (10 %, >= 1 GiB)."),
]
CpuOpt = Annotated[float | None, typer.Option(help="CPU limit in cores, e.g. 0.5.")]
MemOpt = Annotated[int | None, typer.Option("--memory", help="Memory limit in MiB.")]
RequestOpt = Annotated[
    int | None,
    typer.Option(
        "--memory-request",
        help="Memory placement counts, in MiB (expected use; default: learned from "
        "the template's running tenants).",
    ),
]
PidsOpt = Annotated[int | None, typer.Option(help="Process limit.")]
DiskOpt = Annotated[int | None, typer.Option("--disk", help="Disk limit in MiB.")]
IoMbpsOpt = Annotated[
    int | None, typer.Option("--io-mbps", help="Disk read and write bandwidth limit, MiB/s each.")
]
IopsOpt = Annotated[
    int | None, typer.Option("--iops", help="Disk read and write operations per second, each.")
]


def emit(data: Any, as_json: bool, columns: list[str] | None = None, title: str = "") -> None:
    """Print `data` as JSON, or as a table of `columns` (rows: a dict or a list of them)."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    rows = data if isinstance(data, list) else [data]
    if columns is None:
        columns = list(rows[0]) if rows else []
    table = Table(title=title or None)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def key_values(items: list[str] | None, what: str) -> dict[str, str]:
    """{"K": "V"} from ["K=V", …]; InvalidInput names the item that has no `=`."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item!r} is invalid; write KEY=VALUE")
        out[key] = value
    return out


def limits(
    cpu: float | None,
    memory: int | None,
    pids: int | None,
    disk: int | None,
    memory_request: int | None = None,
    io_mbps: int | None = None,
    iops: int | None = None,
) -> dict[str, Any] | None:
    given = {
        "cpu": cpu,
        "memory_mib": memory,
        "pids": pids,
        "disk_mib": disk,
        "memory_request_mib": memory_request,
        "io_mbps": io_mbps,
        "iops": iops,
    }
    return {k: v for k, v in given.items() if v is not None} or None


def tenant_spec(**fields: Any) -> TenantSpec:
    """The TenantSpec the options ask for; options left out take the template's values.
    Checked here, so a bad value is refused before anything is sent."""
    return TenantSpec.parse({k: v for k, v in fields.items() if v is not None})


def firewall(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        policy = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(
            '--firewall must be JSON like {"ingress": [{"port": 8080}]}: ' + str(exc)
        ) from exc
    if not isinstance(policy, dict):
        raise InvalidInput('--firewall must be a JSON object like {"egress_default": "deny"}')
    return policy


@contextlib.contextmanager
def status(message: str, as_json: bool) -> Iterator[None]:
    """A spinner while something slow runs; silent when printing JSON."""
    if as_json:
        yield
        return
    with console.status(message):
        yield
