"""What a node left on the host: shared by the tests that remove a whole node (the
scratch sweep, `hoody down --purge`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hoody.bench.scratch import pids_naming


def out(*argv: str) -> str:
    """What `argv` prints (it must succeed)."""
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def node_traces(name: str, folder: Path) -> list[str]:
    """What of node `name`, whose files all lie under `folder`, is still on the host:
    processes, netns, links, nft tables, loop devices, mounts, cgroups, the folder."""
    found = [f"process {p}" for p in pids_naming(folder)]
    found += [f"netns {n}" for n in out("ip", "netns").split() if n.startswith(name)]
    found += [f"link {line}" for line in out("ip", "-o", "link").splitlines() if name in line]
    found += [f"nft {line}" for line in out("nft", "list", "tables").splitlines() if name in line]
    found += [f"loop {line}" for line in out("losetup", "-a").splitlines() if str(folder) in line]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {line}" for line in mounts if str(folder) in line]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/hoody-{name}")]
    if folder.exists():
        found.append(f"folder {folder}")
    return found
