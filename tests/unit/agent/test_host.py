"""tune_host raises host-wide limits a node needs, never lowers them."""

from __future__ import annotations

from pathlib import Path

from hoody.agent.host import SYSCTLS, tune_host


def test_raises_a_low_setting_and_keeps_a_higher_one(tmp_path: Path) -> None:
    (tmp_path / "kernel" / "pty").mkdir(parents=True)
    (tmp_path / "kernel" / "pty" / "max").write_text("4096\n")
    none = tmp_path / "no-mounts"  # leave this host's cgroup mounts alone
    assert tune_host(tmp_path, none) == {"kernel/pty/max": SYSCTLS["kernel/pty/max"]}
    assert int((tmp_path / "kernel" / "pty" / "max").read_text()) == 1 << 20
    assert tune_host(tmp_path, none) == {}  # idempotent
    (tmp_path / "kernel" / "pty" / "max").write_text("2000000\n")
    assert tune_host(tmp_path, none) == {}  # never lowered


def test_a_missing_setting_is_not_fatal(tmp_path: Path) -> None:
    assert tune_host(tmp_path / "absent", tmp_path / "absent") == {}


def test_only_cgroup2_mounts_without_favordynmods_are_remounted(tmp_path: Path) -> None:
    from hoody.agent import host

    mounts = tmp_path / "mounts"
    mounts.write_text(
        "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
        "cgroup2 /other cgroup2 rw,nsdelegate,favordynmods 0 0\n"
    )
    assert host._cgroup2_without_favordynmods(mounts) == [Path("/sys/fs/cgroup/unified")]
    assert host._cgroup2_without_favordynmods(tmp_path / "absent") == []
