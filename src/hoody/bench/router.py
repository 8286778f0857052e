"""Router overhead: the same keep-alive load sent to one tenant directly, through the
hoody router and through nginx `proxy_pass`, in one run.

The tenant runs `upstream.py` (keep-alive, 3-byte answers) on a scratch node. The
router and nginx each run as one process (nginx: `worker_processes 1`, an upstream
keep-alive pool, like the router's), on loopback ports of their own. Load comes from
`wrk`: throughput at `connections` concurrent connections, latency at one connection
(added latency = router p50/p99 minus direct). Rounds alternate the three targets;
the report gives medians and every round.

wrk, the proxy and the tenant share this machine's CPUs, so requests per second
also say how much CPU the proxy leaves to the others. The CPU each proxy process
spent per request (user + system) is reported beside it: it does not depend on how
the scheduler shared the cores, nor on other load on the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hoody import proc
from hoody.agent.engine import TemplateSource
from hoody.agent.templates import demo_source
from hoody.bench.provision import wait_http_ok
from hoody.bench.scratch import free_port, scratch_node
from hoody.errors import HostError
from hoody.proc import require, run

__all__ = ["parse_wrk", "router_bench", "serve_router"]

UPSTREAM = Path(__file__).with_name("upstream.py")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, float]:
    """`rps`, `requests` (answered in the run), `p50_ms`, `p99_ms` from `wrk --latency`
    output; raises HostError when it has no request rate (wrk could not connect)."""
    found: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise HostError(f"wrk printed no Requests/sec line: {output[-300:]!r}")
    found["rps"] = float(rps.group(1))
    requests = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if requests:
        found["requests"] = int(requests.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if m:
            found[key] = round(float(m.group(1)) * _UNITS[m.group(2)], 3)
    return found


def _wrk(
    url: str, host: str | None, connections: int, seconds: float, pid: int | None = None
) -> dict[str, float]:
    """One wrk run; with `pid`, also the CPU µs that process tree spent per request."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    before = cpu_seconds(pid) if pid else 0.0
    found = parse_wrk(run([*argv, url], timeout=seconds + 30).stdout)
    if pid and found.get("requests"):
        spent = cpu_seconds(pid) - before
        found["cpu_us_per_request"] = round(spent * 1e6 / found["requests"], 2)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants, as far as they still run."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the name may hold spaces
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo.extend(int(child) for child in children.split())
    return total


def serve_router(port: int, cid: str, upstream_host: str, upstream_port: int) -> None:
    """The router process of the benchmark: one public route, on uvloop."""

    import uvloop

    from hoody.router.proxy import Router
    from hoody.router.table import Route, RouteTable

    async def refuse(cid: str, claim: str) -> tuple[int, dict[str, Any]]:
        return 401, {"error": {"message": "no claims in the benchmark"}}

    async def main() -> None:
        table = RouteTable(loaded=True)
        table.routes[cid] = Route(cid, upstream_host, upstream_port, "running", public=True)
        router = Router(table, "localhost", refuse)
        server = await router.start("127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


@contextlib.contextmanager
def _process(argv: list[str], url: str, host: str | None = None) -> Iterator[int]:
    """Run argv until it serves `url`; yield its pid; stop it on exit."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                header = ["-H", f"Host: {host}"] if host else []
                run(["curl", "-sf", "-o", "/dev/null", *header, url], timeout=5)
                break
            except HostError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise HostError(f"{argv[0]} did not start serving {url}") from None
                time.sleep(0.05)
        yield child.pid
    finally:
        proc.stop(child, 10)


def _nginx_conf(prefix: Path, port: int, upstream: str) -> Path:
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream tenant {{ server {upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://tenant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_buffering off;
    }}
  }}
}}
"""
    )
    return conf


def router_bench(connections: int = 32, seconds: float = 4.0, rounds: int = 3) -> dict[str, Any]:
    for program in ("wrk", "nginx", "curl"):
        require(program)
    with scratch_node("br", process=True) as scratch:

        def populate(target: Path) -> None:
            demo_source().populate(target)
            shutil.copy(UPSTREAM, target / "app" / "upstream.py")

        scratch.node.create_template(
            "rbench",
            TemplateSource(populate, "demo rootfs + a keep-alive upstream"),
            args=["/usr/bin/python3", "-I", "-S", "/app/upstream.py"],
        )
        tenant = scratch.client.copy("rbench")
        direct = f"http://{tenant['ip']}:{tenant['port']}/"
        wait_http_ok(direct)
        host = f"{tenant['id']}.localhost"
        router_port, nginx_port = free_port(), free_port()
        prefix = Path(tempfile.mkdtemp(prefix="hoody-bench-nginx-"))
        router_argv = [
            sys.executable,
            "-c",
            "import sys; from hoody.bench.router import serve_router; "
            "serve_router(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))",
            str(router_port),
            tenant["id"],
            tenant["ip"],
            str(tenant["port"]),
        ]
        upstream = f"{tenant['ip']}:{tenant['port']}"
        nginx_argv = ["nginx", "-c", str(_nginx_conf(prefix, nginx_port, upstream))]
        nginx_argv += ["-p", str(prefix), "-g", "daemon off;"]
        targets = {
            "direct": (direct, None),
            "router": (f"http://127.0.0.1:{router_port}/", host),
            "nginx": (f"http://127.0.0.1:{nginx_port}/", host),
        }
        load: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        single: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        try:
            with (
                _process(router_argv, targets["router"][0], host) as router_pid,
                _process(nginx_argv, targets["nginx"][0], host) as nginx_pid,
            ):
                pids: dict[str, int | None] = {
                    "direct": None,
                    "router": router_pid,
                    "nginx": nginx_pid,
                }
                for url, h in targets.values():  # warm pools and caches
                    _wrk(url, h, connections, 1)
                for _ in range(rounds):
                    for name, (url, h) in targets.items():
                        load[name].append(_wrk(url, h, connections, seconds, pids[name]))
                        single[name].append(_wrk(url, h, 1, seconds / 2))
        finally:
            shutil.rmtree(prefix, ignore_errors=True)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r.get(key, 0.0) for r in runs), 3)

    router_rps, nginx_rps = med(load["router"], "rps"), med(load["nginx"], "rps")
    return {
        "benchmark": "router",
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "router_rps": round(router_rps),
        "direct_rps": round(med(load["direct"], "rps")),
        "nginx_rps": round(nginx_rps),
        "router_vs_nginx": round(router_rps / nginx_rps, 3) if nginx_rps else None,
        "added_p50_ms": round(med(single["router"], "p50_ms") - med(single["direct"], "p50_ms"), 3),
        "added_p99_ms": round(med(single["router"], "p99_ms") - med(single["direct"], "p99_ms"), 3),
        "router_cpu_us_per_request": med(load["router"], "cpu_us_per_request"),
        "nginx_cpu_us_per_request": med(load["nginx"], "cpu_us_per_request"),
        "nginx_added_p50_ms": round(
            med(single["nginx"], "p50_ms") - med(single["direct"], "p50_ms"), 3
        ),
        "single_connection": {k: [r for r in v] for k, v in single.items()},
        "loaded": {k: [r for r in v] for k, v in load.items()},
    }
