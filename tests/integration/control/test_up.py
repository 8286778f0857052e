"""`hoody up` and `make demo` end to end, on a scratch node of their own: the control
plane and the agent in one background process, the node joined, the demo template
built, three tenants made through the API, `hoody down`, and `hoody down --purge`."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from hoody.agent.templates import DEMO_NAME
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import free_port, scratch_config
from hoody.cli.demo import run_demo
from hoody.cli.main import app
from hoody.cli.up import down, ensure_up
from hoody.control.client import Client
from hoody.errors import HostError
from tests.integration.traces import node_traces


def test_up_then_the_demo_makes_three_tenants_through_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("HOODY_URL", "HOODY_TOKEN", "HOODY_PROJECT", "HOODY_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with scratch_config("up") as config:
        api, router = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        out = io.StringIO()
        try:
            run_demo(Console(file=out, width=300), config.state_dir, api, router)
            # The CLI's saved login (admin, project "default") reaches the same fleet.
            with Client() as client:
                tenants = list(client.iter_containers(template=DEMO_NAME))
                assert len(tenants) == 3 and {t["state"] for t in tenants} == {"running"}
                assert {t["node"] for t in tenants} == {config.name}
                for t in tenants:
                    # Each gets a one-time claim link through the router.
                    assert f"{t['url'].rstrip('/')}/_hoody/claim?claim=" in out.getvalue()
                    wait_http_ok(f"http://{t['address']}/")
                port = router.rpartition(":")[2]
                assert tenants[0]["url"] == f"http://{tenants[0]['id']}.localhost:{port}/"
                refused = httpx.get(
                    f"http://{router}/", headers={"Host": f"{tenants[0]['id']}.localhost"}
                )
                assert refused.status_code == 401, "no session, no tenant"
                (node,) = client.nodes()
                assert node["state"] == "up" and node["containers"] == 3
            # Running it again finds everything up and makes nothing more.
            run_demo(Console(file=io.StringIO()), config.state_dir, api, router)
            again = ensure_up(config.state_dir, api, router_listen=router)
            assert not again.started
            with Client() as client:
                assert len(client.containers(template=DEMO_NAME)["items"]) == 3
            # The demo's Exec webhook: its printed curl signs an event that makes a tenant.
            (curl,) = [line.strip() for line in out.getvalue().splitlines() if "openssl" in line]
            sent = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
            answer = json.loads(sent.stdout)
            assert answer["url"].startswith(f"http://{answer['tenant']}.localhost:"), sent.stdout
            with Client() as client:
                assert client.container(answer["tenant"])["metadata"]["customer"] == "cus_demo"
                client.delete(answer["tenant"])
        finally:
            assert down(config.state_dir)
        with pytest.raises(HostError), Client() as client:
            client.whoami()  # the API went with `hoody down`
        # The tenants did not: they are the node's, kept by the next `hoody up`.
        wait_http_ok(f"http://{tenants[0]['address']}/")
        # `hoody down --purge --yes` removes what `hoody up` made: the node with its
        # tenants, and the control plane's state. Nothing of the node is left on the host
        # (its tenants' addresses are not probed: without the node's route, traffic to
        # them would leave this machine).
        argv = ["down", "--purge", "--yes", "--json", "--state-dir", str(config.state_dir)]
        purged = CliRunner().invoke(app, argv)
        assert purged.exit_code == 0, purged.output
        assert json.loads(purged.output) == {"stopped": False, "tenants_removed": 3}
        assert not config.state_dir.exists()
        folder = config.state_dir.parent  # the scratch folder: scratch_config removes it
        assert [t for t in node_traces(config.name, folder) if t != f"folder {folder}"] == []
