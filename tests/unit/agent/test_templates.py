"""debootstrap retries a dropped mirror fetch, and only that."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoody.agent import templates
from hoody.errors import CommandFailed


def _fake_run(failures: list[str]) -> tuple[list[list[str]], object]:
    calls: list[list[str]] = []

    def run(argv: list[str], **_: object) -> None:
        calls.append(argv)
        if failures:
            raise CommandFailed(argv, 1, "", failures.pop(0))

    return calls, run


def test_a_dropped_fetch_is_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls, run = _fake_run(["E: Failed getting release file http://x/Release"])
    monkeypatch.setattr(templates, "run", run)
    monkeypatch.setattr(templates.time, "sleep", lambda _: None)
    templates._debootstrap(["debootstrap", "bookworm", str(tmp_path)], tmp_path)
    assert len(calls) == 2


def test_other_failures_and_the_last_attempt_raise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls, run = _fake_run(["E: unknown suite"])
    monkeypatch.setattr(templates, "run", run)
    with pytest.raises(CommandFailed, match="unknown suite"):
        templates._debootstrap(["debootstrap", "nope", str(tmp_path)], tmp_path)
    assert len(calls) == 1

    calls, run = _fake_run(["E: Failed getting release file"] * 3)
    monkeypatch.setattr(templates, "run", run)
    monkeypatch.setattr(templates.time, "sleep", lambda _: None)
    with pytest.raises(CommandFailed):
        templates._debootstrap(["debootstrap", "bookworm", str(tmp_path)], tmp_path)
    assert len(calls) == 3
