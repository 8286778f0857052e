"""`hoody bench exec`: Exec latency, warm, cold and the whole signup.

    warm    an invocation of a deployed script on its warm worker, through the
            control plane's /exec URL (keep-alive client; hello-world handler)
    cold    the same when its worker must be started: each sample deploys a new
            version first (not timed), so the request needs a new Deno process. With
            spares on (the default), that is the project's spare, started and warmed
            up after the previous cold start, which loads the new version; the
            samples are 0.3 s apart so the spare is ready, as it is for webhooks
            that are not back to back
    cold_spawn  the same with spares off: the request starts the Deno process
    signup  a signed Stripe checkout event in → the shipped example copies a tenant,
            authorizes it and answers with its claim URL → the claim URL, followed
            through the router, answers 200 with the tenant's page

Everything runs on loopback against a scratch node, control plane and router made
for the run and removed afterwards. `peer_whoami` is the same control plane answering
a trivial API call, interleaved with the warm samples: on a shared, loaded machine the
ratio warm / peer says more than either number.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from hoody.bench.provision import percentile
from hoody.control.api import create_app
from hoody.control.client import Client
from hoody.control.db import Store
from hoody.control.service import Fleet, Settings

__all__ = ["bench_exec"]

HELLO = 'export default { fetch: () => new Response("hello") };\n'
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "stripe-signup" / "signup.ts"


@contextmanager
def _control_plane(
    router_url: str | None = None, spares: bool = True
) -> Iterator[tuple[str, str, Fleet]]:
    from hoody.bench.scratch import free_port, serve_in_thread

    tmp = Path(tempfile.mkdtemp(prefix="hoody-bench-exec-"))
    store = Store(f"sqlite:///{tmp / 'control.db'}")
    settings = Settings(state_dir=tmp, router_url=router_url, exec_spares=spares)
    fleet = Fleet(store, settings=settings)
    admin = fleet.bootstrap_admin()
    assert admin
    try:
        with serve_in_thread(create_app(fleet), free_port()) as api:
            yield api, admin, fleet
    finally:
        fleet.close()
        store.close()


def _stats(name: str, samples: list[float]) -> dict[str, float]:
    return {
        f"{name}_p50_ms": round(percentile(samples, 0.5), 2),
        f"{name}_p99_ms": round(percentile(samples, 0.99), 2),
    }


def _warm_and_cold(warm: int, cold: int) -> dict[str, Any]:
    with _control_plane() as (api, admin, _), Client(api, admin) as client:
        project = int(client.ensure_project("bench-exec")["id"])
        client.deploy_script(project, "hello", HELLO)
        url = f"{api}/exec/{project}/hello"
        peer = f"{api}/api/v1/whoami"
        auth = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(timeout=60) as http, tempfile.TemporaryDirectory() as tmp:
            assert http.get(url).text == "hello"
            warm_ms, peer_ms = [], []
            for _ in range(warm):  # interleaved, so both see the same load
                t = time.perf_counter()
                r = http.get(url)
                warm_ms.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
                t = time.perf_counter()
                http.get(peer, headers=auth).raise_for_status()
                peer_ms.append((time.perf_counter() - t) * 1000)
            cold_ms, plain_ms = _cold(client, http, project, url, cold, Path(tmp))
            spare = _spare_memory(project)
    with _control_plane(spares=False) as (api, admin, _), Client(api, admin) as client:
        project = int(client.ensure_project("bench-exec")["id"])
        client.deploy_script(project, "hello", HELLO)
        url = f"{api}/exec/{project}/hello"
        with httpx.Client(timeout=60) as http, tempfile.TemporaryDirectory() as tmp:
            assert http.get(url).text == "hello"
            spawn_ms, spawn_plain_ms = _cold(client, http, project, url, cold, Path(tmp))
    return {
        **_stats("warm", warm_ms),
        **_stats("cold", cold_ms),
        **_stats("cold_spawn", spawn_ms),
        # The same control plane answering GET /api/v1/whoami (one indexed read), in
        # the same run: what any request costs on this machine at this moment.
        **_stats("peer_whoami", peer_ms),
        # `deno run` of a one-line script to its exit, no sandbox: the floor of a
        # process start; taken between the cold samples of both kinds.
        **_stats("peer_deno_run", plain_ms + spawn_plain_ms),
        "warm_n": warm,
        "cold_n": cold,
        **spare,
    }


def _cold(
    client: Client, http: httpx.Client, project: int, url: str, count: int, tmp: Path
) -> tuple[list[float], list[float]]:
    cold_ms, plain_ms = [], []
    for i in range(count):
        client.deploy_script(project, "hello", HELLO + f"// {i}\n")
        t = time.perf_counter()
        r = http.get(url)
        cold_ms.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
        # Whatever the cold start left to do (a new spare) is done before the peer
        # runs and before the next sample.
        time.sleep(0.3)
        plain_ms.append(_plain_deno_ms(tmp))
    return cold_ms, plain_ms


def _spare_memory(project: int) -> dict[str, float]:
    """What the project's idle spare holds: its resident and private memory (MiB)."""
    from hoody.exec.sandbox import project_ids

    uid = project_ids(project)[0]
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if proc.stat().st_uid != uid or argv[-2:] != [b"spare", b""]:
                continue
            if any((proc / "cwd").iterdir()):
                continue  # a spare that took a script: a worker now
            fields = {
                k: int(v.split()[0])
                for k, v in (
                    line.split(":", 1)
                    for line in (proc / "smaps_rollup").read_text().splitlines()[1:]
                )
            }
        except (OSError, ValueError):
            continue
        private = fields["Private_Clean"] + fields["Private_Dirty"]
        return {
            "spare_rss_mib": round(fields["Rss"] / 1024, 1),
            "spare_private_mib": round(private / 1024, 1),
        }
    return {}


def _plain_deno_ms(tmp: Path) -> float:
    """`deno run` of a one-line script, to its exit (DENO_DIR kept between samples)."""
    from hoody.exec.sandbox import deno_path

    script = tmp / "one.js"
    script.write_text("console.log(1)\n")
    t = time.perf_counter()
    subprocess.run(
        [str(deno_path()), "run", "--no-config", str(script)],
        check=True,
        capture_output=True,
        env={"DENO_DIR": f"{tmp}/deno", "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"},
    )
    return (time.perf_counter() - t) * 1000


def _signed(secret: str, customer: str) -> tuple[bytes, str]:
    body = {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": {"id": "cs_" + secrets.token_hex(6), "customer": customer}},
    }
    payload = json.dumps(body).encode()
    t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, f"t={t},v1={mac}"


def _signup(count: int) -> dict[str, Any]:
    from hoody import router as tenant_router
    from hoody.agent.node_info import headroom
    from hoody.agent.templates import DEMO_NAME
    from hoody.bench.scratch import free_port, scratch_node
    from hoody.control.heartbeat import start_heartbeat

    secret = "whsec_" + secrets.token_hex(16)
    router_port = free_port()
    samples = []
    with (
        scratch_node("bx") as scratch,
        _control_plane(f"http://localhost:{router_port}") as (api, admin, _),
    ):
        scratch.demo_template()
        node = scratch.node
        beats = start_heartbeat(
            api,
            admin,
            node.config.name,
            scratch.url,
            scratch.token,
            lambda: headroom(node),
            get_templates=lambda: [t.to_json() for t in node.store.templates()],
        )
        client = Client(api, admin)
        stop_router = tenant_router.start_in_thread(
            api, client.create_token("router")["token"], f"127.0.0.1:{router_port}", "localhost"
        )
        try:
            project = int(client.ensure_project("bench-signup")["id"])
            client.deploy_script(project, "signup", EXAMPLE.read_text())
            client.set_secret(project, "STRIPE_WEBHOOK_SECRET", secret)
            deadline = time.monotonic() + 60
            while not any(t["name"] == DEMO_NAME for t in client.templates()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the scratch node's template never reached the API")
                time.sleep(0.1)
            router = f"http://127.0.0.1:{router_port}"
            with httpx.Client(timeout=120) as http:
                for i in range(count + 1):  # the first one warms the worker: not counted
                    payload, header = _signed(secret, f"cus_bench_{i}")
                    t = time.perf_counter()
                    r = http.post(
                        f"{api}/exec/{project}/signup",
                        content=payload,
                        headers={"stripe-signature": header},
                    )
                    if r.status_code != 200:
                        raise RuntimeError(f"signup answered {r.status_code}: {r.text[:300]}")
                    cid, link = r.json()["tenant"], urllib.parse.urlsplit(r.json()["url"])
                    host = {"Host": f"{cid}.localhost:{router_port}"}
                    claim = http.get(f"{router}{link.path}?{link.query}", headers=host)
                    if claim.status_code != 303:
                        raise RuntimeError(f"claim answered {claim.status_code}")
                    cookie = {"Cookie": claim.headers["set-cookie"].split(";")[0]}
                    while http.get(f"{router}/", headers={**host, **cookie}).status_code != 200:
                        if time.perf_counter() - t > 60:
                            raise RuntimeError(f"tenant {cid} did not answer within 60 s")
                        time.sleep(0.005)
                    if i:
                        samples.append((time.perf_counter() - t) * 1000)
        finally:
            for c in client.iter_containers(project=None):
                client.delete(c["id"])
            client.close()
            stop_router()
            beats.set()
    return {**_stats("signup", samples), "signup_n": count}


def bench_exec(warm: int = 300, cold: int = 30, signups: int = 10) -> dict[str, Any]:
    """p50/p99 in ms of warm and cold invocations and of a whole signup."""
    result: dict[str, Any] = {"targets_ms": {"warm_p50": 15, "cold_p50": 80, "signup_p50": 500}}
    result.update(_warm_and_cold(warm, cold))
    if signups:
        result.update(_signup(signups))
    return result
