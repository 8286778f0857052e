"""`hoody scripts check`: syntax and type errors before deploy, with `deno check`.

Everything stays local: the SDK is mapped from this install (`import { Hoody } from
"hoody"`), remote and npm imports are refused (as at run time), and Deno's cache goes
to a throwaway folder. A script that imports something a worker could not load fails
here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hoody.errors import HostError
from hoody.exec.sandbox import deno_path

__all__ = ["CheckResult", "check_scripts"]


@dataclass(frozen=True)
class CheckResult:
    path: Path
    ok: bool
    output: str  # deno's diagnostics, colourless


def check_scripts(paths: list[Path], timeout: float = 300) -> list[CheckResult]:
    """Type-check each script; one result per path, in order."""
    if not paths:
        return []
    with tempfile.TemporaryDirectory(prefix="hoody-check-") as tmp:
        sdk = Path(tmp) / "hoody.ts"
        sdk.write_text(resources.files("hoody.exec").joinpath("sdk/hoody.ts").read_text())
        import_map = Path(tmp) / "import_map.json"
        import_map.write_text(json.dumps({"imports": {"hoody": sdk.as_uri()}}))
        env = {
            "DENO_DIR": str(Path(tmp) / "deno"),
            "DENO_NO_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        results = []
        for path in paths:
            argv = [
                str(deno_path()),
                "check",
                "--quiet",
                "--no-config",
                "--no-lock",
                "--no-remote",
                "--no-npm",
                f"--import-map={import_map}",
                str(path),
            ]
            try:
                proc = subprocess.run(
                    argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise HostError(f"`deno check {path}` took over {timeout:.0f} s") from exc
            output = (proc.stdout + proc.stderr).strip()
            # Deno appends a Rust backtrace banner to failures; it says nothing to a user.
            output = output.split("\n\nStack backtrace:")[0].strip()
            results.append(CheckResult(path, proc.returncode == 0, output))
        return results
