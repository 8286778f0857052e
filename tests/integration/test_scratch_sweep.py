"""A scratch node whose process was killed before its cleanup ran is swept whole; a
live one (this session's) is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hoody.bench.scratch import ScratchNode, pids_naming, sweep
from tests.integration.traces import node_traces, out

# Makes a scratch node with its agent in a process of its own and one running tenant,
# says so, and waits to be killed.
_CHILD = """
import sys, time
from hoody.bench.scratch import scratch_node
with scratch_node("sw", process=True) as s:
    s.demo_template()
    rec = s.client.copy("demo-app")
    print(s.node.config.name, s.node.config.pool_image.parent, rec["id"], flush=True)
    time.sleep(600)
"""


def test_a_killed_scratch_node_is_swept_and_a_live_one_kept(scratch: ScratchNode) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert child.stdout is not None
        name, folder, tid = child.stdout.readline().split()
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # no cleanup of its own runs
        child.wait()
    tmp = Path(folder)
    # Its agent ran in a session of its own and outlived it, with the tenant.
    assert pids_naming(tmp), "the orphaned agent should still run"
    assert any(n.startswith(name) for n in out("ip", "netns").split()), tid

    assert sweep() == [name]
    assert node_traces(name, tmp) == []
    live = scratch.node.config
    assert live.state_dir.is_dir() and scratch.client.node()
    assert sweep() == []
