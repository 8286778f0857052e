"""A local folder served as scripts (`hoody up --scripts ./scripts`).

The folder is laid out as <project>/<name>.ts. Every request to /exec/<p>/<n> first
compares that file's (mtime, size) with what was deployed from it and deploys a
change, so an edit takes effect on the very next request; a background pass every
second picks up new and removed files for `hoody scripts ls`. Deploys go through the
same store as `hoody scripts deploy` (a new version, logged, served to every
control plane process).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from hoody.control.auth import Principal
from hoody.errors import HoodyError
from hoody.exec.scripts import Scripts

__all__ = ["ScriptFolder"]

log = logging.getLogger(__name__)
_ADMIN = Principal("admin")


class ScriptFolder:
    def __init__(self, fleet: Scripts, root: Path) -> None:
        self.fleet = fleet
        self.root = root
        self._seen: dict[tuple[int, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def sync_one(self, project: int, name: str) -> None:
        """Deploy `<root>/<project>/<name>.ts` if it changed; delete the script if the
        file that was deployed is gone."""
        path = self.root / str(project) / f"{name}.ts"
        with self._lock:
            try:
                st = path.stat()
            except OSError:
                if self._seen.pop((project, name), None) is not None:
                    self._quiet(self.fleet.delete_script, _ADMIN, project, name)
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if self._seen.get((project, name)) == stamp:
                return
            try:
                source = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("cannot read %s: %s", path, exc)
                return
            if self._quiet(self.fleet.put_script, _ADMIN, project, name, source):
                self._seen[(project, name)] = stamp

    def sync_all(self) -> None:
        present = set()
        if self.root.is_dir():
            for sub in self.root.iterdir():
                if sub.is_dir() and sub.name.isdigit():
                    present |= {(int(sub.name), f.stem) for f in sub.glob("*.ts")}
        for project, name in present | set(self._seen):
            self.sync_one(project, name)

    def _quiet(self, fn: object, *args: object) -> bool:
        try:
            fn(*args)  # type: ignore[operator]
        except HoodyError as exc:
            log.warning("scripts folder %s: %s", self.root, exc.message)
            return False
        return True
