from __future__ import annotations

import pytest

from hoody.bench.router import parse_wrk
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
    assert parse_wrk(WRK) == {"rps": 15229.43, "p50_ms": 0.812, "p99_ms": 1200.0}


def test_parse_wrk_refuses_output_without_a_rate() -> None:
    with pytest.raises(HostError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")
