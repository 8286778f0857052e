"""A scratch folder that never got its node config (its process was killed while the
pool was made, or a setting was refused) does not stay on the host for good."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from hoody.bench import scratch
from hoody.errors import InvalidInput


def _folder(root: Path, name: str, age: float) -> Path:
    """A scratch folder as `scratch_config` makes it, its lock taken `age` s ago and
    free now; a pool image file but no config."""
    tmp = root / f"hoody-{name}-x1y2z3"
    (tmp / "pool").mkdir(parents=True)
    (tmp / "pool.img").write_bytes(b"")
    lock = tmp / scratch._OWNER_LOCK
    lock.touch()
    then = time.time() - age
    os.utime(lock, (then, then))
    return tmp


def test_a_folder_left_without_a_config_is_swept_after_the_grace(tmp_path: Path) -> None:
    old = _folder(tmp_path, "ab12", scratch.UNBORN_GRACE + 5)
    new = _folder(tmp_path, "cd34", 1)  # its owner may be about to lock it
    assert scratch.sweep(tmp_path) == ["ab12"]
    assert not old.exists() and new.exists()


def test_a_locked_folder_without_a_config_is_kept(tmp_path: Path) -> None:
    held = _folder(tmp_path, "ef56", scratch.UNBORN_GRACE + 5)
    fd = os.open(held / scratch._OWNER_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # its owner is alive, making the pool
        assert scratch.sweep(tmp_path) == []
    finally:
        os.close(fd)
    assert held.exists()


def test_a_refused_setting_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scratch, "_SCRATCH_ROOT", tmp_path)
    monkeypatch.setattr(scratch, "_routed", list)
    with pytest.raises(InvalidInput), scratch.scratch_config(settings={"overcommit": 99}):
        pass
    assert list(tmp_path.iterdir()) == []
