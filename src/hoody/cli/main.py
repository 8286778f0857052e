"""`hoody`: the command line. Every command takes --json for scripts.

Commands talk to the local node agent over its API (`hoody node serve`), found through
HOODY_AGENT_URL/HOODY_AGENT_TOKEN or the node's state dir (default /var/lib/hoody).
Errors print one line that names the problem and the fix, and exit non-zero.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hoody.agent.client import AgentClient
from hoody.agent.config import DEFAULT_STATE_DIR, NodeConfig
from hoody.cli import bench, node
from hoody.errors import HoodyError, InvalidInput

__all__ = ["app", "main"]

app = typer.Typer(
    help="hoody: one isolated Linux container per customer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
template_app = typer.Typer(help="Templates: read-only, versioned root filesystems.")
app.add_typer(template_app, name="template")
app.add_typer(node.app, name="node")
app.add_typer(bench.app, name="bench")

console = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def agent() -> AgentClient:
    url = os.environ.get("HOODY_AGENT_URL")
    token = os.environ.get("HOODY_AGENT_TOKEN")
    if not (url and token):
        state_dir = Path(os.environ.get("HOODY_STATE_DIR", str(DEFAULT_STATE_DIR)))
        config = NodeConfig.load(state_dir)
        url = url or f"http://{config.listen}"
        token = token or config.token_path.read_text().strip()
    return AgentClient(url, token)


def emit(data: Any, as_json: bool, columns: list[str] | None = None, title: str = "") -> None:
    """Print `data` as JSON, or as a table of `columns` for lists of dicts."""
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


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item!r} is invalid; write KEY=VALUE")
        out[key] = value
    return out


def _limits(cpu: float | None, memory: int | None, pids: int | None, disk: int | None) -> Any:
    given = {"cpu": cpu, "memory_mib": memory, "pids": pids, "disk_mib": disk}
    return {k: v for k, v in given.items() if v is not None} or None


TENANT_COLUMNS = ["id", "template", "version", "state", "ip", "url"]

CpuOpt = Annotated[float | None, typer.Option(help="CPU limit in cores, e.g. 0.5.")]
MemOpt = Annotated[int | None, typer.Option("--memory", help="Memory limit in MiB.")]
PidsOpt = Annotated[int | None, typer.Option(help="Process limit.")]
DiskOpt = Annotated[int | None, typer.Option("--disk", help="Disk limit in MiB.")]


@template_app.command("create")
def template_create(
    name: str,
    rootfs: Annotated[Path | None, typer.Option(help="Copy this directory.")] = None,
    tar: Annotated[Path | None, typer.Option(help="Unpack this tarball.")] = None,
    debootstrap: Annotated[bool, typer.Option(help="Debian bookworm minbase.")] = False,
    include: Annotated[list[str] | None, typer.Option(help="Extra packages (debootstrap).")] = None,
    demo: Annotated[bool, typer.Option(help="The demo-app web app.")] = False,
    entrypoint: Annotated[str | None, typer.Option(help="Command, as a JSON list.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    port: Annotated[int, typer.Option(help="The tenant's HTTP port.")] = 8080,
    ksm: Annotated[bool, typer.Option(help="Merge memory among this template's tenants.")] = False,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    pids: PidsOpt = None,
    disk: DiskOpt = None,
    firewall: Annotated[str | None, typer.Option(help="Firewall policy as JSON.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a template, or its next version when NAME exists."""
    sources = [s for s in (rootfs, tar, debootstrap or None, demo or None) if s]
    if len(sources) != 1:
        raise InvalidInput("give exactly one of --rootfs DIR, --tar FILE, --debootstrap, --demo")
    source: dict[str, Any]
    args: list[str] | None = None
    if rootfs:
        source = {"rootfs": str(rootfs.resolve())}
    elif tar:
        source = {"tar": str(tar.resolve())}
    elif debootstrap:
        source = {"debootstrap": {"suite": "bookworm", "include": include or []}}
    else:
        from hoody.agent.templates import DEMO_ARGS

        source, args = {"demo": True}, DEMO_ARGS
    if entrypoint:
        try:
            args = json.loads(entrypoint)
        except ValueError as exc:
            raise InvalidInput('--entrypoint must be a JSON list like ["/app/run"]') from exc
    with console.status(f"building template {name}…") if not as_json else _null():
        rec = agent().create_template(
            name,
            source,
            args=args,
            env=_kv(env, "env") or None,
            port=port,
            ksm=ksm or None,
            limits=_limits(cpu, memory, pids, disk),
            firewall=json.loads(firewall) if firewall else None,
        )
    emit(rec, as_json, ["name", "version", "args", "port", "ksm"])


@template_app.command("ls")
def template_ls(as_json: JsonOpt = False) -> None:
    """List template versions."""
    emit(agent().templates(), as_json, ["name", "version", "args", "port", "ksm", "limits"])


@template_app.command("rm")
def template_rm(
    name: str,
    version: Annotated[int | None, typer.Option(help="Only this version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a template (all versions, or one); refused while tenants use it."""
    emit(agent().delete_template(name, version), as_json)


@app.command()
def copy(
    template: str,
    name: Annotated[str | None, typer.Option(help="Tenant id (DNS label).")] = None,
    version: Annotated[int | None, typer.Option(help="Template version.")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    mode: Annotated[str | None, typer.Option(help="Storage: overlay or snapshot.")] = None,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    pids: PidsOpt = None,
    disk: DiskOpt = None,
    firewall: Annotated[str | None, typer.Option(help="Firewall policy as JSON.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a tenant from TEMPLATE and start it."""
    rec = agent().copy(
        template,
        name=name,
        version=version,
        env=_kv(env, "env") or None,
        mode=mode,
        limits=_limits(cpu, memory, pids, disk),
        firewall=json.loads(firewall) if firewall else None,
    )
    emit(rec, as_json, TENANT_COLUMNS)


@app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """List tenants."""
    emit(agent().tenants(), as_json, TENANT_COLUMNS)


@app.command()
def show(cid: str, as_json: JsonOpt = False) -> None:
    """Show one tenant, with its disk and cgroup usage."""
    emit(agent().tenant(cid), as_json)


@app.command()
def start(cid: str, as_json: JsonOpt = False) -> None:
    """Start a stopped tenant."""
    emit(agent().action(cid, "start"), as_json, TENANT_COLUMNS)


@app.command()
def stop(cid: str, as_json: JsonOpt = False) -> None:
    """Stop a tenant; its files and address stay."""
    emit(agent().action(cid, "stop"), as_json, TENANT_COLUMNS)


@app.command()
def restart(cid: str, as_json: JsonOpt = False) -> None:
    """Restart a tenant."""
    emit(agent().action(cid, "restart"), as_json, TENANT_COLUMNS)


@app.command("rm")
def rm(cid: str, as_json: JsonOpt = False) -> None:
    """Delete a tenant and everything it had. Deleting twice is harmless."""
    emit(agent().delete(cid), as_json)


@app.command()
def snapshot(
    cid: str,
    template: Annotated[str | None, typer.Option(help="Template name (default: its own).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a new template version from a tenant's files."""
    body = {"template": template} if template else {}
    emit(agent().action(cid, "snapshot", body), as_json, ["name", "version"])


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    ctx: typer.Context,
    cid: str,
    as_json: JsonOpt = False,
) -> None:
    """Run a command inside a tenant: hoody exec CID -- CMD [ARGS...]."""
    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    result = agent().exec(cid, argv)
    if as_json:
        emit(result, True)
    else:
        sys.stdout.write(result["stdout"])
        sys.stderr.write(result["stderr"])
    raise typer.Exit(result["exit_code"])


@app.command()
def logs(
    cid: str,
    tail: Annotated[int, typer.Option(help="Lines from the end.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Print a tenant's stdout/stderr log."""
    text = agent().logs(cid, tail)
    if as_json:
        emit({"id": cid, "log": text}, True)
    else:
        sys.stdout.write(text)


@app.command()
def demo() -> None:
    """Set up this machine as a one-node hoody, build demo-app, create tenants (make demo)."""
    from hoody.cli.demo import run_demo

    run_demo(console)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    """Entry point: run the app and render HoodyError as one line plus exit code."""
    try:
        app(standalone_mode=False)
    except HoodyError as exc:
        if "--json" in sys.argv:
            print(json.dumps(exc.to_json()), file=sys.stderr)
        else:
            Console(stderr=True).print(f"[red]error:[/red] {exc.message}", highlight=False)
        sys.exit(2 if exc.status < 500 else 1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
