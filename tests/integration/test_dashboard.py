"""The dashboard in headless Chromium (Debian's, driven by Playwright) against the real
control plane and real tenants on the scratch node: log in, see the counts, watch a
copy made through the API move the counter without a reload, see the plots drawn,
delete a tenant from the table; wrong and project tokens are refused."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hoody.agent.node_info import headroom, tenant_usage
from hoody.agent.spec import TenantSpec
from hoody.agent.templates import DEMO_NAME
from hoody.bench.scratch import ScratchNode, free_port, serve_in_thread
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Store
from hoody.control.heartbeat import start_heartbeat
from hoody.control.service import Fleet

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu"]


@dataclass
class Stack:
    url: str
    admin: str
    project_token: str
    client: Client  # the project's, as the SaaS app has


def until(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(scratch: ScratchNode) -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="hoody-dashboard-"))
    store = Store(f"sqlite:///{tmp / 'control.db'}")
    fleet = Fleet(store)
    admin = fleet.bootstrap_admin()
    assert admin
    node = scratch.node
    with serve_in_thread(create_app(fleet, history_every=1), free_port()) as api:
        beats = start_heartbeat(
            api,
            admin,
            node.config.name,
            scratch.url,
            scratch.token,
            lambda: headroom(node),
            get_templates=lambda: [t.to_json() for t in node.store.templates()],
            get_usage=lambda: tenant_usage(node),
        )
        with Client(api, admin) as root:
            project = int(root.ensure_project("dashboard-test")["id"])
            token = root.create_token("project", project_id=project)["token"]
            until(lambda: any(n["name"] == node.config.name for n in root.nodes()), 30)
            root.set_node(node.config.name, monthly_cost=29, currency="USD")
        client = Client(api, token)
        until(lambda: any(t["name"] == DEMO_NAME for t in client.templates()), 30)
        try:
            yield Stack(api, admin, token, client)
        finally:
            for c in client.containers()["items"]:
                client.delete(c["id"])
            client.close()
            beats.set()
    fleet.close()
    store.close()


def test_the_dashboard_in_a_real_browser(stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    made = [
        stack.client.copy(DEMO_NAME, TenantSpec(metadata={"customer": f"cus_{i}"}))
        for i in range(2)
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # The page's first data rides in a JSON block: the CSP must refuse nothing.
            refused: list[str] = []
            page.on(
                "console",
                lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
            )
            # Every request stays on the control plane: nothing from a CDN.
            elsewhere: list[str] = []
            page.on(
                "request",
                lambda r: (
                    None if r.url.startswith((stack.url, "data:")) else elsewhere.append(r.url)
                ),
            )
            page.goto(stack.url + "/")
            page.fill("#token", stack.admin + "x")
            page.click("button[type=submit]")
            assert "unknown or revoked" in (page.text_content("#login-error") or "")
            page.fill("#token", stack.project_token)
            page.click("button[type=submit]")
            assert "needs an admin token" in (page.text_content("#login-error") or "")
            assert not [c for c in page.context.cookies() if c["name"] == "hoody_session"]

            page.fill("#token", stack.admin)
            page.click("button[type=submit]")
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=15000)
            (cookie,) = [c for c in page.context.cookies() if c["name"] == "hoody_session"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.text_content("#h-tenants") == "2"
            assert page.text_content("#h-nodes") == "1"
            assert "$29" in (page.text_content("#h-bill") or "")
            assert "$14.50" in (page.text_content("#h-cpt") or "")
            for c in made:
                assert page.locator(f"tr[data-id='{c['id']}']").count() == 1
            page.wait_for_selector("#live.on", timeout=5000)

            # Tenants made through the API: the counter moves without a reload, within a
            # second of each copy returning. The median of three: this harness runs the
            # control plane, the agent making the tenant and the browser driver in one
            # process on a shared machine, so one slow round says little.
            page.evaluate("window.__same_page = true")
            lags = []
            for i in range(3):
                new = stack.client.copy(
                    DEMO_NAME, TenantSpec(metadata={"customer": f"cus_live{i}"})
                )
                made.append(new)
                start = time.monotonic()
                # (selectors, not wait_for_function: the page's CSP forbids eval, rightly)
                page.wait_for_selector(
                    f"#h-tenants[data-count='{3 + i}']", state="attached", timeout=5000
                )
                lags.append(time.monotonic() - start)
                page.wait_for_selector(f"tr[data-id='{new['id']}']", timeout=5000)
            assert sorted(lags)[1] < 1.0, f"the counter took over a second: {lags}"
            assert page.evaluate("window.__same_page") is True, "the page was reloaded"

            # The plots are drawn by uPlot on canvases, with something on them.
            for plot in ("#plot-cost", "#plot-tenants"):
                page.wait_for_selector(f"{plot} canvas", timeout=5000)
                drawn = page.evaluate(
                    """(sel) => { const c = document.querySelector(sel + ' canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
                    return [c.width, n]; }""",
                    plot,
                )
                assert drawn[0] > 200 and drawn[1] > 500, (plot, drawn)

            # Delete from the table, with confirmation.
            victim = made.pop(0)
            page.click(f"tr[data-id='{victim['id']}'] button[data-act=delete]")
            assert victim["id"] in (page.text_content("#confirm-text") or "")
            page.click("#confirm-ok")
            page.wait_for_selector(f"tr[data-id='{victim['id']}']", state="detached", timeout=10000)
            page.wait_for_selector("#h-tenants[data-count='4']", state="attached", timeout=5000)
            ids = {c["id"] for c in stack.client.containers()["items"]}
            assert victim["id"] not in ids and {c["id"] for c in made} <= ids
            assert errors == [] and elsewhere == [] and refused == []
        finally:
            browser.close()
    # Without the session cookie nothing is shown, whatever token is sent.
    for token in (stack.project_token, stack.admin):
        r = httpx.get(
            f"{stack.url}/dashboard/api/summary",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 401
