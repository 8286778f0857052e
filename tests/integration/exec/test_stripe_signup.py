"""The signup pipeline end to end, as a customer's payment makes it happen.

A real control plane (SQLite) with the scratch node joined, the router, and the
shipped example examples/stripe-signup/signup.ts deployed as an Exec script. Events
are Stripe-format, signed here and cross-checked with the `stripe` library's own
verifier; the script must agree with it on every one.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import ScratchNode
from hoody.control.client import Client
from hoody.errors import NotFound
from tests.integration.stack import product_stack

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "stripe-signup" / "signup.ts"
SECRET = "whsec_" + secrets.token_hex(16)


@dataclass
class Signup:
    api: str
    client: Client
    project: int
    router_port: int
    address: Callable[[str], str]  # a tenant's ip:port on its node, as the admin sees it

    @property
    def url(self) -> str:
        return f"{self.api}/exec/{self.project}/signup"


@pytest.fixture(scope="module")
def signup(scratch: ScratchNode) -> Iterator[Signup]:
    with product_stack(scratch, "signup") as s:
        s.client.deploy_script(s.project, "signup", EXAMPLE.read_text())
        s.client.set_secret(s.project, "STRIPE_WEBHOOK_SECRET", SECRET)
        yield Signup(s.api, s.client, s.project, s.router_port, s.address)


def event(kind: str, customer: str, event_id: str | None = None) -> bytes:
    obj: dict[str, Any] = {"id": "cs_test_" + secrets.token_hex(6), "customer": customer}
    if kind == "customer.subscription.deleted":
        obj = {"id": "sub_" + secrets.token_hex(6), "object": "subscription", "customer": customer}
    body = {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }
    return json.dumps(body, indent=2).encode()  # Stripe's bodies are pretty-printed


def sign(payload: bytes, at: int | None = None, secret: str = SECRET, rotate: bool = True) -> str:
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    # During a secret rotation Stripe sends one v1 per secret; ours may be any of them.
    old = hmac.new(b"whsec_old", f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={old},v1={mac}" if rotate else f"t={t},v1={mac}"


def stripe_accepts(payload: bytes, header: str | None) -> bool:
    try:
        stripe.WebhookSignature.verify_header(payload.decode(), header or "", SECRET, 300)
    except stripe.SignatureVerificationError:
        return False
    return True


def deliver(s: Signup, payload: bytes, header: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["stripe-signature"] = header
    return httpx.post(s.url, content=payload, headers=headers, timeout=120)


def open_claim(s: Signup, url: str, cid: str) -> httpx.Response:
    link = urllib.parse.urlsplit(url)
    assert link.hostname == f"{cid}.localhost" and link.port == s.router_port
    router = f"http://127.0.0.1:{s.router_port}"
    host = {"Host": f"{cid}.localhost:{s.router_port}"}
    deadline = time.monotonic() + 10
    while httpx.get(f"{router}/", headers=host).status_code == 404:  # route not polled yet
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.get(f"{router}{link.path}?{link.query}", headers=host)
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"].split(";")[0]
    return httpx.get(f"{router}/", headers={**host, "Cookie": cookie})


def test_a_paid_checkout_makes_exactly_one_tenant_and_cancelling_removes_it(
    signup: Signup,
) -> None:
    customer = "cus_" + secrets.token_hex(6)
    payload = event("checkout.session.completed", customer)
    header = sign(payload)
    assert stripe_accepts(payload, header), "Stripe's own verifier agrees with our signing"

    # Stripe retries: three deliveries at once, two more later.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = list(pool.map(lambda _: deliver(signup, payload, header), range(3)))
    later = [deliver(signup, payload, header) for _ in range(2)]
    for r in first + later:
        assert r.status_code == 200, r.text
    answers = [r.json() for r in first + later]
    assert {a["tenant"] for a in answers} == {answers[0]["tenant"]}, "one tenant for one event"
    cid = answers[0]["tenant"]
    mine = signup.client.containers(metadata={"customer": customer})["items"]
    assert [c["id"] for c in mine] == [cid]
    assert mine[0]["metadata"]["stripe_event"] == json.loads(payload)["id"]

    # The customer follows the claim URL through the router and sees their app.
    address = signup.address(cid)
    wait_http_ok(f"http://{address}/healthz")
    page = open_claim(signup, answers[-1]["url"], cid)
    assert page.status_code == 200 and cid in page.text, page.text

    # Cancelling the subscription removes the tenant and everything it had.
    gone = event("customer.subscription.deleted", customer)
    r = deliver(signup, gone, sign(gone))
    assert r.status_code == 200 and r.json()["deleted"] == [cid], r.text
    assert signup.client.containers(metadata={"customer": customer})["items"] == []
    with pytest.raises(NotFound, match="deleted"):
        signup.client.container(cid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{address}/healthz", timeout=2)

    runs = signup.client.script_logs(signup.project, "signup", limit=10)
    assert runs[0]["status"] == 200 and any(cid in line for run in runs for line in run["console"])


def test_bad_missing_or_stale_signatures_get_400_and_make_nothing(signup: Signup) -> None:
    customer = "cus_" + secrets.token_hex(6)
    payload = event("checkout.session.completed", customer)
    stale_at = int(time.time()) - 400
    tampered = payload.replace(customer.encode(), b"cus_attacker")
    cases = {
        "wrong secret": (payload, sign(payload, secret="whsec_wrong", rotate=False)),
        "missing": (payload, None),
        "no v1": (payload, f"t={int(time.time())}"),
        "stale": (payload, sign(payload, at=stale_at)),
        "tampered body": (tampered, sign(payload)),
        "garbage": (payload, "nonsense"),
    }
    for what, (body, header) in cases.items():
        assert not stripe_accepts(body, header), f"stripe accepts {what}?"
        r = deliver(signup, body, header)
        assert r.status_code == 400, (what, r.text)
    for who in (customer, "cus_attacker"):
        assert signup.client.containers(metadata={"customer": who})["items"] == []
