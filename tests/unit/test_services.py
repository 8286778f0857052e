"""hoody.services on a cgroup tree made of plain files (v1 and v2 layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoody import services


@pytest.fixture(autouse=True)
def _not_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)


def _v1(root: Path) -> Path:
    (root / "cpu").mkdir(parents=True)
    return root / "cpu" / services.SERVICES


def _v2(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    return root / services.SERVICES


def _prime(group: Path, weight_file: str) -> None:
    # The kernel makes these files with the directory; plain directories need them.
    group.mkdir()
    (group / weight_file).write_text("1024\n")
    (group / "cgroup.procs").write_text("")


def test_v1_joins_the_cpu_hierarchy_weighed_like_the_tenants_parent(tmp_path: Path) -> None:
    group = _v1(tmp_path)
    _prime(group, "cpu.shares")
    assert services.join(pid=4242, root=tmp_path) is None
    assert (group / "cpu.shares").read_text() == str(services.SERVICES_CPU_SHARES)
    assert (group / "cgroup.procs").read_text() == "4242"


def test_v2_scales_the_weight_to_cpu_weight(tmp_path: Path) -> None:
    group = _v2(tmp_path)
    _prime(group, "cpu.weight")
    assert services.join(pid=4242, root=tmp_path) is None
    assert (group / "cpu.weight").read_text() == "1600"
    assert (group / "cgroup.procs").read_text() == "4242"


def test_under_systemd_the_process_stays_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = _v1(tmp_path)
    monkeypatch.setenv("INVOCATION_ID", "abc")
    why = services.join(pid=4242, root=tmp_path)
    assert why is not None and "CPUWeight=" in why
    assert not group.exists()


def test_an_unusable_hierarchy_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "cpu").write_text("not a directory")  # neither layout can be made
    why = services.join(pid=4242, root=tmp_path)
    assert why is not None
