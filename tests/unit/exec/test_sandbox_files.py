"""A project's first files are made once, whichever of its first requests comes first."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import pytest

from hoody.exec.sandbox import Sandbox


def test_a_folder_made_by_another_first_request_after_the_check_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = Sandbox(tmp_path / "exec", deno=Path("/bin/true"))
    first = sandbox.project_dir(7)
    # The other request made everything between this one's checks and its mkdirs.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    assert sandbox.project_dir(7) == first
    assert (tmp_path / "exec" / "deno" / "p7").is_dir()


def test_simultaneous_first_requests_of_a_project_all_get_its_files(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "exec", deno=Path("/bin/true"))
    start = threading.Barrier(8)

    def first_request(n: int) -> Path:
        start.wait()
        return sandbox.script_files(3, "signup", 1, "export default () => 1;").entry

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        entries = set(pool.map(first_request, range(8)))
    (entry,) = entries
    assert entry.read_text() == "export default () => 1;"
