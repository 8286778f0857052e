"""`hoody scripts …` and `hoody secrets …`: Exec scripts and their project's secrets.

hoody scripts deploy ./scripts        every scripts/<project>/<name>.ts
hoody scripts deploy ./hook.ts --project 1 --name signup
hoody scripts ls [--project N] | show 1/signup | rm 1/signup | logs 1/signup
hoody scripts check ./scripts         syntax and type errors, with `deno check`
hoody secrets set 1 STRIPE_WEBHOOK_SECRET=whsec_…   (never printed back)
hoody secrets ls 1 | rm 1 NAME
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from hoody.cli.common import JsonOpt, console, emit, key_values
from hoody.control.client import Client
from hoody.errors import InvalidInput

__all__ = ["find_scripts", "register"]

scripts_app = typer.Typer(help="Exec scripts: TypeScript served at /exec/<project>/<name>.")
secrets_app = typer.Typer(help="Per-project secrets, seen by scripts as env.NAME.")

ProjectOpt = Annotated[
    int | None, typer.Option("--project", "-p", help="Project id (default: the logged-in one).")
]


def find_scripts(path: Path, project: int | None = None) -> list[tuple[int, str, Path]]:
    """(project, name, file) for a folder laid out as <project>/<name>.ts, a folder of
    .ts files (with `project`), or one .ts file (with `project`)."""
    if not path.exists():
        raise InvalidInput(f"{path} does not exist; give a folder like ./scripts")
    if path.is_file():
        if project is None:
            if not path.parent.name.isdigit():
                raise InvalidInput(f"which project is {path} for? pass --project N")
            project = int(path.parent.name)
        return [(project, path.stem, path)]
    found = []
    for sub in sorted(path.iterdir()):
        if sub.is_dir() and sub.name.isdigit():
            found += [(int(sub.name), f.stem, f) for f in sorted(sub.glob("*.ts"))]
    if project is not None:
        found += [(project, f.stem, f) for f in sorted(path.glob("*.ts"))]
    if not found:
        raise InvalidInput(
            f"no scripts under {path}; lay them out as {path}/<project id>/<name>.ts "
            "(e.g. scripts/1/signup.ts), or pass --project N for a folder of .ts files"
        )
    return found


def _ref(ref: str) -> tuple[int, str]:
    project, sep, name = ref.partition("/")
    if not sep or not project.isdigit() or not name:
        raise InvalidInput(f"{ref!r} is not a script; write <project>/<name>, e.g. 1/signup")
    return int(project), name


def _project(client: Client, project: int | None) -> int:
    chosen = project if project is not None else client.project
    if chosen is None:
        who = client.whoami()
        chosen = who.get("project_id")
    if chosen is None:
        raise InvalidInput("which project? pass --project N (`hoody login --project N` saves one)")
    return int(chosen)


@scripts_app.command("deploy")
def deploy(
    path: Annotated[Path, typer.Argument(help="A folder of <project>/<name>.ts, or a file.")],
    project: ProjectOpt = None,
    name: Annotated[str | None, typer.Option(help="Script name, for a single file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload scripts; each becomes a new version unless its source is unchanged."""
    found = find_scripts(path, project)
    if name is not None:
        if len(found) != 1:
            raise InvalidInput("--name is for deploying one file")
        found = [(found[0][0], name, found[0][2])]
    with Client() as client:
        out = [{**client.deploy_script(p, n, f.read_text()), "file": str(f)} for p, n, f in found]
    for row in out:
        row["url"] = f"{client.url}{row['url']}"
    emit(out, as_json, ["project", "name", "version", "changed", "url"])


@scripts_app.command("ls")
def ls(project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """A project's scripts (current versions)."""
    with Client() as client:
        rows = client.scripts(_project(client, project))
    emit(rows, as_json, ["project", "name", "version", "size", "sha256", "url"])


@scripts_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="<project>/<name>, e.g. 1/signup")],
    version: Annotated[int | None, typer.Option(help="An older version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A script's source and version."""
    project, name = _ref(ref)
    with Client() as client:
        row = client.script(project, name, version)
    if as_json:
        emit(row, True)
        return
    console.print(f"[bold]{project}/{name}[/] version {row['version']}  sha256 {row['sha256']}")
    print(row["source"], end="" if row["source"].endswith("\n") else "\n")


@scripts_app.command("rm")
def rm(
    ref: Annotated[str, typer.Argument(help="<project>/<name>")], as_json: JsonOpt = False
) -> None:
    """Delete a script: its URL answers 404 from now on."""
    project, name = _ref(ref)
    with Client() as client:
        emit(client.delete_script(project, name), as_json)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


@scripts_app.command("logs")
def logs(
    ref: Annotated[str, typer.Argument(help="<project>/<name>")],
    limit: Annotated[int, typer.Option(help="How many invocations, newest last.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The newest invocations: status, duration, CPU, peak memory and console output."""
    project, name = _ref(ref)
    with Client() as client:
        runs = client.script_logs(project, name, limit)
    if as_json:
        emit(runs, True)
        return
    for run in reversed(runs):
        colour = "green" if run["status"] < 400 else "yellow" if run["status"] < 500 else "red"
        console.print(
            f"{_when(run['started_at'])} [{colour}]{run['status']}[/] {run['method']} "
            f"{run['path']}  v{run['version']} {run['outcome']}  "
            f"{run['duration_ms']:.1f} ms, cpu {run['cpu_ms']:.1f} ms, "
            f"peak {run['peak_memory_bytes'] / (1 << 20):.1f} MiB"
            + (" (cold)" if run["cold"] else ""),
            highlight=False,
        )
        if run["error"]:
            console.print(f"  [red]{run['error']}[/]", highlight=False)
        for line in run["console"]:
            console.print(f"  | {line}", highlight=False, markup=False)


@scripts_app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="A folder of <project>/<name>.ts, or a file.")],
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Syntax and type errors, before deploy (deno check; nothing is fetched)."""
    from hoody.exec.check import check_scripts

    files = [f for _, _, f in find_scripts(path, project if project is not None else 0)]
    results = check_scripts(files)
    if as_json:
        emit([{"file": str(r.path), "ok": r.ok, "output": r.output} for r in results], True)
    else:
        for r in results:
            console.print(f"{'[green]ok[/]' if r.ok else '[red]error[/]'}  {r.path}")
            if not r.ok:
                console.print(r.output, highlight=False, markup=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@secrets_app.command("set")
def set_secrets(
    project: Annotated[int, typer.Argument(help="Project id.")],
    pairs: Annotated[list[str], typer.Argument(help="NAME=VALUE …")],
    as_json: JsonOpt = False,
) -> None:
    """Set secrets (encrypted at rest; never shown again)."""
    values = key_values(pairs, "secret")
    with Client() as client:
        out = [client.set_secret(project, k, v) for k, v in values.items()]
    emit(out, as_json, ["project", "name", "updated_at"])


@secrets_app.command("ls")
def ls_secrets(
    project: Annotated[int, typer.Argument(help="Project id.")], as_json: JsonOpt = False
) -> None:
    """Secret names of a project (values are never shown)."""
    with Client() as client:
        emit(client.secrets(project), as_json, ["project", "name", "updated_at"])


@secrets_app.command("rm")
def rm_secret(
    project: Annotated[int, typer.Argument(help="Project id.")],
    name: Annotated[str, typer.Argument(help="Secret name.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete a secret."""
    with Client() as client:
        out: dict[str, Any] = client.delete_secret(project, name)
    emit(out, as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(scripts_app, name="scripts")
    app.add_typer(secrets_app, name="secrets")
