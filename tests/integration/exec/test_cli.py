"""`hoody scripts …`, `hoody secrets …` and a watched scripts folder, on a real
control plane with real Deno workers."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from hoody.bench.scratch import free_port, serve_in_thread
from hoody.cli.main import app
from hoody.control.api import create_app
from hoody.control.db import Store
from hoody.control.service import Fleet, Settings
from tests.integration.exec.conftest import ExecStack

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "stripe-signup" / "signup.ts"


def test_deploy_ls_show_logs_rm_and_secrets(
    exec_stack: ExecStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOODY_URL", exec_stack.api)
    monkeypatch.setenv("HOODY_TOKEN", exec_stack.token)
    p = exec_stack.project
    folder = tmp_path / "scripts" / str(p)
    folder.mkdir(parents=True)
    (folder / "greet.ts").write_text(
        "export default { fetch: (r: Request, env: Record<string, string>) => "
        "new Response(`hi ${env.WHO}`) };\n"
    )
    cli = CliRunner()
    out = cli.invoke(app, ["scripts", "deploy", str(tmp_path / "scripts"), "--json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.output)
    assert (row["project"], row["name"], row["changed"]) == (p, "greet", True)
    assert row["url"] == f"{exec_stack.api}/exec/{p}/greet"

    out = cli.invoke(app, ["secrets", "set", str(p), "WHO=world"])
    assert out.exit_code == 0 and "world" not in out.output, out.output
    out = cli.invoke(app, ["secrets", "ls", str(p), "--json"])
    assert "WHO" in out.output and "world" not in out.output
    assert httpx.get(row["url"], timeout=30).text == "hi world"

    out = cli.invoke(app, ["scripts", "ls", "--project", str(p), "--json"])
    assert "greet" in [s["name"] for s in json.loads(out.output)]
    out = cli.invoke(app, ["scripts", "show", f"{p}/greet"])
    assert "new Response" in out.output
    time.sleep(0.5)
    out = cli.invoke(app, ["scripts", "logs", f"{p}/greet"])
    assert out.exit_code == 0 and " 200 GET /exec/" in out.output, out.output
    out = cli.invoke(app, ["scripts", "rm", f"{p}/greet", "--json"])
    assert json.loads(out.output)["existed"] is True
    assert httpx.get(row["url"], timeout=30).status_code == 404
    out = cli.invoke(app, ["scripts", "show", "nonsense"])
    assert out.exit_code != 0


def test_check_reports_syntax_and_type_errors_with_nothing_fetched(tmp_path: Path) -> None:
    folder = tmp_path / "scripts" / "1"
    folder.mkdir(parents=True)
    (folder / "signup.ts").write_text(EXAMPLE.read_text())
    cli = CliRunner()
    out = cli.invoke(app, ["scripts", "check", str(tmp_path / "scripts")])
    assert out.exit_code == 0, out.output
    (folder / "typo.ts").write_text(
        'import { Hoody, type Env } from "hoody";\n'
        "export default { async fetch(r: Request, env: Env) {\n"
        '  await new Hoody(env).copy("demo-app", { idempotencyKey: 42 });\n'
        '  return new Response("x");\n'
        "} };\n"
    )
    (folder / "syntax.ts").write_text("export default {\n  fetch() { let = ; }\n};\n")
    (folder / "remote.ts").write_text('import "https://deno.land/std/version.ts";\n')
    out = cli.invoke(app, ["scripts", "check", str(tmp_path / "scripts"), "--json"])
    assert out.exit_code == 1
    results = {Path(r["file"]).name: r for r in json.loads(out.output)}
    assert results["signup.ts"]["ok"]
    assert not results["typo.ts"]["ok"] and "typo.ts:3" in results["typo.ts"]["output"]
    assert "idempotencyKey" in results["typo.ts"]["output"]
    assert not results["syntax.ts"]["ok"] and "syntax.ts:2" in results["syntax.ts"]["output"]
    assert not results["remote.ts"]["ok"]


def test_a_watched_folder_serves_each_edit_on_the_next_request(tmp_path: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="hoody-watch-"))
    scripts = tmp_path / "scripts"
    (scripts / "1").mkdir(parents=True)
    store = Store(f"sqlite:///{state / 'control.db'}")
    fleet = Fleet(store, settings=Settings(state_dir=state, scripts_dir=scripts))
    admin = fleet.bootstrap_admin()
    assert admin
    fleet.ensure_project(fleet.authenticate(f"Bearer {admin}"), "default")
    hello = scripts / "1" / "hello.ts"
    try:
        with serve_in_thread(create_app(fleet, monitor=False), free_port()) as api:
            for n in range(3):
                hello.write_text(f'export default {{ fetch: () => new Response("v{n}") }};\n')
                # A new mtime even within the filesystem's timestamp granularity.
                os.utime(hello, ns=(time.time_ns(), time.time_ns() + n))
                r = httpx.get(f"{api}/exec/1/hello", timeout=30)
                assert (r.status_code, r.text) == (200, f"v{n}")
            hello.unlink()
            assert httpx.get(f"{api}/exec/1/hello", timeout=30).status_code == 404
    finally:
        fleet.close()
        store.close()
