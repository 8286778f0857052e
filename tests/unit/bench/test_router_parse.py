from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hoody.bench.router import cpu_seconds, parse_wrk
from hoody.errors import HostError

WRK = """Running 4s test @ http://127.0.0.1:40111/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  402.11us   9.81ms   90.12%
    Req/Sec    15.31k   512.22    16.01k    80.00%
  Latency Distribution
     50%  812.00us
     75%    2.21ms
     90%    2.50ms
     99%    1.20s
  60920 requests in 4.00s, 5.41MB read
Requests/sec:  15229.43
Transfer/sec:      1.35MB
"""


def test_parse_wrk_reads_rps_and_percentiles_in_any_unit() -> None:
    assert parse_wrk(WRK) == {
        "rps": 15229.43,
        "requests": 60920,
        "p50_ms": 0.812,
        "p99_ms": 1200.0,
    }


def test_parse_wrk_refuses_output_without_a_rate() -> None:
    with pytest.raises(HostError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_cpu_seconds_counts_the_children_too() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds(child.pid) < 0.25:
            assert time.monotonic() < deadline, "the child never spent its CPU"
            time.sleep(0.05)
        assert cpu_seconds(os.getpid()) - time.process_time() >= 0.2
    finally:
        child.kill()
        child.wait()
