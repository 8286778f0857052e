"""How the runtime reads cgroup and /proc files (the figures behind usage and
supervision)."""

from __future__ import annotations

import os
from pathlib import Path

from hoody.agent.runtime.oci import _field, _keyed, _number, _proc_start

STAT = (
    "cache 4096\nrss 8192\ninactive_file 100\nactive_file 7\n"
    "total_cache 4096\ntotal_inactive_file 300\ntotal_active_file 9\n"
)


def test_one_field_is_found_by_its_whole_key(tmp_path: Path) -> None:
    path = tmp_path / "memory.stat"
    path.write_text(STAT)
    assert _field(path, "total_inactive_file") == 300
    assert _field(path, "inactive_file") == 100, "not the tail of total_inactive_file"
    assert _field(path, "cache") == 4096, "the first line has no newline before it"
    assert _field(path, "total_active_file") == 9, "the last line"
    assert _field(path, "swap") == 0
    assert _field(tmp_path / "absent", "cache") == 0
    assert _field(path, "rss") == _keyed(path)["rss"] == 8192


def test_numbers_and_process_start_times(tmp_path: Path) -> None:
    (tmp_path / "pids.current").write_text("12\n")
    assert _number(tmp_path / "pids.current") == 12
    assert _number(tmp_path / "absent") == 0
    mine = _proc_start(os.getpid())
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    assert mine == int(fields[19])
    assert _proc_start(2**22 + 1) is None  # above pid_max: no such process
