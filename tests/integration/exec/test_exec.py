"""Exec on real Deno workers: scripts as URLs, limits, isolation, env, logs."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import httpx

from hoody.exec.sandbox import EXEC_ID_BASE
from tests.integration.exec.conftest import ExecStack

HELLO = """
export default {
  async fetch(
    request: Request,
    env: Record<string, string>,
    ctx: { waitUntil(p: Promise<unknown>): void },
  ) {
    const url = new URL(request.url);
    console.log("hello", request.method, url.pathname, url.search);
    ctx.waitUntil(new Promise((r) => setTimeout(r, 20)).then(() => console.log("after")));
    const body = request.method === "POST" ? await request.text() : "";
    const headers = { "x-script": env.HOODY_SCRIPT };
    return new Response(`hi ${url.pathname} ${body}`, { headers });
  },
};
"""

MISBEHAVE = """
export default {
  async fetch(request: Request) {
    const what = new URL(request.url).searchParams.get("do");
    if (what === "loop") { for (;;) {} }
    if (what === "spin") { const end = Date.now() + 60_000; while (Date.now() < end) {} }
    const keep: unknown[] = [];
    if (what === "heap") for (;;) keep.push({ x: Math.random(), y: [1, 2, 3] });
    if (what === "buffers") for (;;) keep.push(new Uint8Array(16 << 20).fill(1));
    if (what === "throw") throw new TypeError("boom");
    if (what === "crash") Deno.exit(7);
    if (what === "sleep") await new Promise((r) => setTimeout(r, 300));
    return new Response("fine");
  },
};
"""


def test_a_script_answers_at_its_url_with_subpath_method_and_body(exec_stack: ExecStack) -> None:
    info = exec_stack.deploy("hello", HELLO)
    assert info["version"] >= 1 and info["url"] == f"/exec/{exec_stack.project}/hello"
    r = exec_stack.call("hello", "/a/b?x=1")
    assert r.status_code == 200 and r.text == f"hi /exec/{exec_stack.project}/hello/a/b "
    assert r.headers["x-script"] == "hello"
    r = exec_stack.call("hello", method="POST", content=b"payload")
    assert r.status_code == 200 and r.text.endswith(" payload")
    time.sleep(0.5)
    (last, before, *_) = exec_stack.logs("hello")
    assert last["method"] == "POST" and last["status"] == 200 and last["outcome"] == "ok"
    assert before["console"] == [f"hello GET /exec/{exec_stack.project}/hello/a/b ?x=1", "after"]
    assert last["peak_memory_bytes"] > 1 << 20 and last["cpu_ms"] >= 0
    # Without ctx.waitUntil the console output rides on the answer: logged all the same.
    exec_stack.deploy(
        "quiet", 'export default { fetch() { console.log("q", 1); return new Response("") } };'
    )
    for _ in range(3):
        assert exec_stack.call("quiet").status_code == 200
    time.sleep(0.5)
    assert [r["console"] for r in exec_stack.logs("quiet")] == [["q 1"]] * 3
    # Deploying the same source again makes no new version; a change does.
    assert exec_stack.deploy("hello", HELLO)["changed"] is False
    assert exec_stack.deploy("hello", HELLO + "\n// v2\n")["version"] == info["version"] + 1


def test_unknown_scripts_and_syntax_errors_are_clear(exec_stack: ExecStack) -> None:
    assert exec_stack.call("nothing-here").status_code == 404
    exec_stack.deploy("broken", "export default {\n  fetch() {\n    let x = = 1;\n  }\n}\n")
    r = exec_stack.call("broken")
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert f"scripts/{exec_stack.project}/broken.ts:3:13" in message, message
    exec_stack.deploy("nohandler", "export const x = 1;\n")
    r = exec_stack.call("nohandler")
    assert r.status_code == 500 and "export default" in r.json()["error"]["message"]


def _set_limits(stack: ExecStack, **limits: int) -> None:
    r = httpx.put(
        f"{stack.api}/api/v1/projects/{stack.project}/exec",
        json={"limits": limits},
        headers={"Authorization": f"Bearer {stack.token}"},
    )
    assert r.status_code == 200, r.text


def test_each_misbehaviour_ends_that_invocation_only(exec_stack: ExecStack) -> None:
    _set_limits(exec_stack, wall_ms=20000, cpu_ms=60000, heap_mib=64, memory_mib=192, workers=8)
    exec_stack.deploy("misbehave", MISBEHAVE)
    exec_stack.deploy("neighbour", HELLO)
    assert exec_stack.call("misbehave").text == "fine"
    expected = {
        "loop": (504, "timeout"),  # on a loaded machine the wall clock comes first
        "heap": (503, "heap"),
        "buffers": (503, "memory"),
        "throw": (500, "threw"),
        "crash": (502, "crashed"),
    }
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        bad = {
            what: pool.submit(exec_stack.call, "misbehave", params={"do": what})
            for what in expected
        }
        # Meanwhile the same script and another one keep answering.
        good = [pool.submit(exec_stack.call, "misbehave", params={"do": "sleep"}) for _ in range(3)]
        good += [pool.submit(exec_stack.call, "neighbour") for _ in range(5)]
        for f in good:
            r = f.result()
            assert r.status_code == 200, r.text
        for what, (status, outcome) in expected.items():
            r = bad[what].result()
            assert r.status_code == status, (what, r.text)
            assert r.json()["error"]["code"] == f"script_{outcome}", (what, r.text)
    assert exec_stack.call("misbehave").text == "fine", "a new worker took over"
    time.sleep(0.5)
    outcomes = {run["outcome"] for run in exec_stack.logs("misbehave")}
    assert set(o for _, o in expected.values()) <= outcomes


def test_the_cpu_limit_ends_a_busy_loop_before_the_wall_clock(exec_stack: ExecStack) -> None:
    _set_limits(exec_stack, wall_ms=60000, cpu_ms=500)
    exec_stack.deploy("spin", MISBEHAVE)
    r = exec_stack.call("spin", params={"do": "loop"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "script_cpu", r.text
    assert exec_stack.call("spin").text == "fine"
    _set_limits(exec_stack, wall_ms=30000, cpu_ms=10000)


def test_the_wall_clock_kills_a_handler_that_waits_forever(exec_stack: ExecStack) -> None:
    _set_limits(exec_stack, wall_ms=1000, cpu_ms=1000)
    exec_stack.deploy("hang", "export default { fetch: () => new Promise(() => {}) };\n")
    start = time.monotonic()
    r = exec_stack.call("hang")
    assert r.status_code == 504 and r.json()["error"]["code"] == "script_timeout"
    assert time.monotonic() - start < 5
    _set_limits(exec_stack, wall_ms=30000, cpu_ms=10000)


def test_bodies_over_the_limits_are_refused(exec_stack: ExecStack) -> None:
    _set_limits(exec_stack, request_bytes=1000, response_bytes=1000)
    exec_stack.deploy("big", "export default { fetch: () => new Response('x'.repeat(5000)) };\n")
    assert exec_stack.call("big", method="POST", content=b"x" * 2000).status_code == 413
    r = exec_stack.call("big")
    assert r.status_code == 502 and "response_bytes" in r.json()["error"]["message"]
    _set_limits(exec_stack, request_bytes=1 << 20, response_bytes=4 << 20)


SNOOP = """
export default {
  async fetch(request: Request, env: Record<string, string>) {
    const tries: Record<string, string> = {};
    const attempt = async (name: string, fn: () => unknown) => {
      try { await fn(); tries[name] = "allowed"; } catch (e) { tries[name] = String(e); }
    };
    const target = new URL(request.url).searchParams.get("read") ?? "/etc/hostname";
    await attempt("read", () => Deno.readTextFile(target));
    await attempt("env", () => Deno.env.get("PATH"));
    await attempt("run", () => new Deno.Command("/bin/true").output());
    await attempt("write", () => Deno.writeTextFile("/tmp/hoody-exec-snoop", "x"));
    await attempt("net", () => fetch("http://127.0.0.1:8765/"));
    await attempt("import", () => import("https://deno.land/std/version.ts"));
    await attempt("sys", () => Deno.hostname());
    return Response.json({ tries, keys: Object.keys(env).sort() });
  },
};
"""


def test_a_script_can_reach_nothing_but_the_hoody_api(exec_stack: ExecStack) -> None:
    exec_stack.deploy("snoop", SNOOP)
    r = exec_stack.call("snoop")
    assert r.status_code == 200, r.text
    tries = r.json()["tries"]
    # Each is refused by Deno's permissions (fetch wraps the refusal in a TypeError).
    for what in ("read", "env", "run", "write", "net", "sys"):
        assert "NotCapable" in tries[what] or "Requires" in tries[what], (what, tries)
    assert tries["import"] != "allowed", tries
    assert set(r.json()["keys"]) >= {"HOODY_API", "HOODY_TOKEN", "HOODY_PROJECT", "HOODY_SCRIPT"}
    assert not Path("/tmp/hoody-exec-snoop").exists()


def test_env_token_is_scoped_to_the_project_and_secrets_arrive(exec_stack: ExecStack) -> None:
    headers = {"Authorization": f"Bearer {exec_stack.token}"}
    r = httpx.put(
        f"{exec_stack.api}/api/v1/projects/{exec_stack.project}/secrets/GREETING",
        json={"value": "s3cret-value"},
        headers=headers,
    )
    assert r.status_code == 200 and "s3cret" not in r.text
    listed = httpx.get(
        f"{exec_stack.api}/api/v1/projects/{exec_stack.project}/secrets", headers=headers
    )
    assert [s["name"] for s in listed.json()] == ["GREETING"] and "s3cret" not in listed.text
    exec_stack.deploy(
        "whoami",
        """
export default {
  async fetch(request: Request, env: Record<string, string>) {
    const h = { authorization: `Bearer ${env.HOODY_TOKEN}` };
    const me = await (await fetch(`${env.HOODY_API}/api/v1/whoami`, { headers: h })).json();
    const admin = await fetch(`${env.HOODY_API}/api/v1/projects`, { headers: h });
    const greeting = env.GREETING;
    return Response.json({ me, admin: admin.status, greeting, token: env.HOODY_TOKEN });
  },
};
""",
    )
    r = exec_stack.call("whoami")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["me"] == {"scope": "project", "project_id": exec_stack.project, "node": None}
    assert data["admin"] == 403 and data["greeting"] == "s3cret-value"
    # The token is short-lived and signed: tampering is refused.
    forged = data["token"][:-2] + ("AA" if not data["token"].endswith("AA") else "BB")
    r = httpx.get(f"{exec_stack.api}/api/v1/whoami", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    # At rest the secret is ciphertext, and the key file is the owner's only.
    key = exec_stack.fleet.settings.state_dir / "exec.key"  # type: ignore[operator]
    assert os.stat(key).st_mode & 0o777 == 0o600
    db = (exec_stack.fleet.settings.state_dir / "control.db").read_bytes()  # type: ignore[operator]
    assert b"s3cret-value" not in db


def test_projects_never_share_a_worker_or_files(exec_stack: ExecStack) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {exec_stack.admin}"}) as admin:
        other = admin.post(f"{exec_stack.api}/api/v1/projects", json={"name": "exec-other"}).json()
        src = "export default { fetch: () => new Response(String(Deno.pid)) };\n"
        for project in (exec_stack.project, other["id"]):
            r = admin.put(f"{exec_stack.api}/api/v1/scripts/{project}/pid", json={"source": src})
            assert r.status_code == 200
        mine = httpx.get(f"{exec_stack.api}/exec/{exec_stack.project}/pid", timeout=30)
        theirs = httpx.get(f"{exec_stack.api}/exec/{other['id']}/pid", timeout=30)
    assert mine.status_code == 200 and theirs.status_code == 200, (mine.text, theirs.text)
    assert mine.text != theirs.text
    for project, pid in ((exec_stack.project, mine.text), (other["id"], theirs.text)):
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        uid = EXEC_ID_BASE + project
        assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split()[0] == str(uid)
        assert status["NoNewPrivs"].strip() == "1" and status["Groups"].strip() == ""
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        assert "hoody-exec-" in cgroups, cgroups
    # A project token cannot touch another project's scripts.
    r = httpx.get(
        f"{exec_stack.api}/api/v1/scripts/{other['id']}",
        headers={"Authorization": f"Bearer {exec_stack.token}"},
    )
    assert r.status_code == 403


def test_allowed_hosts_open_exactly_those_destinations(exec_stack: ExecStack) -> None:
    import http.server
    import threading

    from hoody.bench.scratch import free_port

    port = free_port()

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from the allowed host")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    headers = {"Authorization": f"Bearer {exec_stack.token}"}
    settings = f"{exec_stack.api}/api/v1/projects/{exec_stack.project}/exec"
    try:
        exec_stack.deploy(
            "outbound",
            "export default { async fetch() {\n"
            f"  const url = 'http://127.0.0.1:{port}/';\n"
            "  try { return new Response(await (await fetch(url)).text()); }\n"
            "  catch (e) { return new Response(String(e), { status: 502 }); }\n"
            "} };\n",
        )
        r = exec_stack.call("outbound")
        assert r.status_code == 502 and "Requires net access" in r.text, r.text
        ok = httpx.put(settings, json={"allowed_hosts": [f"127.0.0.1:{port}"]}, headers=headers)
        assert ok.status_code == 200, ok.text
        r = exec_stack.call("outbound")
        assert (r.status_code, r.text) == (200, "from the allowed host")
    finally:
        httpx.put(settings, json={"allowed_hosts": []}, headers=headers)
        server.shutdown()
