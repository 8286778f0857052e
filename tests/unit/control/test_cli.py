"""The fleet CLI against a live control plane on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hoody.cli import fleet as fleet_cli
from hoody.control.service import Fleet


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
