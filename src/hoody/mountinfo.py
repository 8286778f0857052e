"""The kernel's mount table (/proc/<pid>/mountinfo), parsed once for every reader:
the pool (what is mounted where), the launch namespace (what to drop), lxcfs (is it
mounted), the I/O limits (which device backs a path)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Mount", "mounts", "parse"]


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo, the fields hoody looks at."""

    target: Path
    fstype: str
    source: str


def parse(text: str) -> list[Mount]:
    """The mounts `text` lists, in mount order (later lines cover earlier ones)."""
    found = []
    for line in text.splitlines():
        # "id parent maj:min root target options [optional...] - fstype source super"
        left, _, right = line.partition(" - ")
        fields = left.split(" ")
        rest = right.split(" ")
        if len(fields) < 5 or len(rest) < 2:
            continue
        found.append(Mount(Path(_unescape(fields[4])), rest[0], _unescape(rest[1])))
    return found


def mounts(pid: int | str = "self") -> list[Mount]:
    """The mounts process `pid` sees."""
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
