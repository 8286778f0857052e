"""The router in front of real tenants, driven by the real control plane.

A control plane (SQLite) with the scratch node joined (heartbeats), the router polling
it, demo-app tenants made through the API; then what a customer does: follow the app's
claim link, get a session, see the visit counter — over HTTP and in headless Chromium.
Only loopback and the scratch node's tenants are contacted.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoody.agent.spec import TenantSpec
from hoody.agent.templates import DEMO_NAME
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode
from hoody.control.client import Client
from tests.integration.stack import product_stack

CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Stack:
    api: str
    admin: str
    client: Client  # a project token's client, as the SaaS app has
    router_port: int
    address: Callable[[str], str]  # a tenant's ip:port on its node, as the admin sees it

    def get(self, cid: str, path: str = "/", **kw: Any) -> httpx.Response:
        """A request to the router as a browser at http://<cid>.localhost:<port> sends it."""
        headers = {"Host": f"{cid}.localhost:{self.router_port}", **kw.pop("headers", {})}
        url = f"http://127.0.0.1:{self.router_port}{path}"
        return httpx.get(url, headers=headers, timeout=10, **kw)

    def session(self, cid: str) -> str:
        """Follow a fresh claim link; the session cookie the router set."""
        link = urllib.parse.urlsplit(self.client.authorize(cid)["url"])
        r = self.get(cid, f"{link.path}?{link.query}")
        assert r.status_code == 303, r.text
        return r.headers["set-cookie"].split(";")[0]


def until(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `check` holds; fails after `timeout`. The router reloads its
    table every 0.5 s; the rest leaves room for a loaded machine (how fast routes
    follow is a benchmark's matter, not a test's)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def stack(scratch: ScratchNode) -> Iterator[Stack]:
    with product_stack(scratch, "router") as s:
        yield Stack(s.api, s.admin, s.client, s.router_port, s.address)


@pytest.fixture
def tenant(stack: Stack) -> Iterator[dict[str, Any]]:
    rec = stack.client.copy(DEMO_NAME)
    wait_http_ok(f"http://{stack.address(rec['id'])}/healthz")
    yield rec
    stack.client.delete(rec["id"])


def test_a_claim_link_lets_one_customer_in_once(stack: Stack, tenant: dict[str, Any]) -> None:
    cid = tenant["id"]
    assert tenant["url"] == f"http://{cid}.localhost:{stack.router_port}/"
    until(lambda: stack.get(cid).status_code == 401)  # the route appears within a second
    assert "link your app gives you" in stack.get(cid).text
    link = urllib.parse.urlsplit(stack.client.authorize(cid)["url"])
    r = stack.get(cid, f"{link.path}?{link.query}")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Domain" not in cookie
    session = cookie.split(";")[0]
    page = stack.get(cid, headers={"Cookie": session})
    assert page.status_code == 200 and cid in page.text
    again = stack.get(cid, f"{link.path}?{link.query}")
    assert again.status_code == 401 and "already used" in again.text


def test_a_session_is_for_one_tenant_and_revoke_ends_it(stack: Stack) -> None:
    a = stack.client.copy(DEMO_NAME)
    b = stack.client.copy(DEMO_NAME)
    try:
        for t in (a, b):
            wait_http_ok(f"http://{stack.address(t['id'])}/healthz")
        until(lambda: stack.get(b["id"]).status_code == 401)
        session_a = stack.session(a["id"])
        assert stack.get(a["id"], headers={"Cookie": session_a}).status_code == 200
        refused = stack.get(b["id"], headers={"Cookie": session_a})
        assert refused.status_code == 401 and f"belongs to container {a['id']}" in refused.text
        stack.client.revoke_claims(a["id"])
        until(lambda: stack.get(a["id"], headers={"Cookie": session_a}).status_code == 401)
        assert "revoked" in stack.get(a["id"], headers={"Cookie": session_a}).text
    finally:
        stack.client.delete(a["id"])
        stack.client.delete(b["id"])


def test_routes_follow_stop_start_and_delete(stack: Stack) -> None:
    rec = stack.client.copy(DEMO_NAME, TenantSpec(metadata={"public": True}))
    cid = rec["id"]
    wait_http_ok(f"http://{stack.address(rec['id'])}/healthz")
    until(lambda: stack.get(cid, "/healthz").status_code == 200)  # public: no session
    r = stack.get(cid, "/api/visits")
    assert r.json()["tenant"] == cid
    assert r.headers["x-hoody-tenant"] == cid
    stack.client.stop(cid)
    until(lambda: stack.get(cid).status_code == 503)
    assert "stopped" in stack.get(cid).text
    stack.client.start(cid)
    until(lambda: stack.get(cid, "/healthz").status_code == 200, timeout=5)
    stack.client.delete(cid)
    until(lambda: stack.get(cid).status_code == 404)
    assert stack.get("no-such-tenant").status_code == 404


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is installed by `make setup`")
def test_a_real_browser_follows_the_claim_link(stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    a = stack.client.copy(DEMO_NAME)
    b = stack.client.copy(DEMO_NAME)
    try:
        for t in (a, b):
            wait_http_ok(f"http://{stack.address(t['id'])}/healthz")
        until(lambda: stack.get(b["id"]).status_code == 401)
        link = stack.client.authorize(a["id"])["url"]
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.goto(link)
                assert page.url == a["url"], "redirected to the clean URL"
                assert page.text_content("#tenant") == a["id"]
                first = int(page.text_content("#visits") or 0)
                page.reload()
                assert int(page.text_content("#visits") or 0) == first + 1, "session kept"
                response = page.goto(b["url"])
                assert response is not None and response.status == 401
                assert "Sign in through the app" in page.content()
            finally:
                browser.close()
    finally:
        stack.client.delete(a["id"])
        stack.client.delete(b["id"])
