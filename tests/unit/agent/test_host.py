"""tune_host raises the per-uid key quota, never lowers it."""

from __future__ import annotations

from pathlib import Path

from hoody.agent.host import KEY_QUOTA, tune_host


def test_raises_a_low_quota_and_keeps_a_higher_one(tmp_path: Path) -> None:
    (tmp_path / "maxkeys").write_text("200\n")
    (tmp_path / "maxbytes").write_text("99999999\n")
    none = tmp_path / "no-mounts"  # leave this host's cgroup mounts alone
    assert tune_host(tmp_path, none) == {"maxkeys": KEY_QUOTA["maxkeys"]}
    assert int((tmp_path / "maxkeys").read_text()) == KEY_QUOTA["maxkeys"]
    assert int((tmp_path / "maxbytes").read_text()) == 99999999
    assert tune_host(tmp_path, none) == {}  # idempotent


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
