"""hoody.proc: the one way a subprocess is run and waited for."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hoody import proc
from hoody.errors import CommandFailed, HostError, MissingDependency


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_wait_returns_the_exit_code() -> None:
    assert proc.wait(_python("raise SystemExit(3)"), timeout=30) == 3
    assert proc.wait(_python("pass")) == 0  # no timeout: a plain blocking wait


def test_wait_times_out_and_leaves_the_process_to_the_caller() -> None:
    child = _python("import time; time.sleep(30)")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(child, timeout=0.05)
        assert child.poll() is None  # still running: the caller decides
    finally:
        child.kill()
    assert proc.wait(child, timeout=30) == -9


def test_wait_after_the_process_was_reaped() -> None:
    child = _python("pass")
    child.wait()
    assert proc.wait(child, timeout=1) == 0


def test_run_collects_output_and_raises_on_failure() -> None:
    assert proc.run([sys.executable, "-c", "print('hi')"]).stdout == "hi\n"
    with pytest.raises(CommandFailed) as info:
        proc.run([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert info.value.returncode == 1 and "boom" in info.value.stderr


def test_run_kills_on_timeout_and_names_missing_programs() -> None:
    with pytest.raises(HostError, match="did not finish within"):
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)
    with pytest.raises(MissingDependency, match="apt-get install"):
        proc.run(["hoody-no-such-program"])


def test_run_fed_waits_for_the_command() -> None:
    result = proc.run_fed(["cat"], iter([b"a", b"b"]), timeout=30)
    assert result.stdout == "ab"


def test_stop_terms_then_kills_what_ignores_sigterm() -> None:
    polite = subprocess.Popen(["sleep", "30"])
    assert proc.stop(polite) == -15
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"])
    time.sleep(0.2)  # let the shell install its trap
    assert proc.stop(stubborn, grace=0.3) == -9
