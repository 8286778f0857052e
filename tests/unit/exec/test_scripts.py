"""The Exec area of the Fleet on both databases: scripts, versions, logs, settings,
secrets and invocation tokens (no Deno here: see tests/integration/exec)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hoody.control.api import create_app
from hoody.control.db import Store
from hoody.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from hoody.exec import tokens
from hoody.exec.limits import Limits, check_hosts
from hoody.exec.secrets import SecretBox
from hoody.exec.tables import ProjectSecret
from tests.control_support import make_world


def test_deploy_versions_list_show_and_delete(store: Store) -> None:
    w = make_world(store, nodes={})
    one = w.fleet.put_script(w.who, w.project, "signup", "export default {}\n")
    assert (one["version"], one["changed"]) == (1, True)
    assert w.fleet.put_script(w.who, w.project, "signup", "export default {}\n")["changed"] is False
    two = w.fleet.put_script(w.who, w.project, "signup", "export default { a: 1 }\n")
    assert two["version"] == 2
    assert [s["version"] for s in w.fleet.list_scripts(w.who, w.project)] == [2]
    assert w.fleet.get_script(w.who, w.project, "signup", 1)["source"] == "export default {}\n"
    assert w.fleet.resolve(w.project, "signup").version == 2
    assert w.fleet.delete_script(w.who, w.project, "signup")["existed"] is True
    assert w.fleet.delete_script(w.who, w.project, "signup")["existed"] is False
    with pytest.raises(NotFound):
        w.fleet.resolve(w.project, "signup")
    # Numbering continues: version 3 can never be confused with an old worker's 1.
    assert w.fleet.put_script(w.who, w.project, "signup", "export default {}\n")["version"] == 3


@pytest.mark.parametrize("name", ["", "Signup", "a/b", "../x", "x" * 64, "-x", "a b"])
def test_bad_script_names_are_refused(store: Store, name: str) -> None:
    w = make_world(store, nodes={})
    with pytest.raises(InvalidInput, match="script name"):
        w.fleet.put_script(w.who, w.project, name, "export default {}")


def test_a_project_token_reaches_its_own_project_only(store: Store) -> None:
    w = make_world(store, nodes={})
    other = w.fleet.create_project(w.admin, "other")["id"]
    with pytest.raises(Forbidden):
        w.fleet.put_script(w.who, other, "x", "export default {}")
    with pytest.raises(Forbidden):
        w.fleet.list_secrets(w.who, other)
    w.fleet.put_script(w.admin, other, "x", "export default {}")  # admin may
    with pytest.raises(NotFound):
        w.fleet.list_scripts(w.admin, 999)


def test_secrets_are_sealed_and_never_listed_with_values(store: Store) -> None:
    w = make_world(store, nodes={})
    w.fleet.set_secret(w.who, w.project, "STRIPE_WEBHOOK_SECRET", "whsec_abc")
    listed = w.fleet.list_secrets(w.who, w.project)
    assert [s["name"] for s in listed] == ["STRIPE_WEBHOOK_SECRET"]
    assert "whsec_abc" not in repr(listed)
    with store.read() as s:
        (row,) = s.query(ProjectSecret).all()
        assert b"whsec_abc" not in row.ciphertext
    w.fleet.put_script(w.who, w.project, "signup", "export default {}")
    assert w.fleet.resolve(w.project, "signup").secrets == {"STRIPE_WEBHOOK_SECRET": "whsec_abc"}
    for bad in ("lower", "HOODY_TOKEN", "A-B", ""):
        with pytest.raises(InvalidInput):
            w.fleet.set_secret(w.who, w.project, bad, "x")
    assert w.fleet.delete_secret(w.who, w.project, "STRIPE_WEBHOOK_SECRET")["existed"] is True


def test_the_key_file_is_private_and_a_wrong_key_cannot_open_secrets(tmp_path: Path) -> None:
    box = SecretBox.open(tmp_path)
    assert os.stat(tmp_path / "exec.key").st_mode & 0o777 == 0o600
    sealed = box.seal("v")
    assert SecretBox.open(tmp_path).open_value(sealed) == "v"
    with pytest.raises(Exception, match=r"exec\.key"):
        SecretBox(os.urandom(32)).open_value(sealed)


def test_invocation_tokens_act_in_one_project_and_expire(store: Store) -> None:
    w = make_world(store, nodes={})
    token = w.fleet.mint_invocation_token(w.project, "signup", ttl=60)
    who = w.fleet.authenticate(f"Bearer {token}")
    assert (who.scope, who.project_id) == ("project", w.project)
    key = w.fleet.secret_box.token_key
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(key, tokens.mint(key, w.project, "s", 1000.0), now=2000.0)
    with pytest.raises(Unauthorized):
        w.fleet.authenticate(f"Bearer {token[:-3]}xyz")
    with pytest.raises(Unauthorized):
        tokens.verify(os.urandom(32), token, now=0)


def test_settings_merge_and_hosts_are_allow_lists(store: Store) -> None:
    w = make_world(store, nodes={})
    out = w.fleet.put_exec_settings(w.who, w.project, {"wall_ms": 5000}, ["api.stripe.com"])
    assert out["limits"]["wall_ms"] == 5000 and out["limits"]["heap_mib"] == Limits().heap_mib
    out = w.fleet.put_exec_settings(w.who, w.project, {"heap_mib": 64}, None)
    assert out["limits"]["wall_ms"] == 5000 and out["allowed_hosts"] == ["api.stripe.com"]
    for bad in (["0.0.0.0"], ["*.example.com"], ["a b"], ["http://x"]):
        with pytest.raises(InvalidInput):
            check_hosts(bad)


def test_runs_are_logged_newest_first(store: Store) -> None:
    w = make_world(store, nodes={})
    w.fleet.put_script(w.who, w.project, "s", "export default {}")
    for status in (200, 500):
        w.fleet.record_run(
            w.project, "s", 1, method="GET", path="/exec/1/s", status=status, outcome="ok",
            error="", started_at=1.0, duration_ms=1.0, cpu_ms=0.5, peak_memory_bytes=1 << 20,
            cold=False, console=["hi"],
        )  # fmt: skip
    runs = w.fleet.script_runs(w.who, w.project, "s")
    assert [r["status"] for r in runs] == [500, 200] and runs[0]["console"] == ["hi"]


def test_the_api_serves_scripts_and_never_returns_secret_values(tmp_path: Path) -> None:
    w = make_world(Store(f"sqlite:///{tmp_path / 'c.db'}"), nodes={})
    headers = {"Authorization": f"Bearer {w.project_token}"}
    with TestClient(create_app(w.fleet, monitor=False)) as client:
        r = client.put(f"/api/v1/scripts/{w.project}/hello", json={"source": "x"}, headers=headers)
        assert r.status_code == 200 and r.json()["version"] == 1
        assert (
            client.get(f"/api/v1/scripts/{w.project}", headers=headers).json()[0]["name"] == "hello"
        )
        r = client.put(
            f"/api/v1/projects/{w.project}/secrets/TOKEN", json={"value": "v1"}, headers=headers
        )
        assert r.status_code == 200 and "v1" not in r.text
        assert client.get(f"/api/v1/scripts/{w.project}/nope", headers=headers).status_code == 404
        assert (
            client.put(f"/api/v1/scripts/{w.project}/x", json={}, headers=headers).status_code
            == 400
        )
        assert client.get("/api/v1/scripts/1").status_code == 401
        assert client.get(f"/exec/{w.project}/nope").status_code == 404
        spec = client.get("/api/v1/openapi.json").json()
        assert "/api/v1/scripts/{project}/{name}" in spec["paths"]
