"""tune_host raises the per-uid key quota, never lowers it."""

from __future__ import annotations

from pathlib import Path

from hoody.agent.host import KEY_QUOTA, tune_host


def test_raises_a_low_quota_and_keeps_a_higher_one(tmp_path: Path) -> None:
    (tmp_path / "maxkeys").write_text("200\n")
    (tmp_path / "maxbytes").write_text("99999999\n")
    assert tune_host(tmp_path) == {"maxkeys": KEY_QUOTA["maxkeys"]}
    assert int((tmp_path / "maxkeys").read_text()) == KEY_QUOTA["maxkeys"]
    assert int((tmp_path / "maxbytes").read_text()) == 99999999
    assert tune_host(tmp_path) == {}  # idempotent


def test_a_missing_setting_is_not_fatal(tmp_path: Path) -> None:
    assert tune_host(tmp_path / "absent") == {}
