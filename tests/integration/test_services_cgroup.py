"""The services cgroup on the real hierarchy: a benchmark's scratch agents and fleets
join it, and it is removed once empty rather than left behind."""

from __future__ import annotations

import subprocess
import time

from hoody import services
from hoody.bench.fleet import scratch_fleet
from hoody.services import CGROUP_ROOT, _paths


def test_the_services_cgroup_is_removed_once_no_process_is_in_it() -> None:
    group = _paths(CGROUP_ROOT)[0]
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert services.join(sleeper.pid) is None
        services.remove_if_empty()
        assert group.is_dir(), "a busy services cgroup stays"
    finally:
        sleeper.kill()
        sleeper.wait()
    time.sleep(0.1)
    services.remove_if_empty()
    # Gone, unless a real hoody process on this host is in it.
    assert not group.exists() or (group / "cgroup.procs").read_text().strip()


def test_a_scratch_fleet_leaves_no_services_cgroup() -> None:
    """Its control plane and agent join the cgroup; the agent's scratch teardown
    cannot remove it while the control plane is still in it, the fleet's end does."""
    group = _paths(CGROUP_ROOT)[0]
    with scratch_fleet(1):
        assert (group / "cgroup.procs").read_text().split(), "the fleet's processes joined"
    assert not group.exists() or (group / "cgroup.procs").read_text().strip()
