"""The fleet CLI against a live control plane on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from hoody.cli import fleet as fleet_cli
from hoody.cli.main import app
from hoody.control.api import create_app
from hoody.control.db import Store
from hoody.control.service import Fleet
from hoody.errors import Forbidden, InvalidInput, NotFound, QuotaExceeded
from tests.control_support import World, make_world


def test_login_token_create_nodes_templates(
    server: tuple[str, Fleet],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, fleet = server
    admin_token = fleet.bootstrap_admin()
    assert admin_token
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("HOODY_URL", raising=False)
    monkeypatch.delenv("HOODY_TOKEN", raising=False)
    app, bench = typer.Typer(), typer.Typer()
    fleet_cli.register(app, bench)
    cli = CliRunner()

    out = cli.invoke(app, ["login", url, "--token", admin_token, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["scope"] == "admin"
    saved = tmp_path / "hoody" / "config.json"
    assert json.loads(saved.read_text()) == {"url": url, "token": admin_token}
    assert saved.stat().st_mode & 0o777 == 0o600

    admin = fleet.authenticate(f"Bearer {admin_token}")
    project = fleet.create_project(admin, "acme")["id"]
    out = cli.invoke(app, ["token", "create", "--project", str(project), "--json"])
    assert out.exit_code == 0, out.output
    made = json.loads(out.output)
    assert made["scope"] == "project" and made["token"].startswith("hdy_")

    fleet.join(admin, "n1", "http://127.0.0.1:9", "t")
    fleet.heartbeat(admin, "n1", {"memory_total_bytes": 1 << 30}, [{"name": "demo", "version": 1}])
    out = cli.invoke(app, ["nodes", "--json"])
    assert [n["name"] for n in json.loads(out.output)] == ["n1"]
    out = cli.invoke(app, ["templates"])
    assert out.exit_code == 0 and "demo" in out.output and "n1" in out.output


@pytest.fixture
def live_world(tmp_path: Path) -> Iterator[tuple[str, World]]:
    """A control plane with two fake nodes (template demo on both), on a loopback port."""
    store = Store(f"sqlite:///{tmp_path / 'control.db'}")
    world = make_world(store)
    app = create_app(world.fleet, monitor=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", world
    srv.should_exit = True
    thread.join(10)
    store.close()


def test_top_level_verbs_go_through_the_control_plane(
    live_world: tuple[str, World], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, w = live_world
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("HOODY_TOKEN", raising=False)
    monkeypatch.delenv("HOODY_URL", raising=False)
    cli = CliRunner()

    def hoody(*args: str) -> Any:
        out = cli.invoke(app, [*args, "--json"])
        assert out.exit_code == 0, out.output
        return json.loads(out.output)

    # An admin login with a default project: copies land in it.
    assert cli.invoke(app, ["login", url, "--token", w.admin_token, "--project", str(w.project)])
    made = hoody("copy", "demo", "--name", "web-1", "--metadata", "customer=cus_1")
    assert made["id"] == "web-1" and made["project_id"] == w.project
    assert "web-1" in w.agents[made["node"]].tenants
    again = hoody("copy", "demo", "--idempotency-key", "evt_9", "--metadata", "k=v")
    assert hoody("copy", "demo", "--idempotency-key", "evt_9", "--metadata", "k=v") == again
    assert [c["id"] for c in hoody("ls", "--metadata", "customer=cus_1")] == ["web-1"]
    assert hoody("show", "web-1")["node"] == made["node"]
    assert hoody("stop", "web-1")["state"] == "stopped"
    assert hoody("start", "web-1")["state"] == "running"
    slept = hoody("sleep", "web-1", "--mode", "frozen")
    assert (slept["state"], slept["sleep_mode"]) == ("sleeping", "frozen")
    shown = cli.invoke(app, ["ls"]).output  # the table may wrap the cell
    assert "sleeping" in shown and "(frozen)" in shown
    assert hoody("wake", "web-1")["state"] == "running"
    assert hoody("copy", "demo", "--sleep-after", "60", "--sleep-mode", "frozen")["sleep"] == {
        "idle_seconds": 60,
        "mode": "frozen",
    }
    snap = hoody("snapshot", "web-1", "--template", "demo")
    assert snap["result"]["version"] == 2
    assert [v["version"] for v in hoody("templates")[0]["versions"]] == [1, 2]
    assert hoody("nodes", "cordon", "n1")["state"] == "cordoned"
    assert {n["name"]: n["state"] for n in hoody("nodes")} == {"n1": "cordoned", "n2": "up"}
    made_req = hoody("copy", "demo", "--version", "1", "--memory-request", "32")
    assert made_req["limits"]["memory_request_mib"] == 32
    assert "32 MiB request (asked)" in made_req["placement"]
    assert hoody("nodes", "set", "n2", "--overcommit", "1.5")["capacity"]["overcommit"] == 1.5
    assert w.agents["n2"].overcommit == 1.5, "the node keeps its own setting"
    table = cli.invoke(app, ["nodes"], env={"COLUMNS": "240"})
    assert table.exit_code == 0, table.output
    assert "n2" in table.output and "(x1.5)" in table.output
    (n2,) = [n for n in hoody("nodes") if n["name"] == "n2"]
    assert n2["estimates"][0]["template"] == "demo" and n2["estimates"][0]["further_tenants"] > 0
    hoody("rm", made_req["id"])
    assert hoody("rm", "web-1", again["id"]) == [
        {"id": "web-1", "deleted": True, "existed": True},
        {"id": again["id"], "deleted": True, "existed": True},
    ]
    for left in hoody("ls"):
        hoody("rm", left["id"])
    assert hoody("ls") == []

    # Errors: one line naming the fix, non-zero exit, JSON with --json.
    out = cli.invoke(app, ["show", "nope"])
    assert out.exit_code != 0 and isinstance(out.exception, NotFound)


def test_the_main_app_splits_fleet_and_node_commands() -> None:
    top = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"copy", "ls", "rm", "up", "down", "login", "server", "demo"} <= set(top)
    assert {"node", "nodes", "templates", "token", "bench"} <= set(top)
    assert {"init", "serve", "copy", "ls", "rm", "exec", "logs", "template"} <= set(
        top["node"].commands
    )


def test_project_quotas_from_the_cli(
    live_world: tuple[str, World], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, w = live_world
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("HOODY_TOKEN", raising=False)
    monkeypatch.delenv("HOODY_URL", raising=False)
    cli = CliRunner()
    assert cli.invoke(app, ["login", url, "--token", w.admin_token]).exit_code == 0
    pid = str(w.project)

    limits = ["--max-tenants", "1", "--max-memory", "4G", "--max-disk", "20G"]
    out = cli.invoke(app, ["project", "set", pid, *limits, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["quota"] == {
        "max_tenants": 1,
        "max_memory_mib": 4096,
        "max_disk_mib": 20480,
    }
    w.fleet.copy(w.project, "demo")
    table = cli.invoke(app, ["project", "ls"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "1 / 1" in table.output and "256M / 4G" in table.output and "1G / 20G" in table.output
    shown = json.loads(cli.invoke(app, ["project", "show", pid, "--json"]).output)
    assert shown["usage"] == {"tenants": 1, "memory_mib": 256, "disk_mib": 1024}

    # The refusal names the quota, the use and the fix, and exits non-zero.
    out = cli.invoke(app, ["copy", "demo", "--project", pid])
    assert out.exit_code != 0 and isinstance(out.exception, QuotaExceeded)
    assert "tenant quota: 1 of 1" in str(out.exception) and "--max-tenants 2" in str(out.exception)
    out = cli.invoke(app, ["project", "set", pid, "--max-tenants", "none", "--json"])
    assert json.loads(out.output)["quota"]["max_tenants"] is None
    for bad in (["--max-memory", "lots"], ["--max-tenants", "-3"], []):
        out = cli.invoke(app, ["project", "set", pid, *bad])
        assert isinstance(out.exception, InvalidInput) and "give" in str(out.exception)

    # A project token reads its own project, and may not change it.
    monkeypatch.setenv("HOODY_TOKEN", w.project_token)
    monkeypatch.setenv("HOODY_URL", url)
    assert json.loads(cli.invoke(app, ["project", "show", pid, "--json"]).output)["id"] == w.project
    out = cli.invoke(app, ["project", "set", pid, "--max-tenants", "99"])
    assert isinstance(out.exception, Forbidden) and "admin token" in str(out.exception)


def test_a_project_token_sees_no_node_in_the_cli(
    live_world: tuple[str, World], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, w = live_world
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOODY_URL", url)
    cli = CliRunner()
    where = {"node", "ip", "address", "placement"}

    monkeypatch.setenv("HOODY_TOKEN", w.project_token)
    out = cli.invoke(app, ["copy", "demo", "--name", "web-1"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "placement" not in out.output and not any(n in out.output for n in w.agents)
    for args in (["show", "web-1"], ["ls"], ["stop", "web-1"], ["start", "web-1"]):
        as_json = cli.invoke(app, [*args, "--json"])
        assert as_json.exit_code == 0, as_json.output
        data = json.loads(as_json.output)
        for rec in data if isinstance(data, list) else [data]:
            assert rec["id"] == "web-1" and not where & set(rec), rec
        table = cli.invoke(app, args, env={"COLUMNS": "200"})
        assert table.exit_code == 0 and "web-1" in table.output, table.output
        assert "node" not in table.output and not any(n in table.output for n in w.agents)

    monkeypatch.setenv("HOODY_TOKEN", w.admin_token)
    shown = json.loads(cli.invoke(app, ["show", "web-1", "--json"]).output)
    assert where <= set(shown) and shown["node"] in w.agents
    table = cli.invoke(app, ["show", "web-1"], env={"COLUMNS": "250"}).output
    assert "node" in table and shown["node"] in table


def test_a_project_token_lists_templates_without_nodes(
    live_world: tuple[str, World], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, w = live_world
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOODY_URL", url)
    cli = CliRunner()
    w.agents["n1"].add_template("demo", 2)  # on n1 only: still replicating
    w.heartbeat("n1")

    monkeypatch.setenv("HOODY_TOKEN", w.project_token)
    for args in (["templates"], ["templates", "show", "demo"], ["templates", "--wait"]):
        if args[-1] == "--wait":  # a project is told a version is ready, not where
            w.agents["n2"].add_template("demo", 2)
            w.heartbeat("n2")
        table = cli.invoke(app, args, env={"COLUMNS": "200"})
        assert table.exit_code == 0, table.output
        assert "demo" in table.output and "ready" in table.output, table.output
        assert not any(n in table.output for n in w.agents), table.output
    rows = json.loads(cli.invoke(app, ["templates", "--json"]).output)
    assert [(v["version"], v["replicating"]) for v in rows[0]["versions"]] == [
        (1, False),
        (2, False),
    ]
    assert all("nodes" not in v for v in rows[0]["versions"])

    monkeypatch.setenv("HOODY_TOKEN", w.admin_token)
    table = cli.invoke(app, ["templates"], env={"COLUMNS": "200"}).output
    assert "n1" in table and "n2" in table
