"""Host-wide kernel settings a node with hundreds of tenants relies on.

Every tenant's root is the same unprivileged host uid (the node's `uid_base`), and the
kernel counts keys per uid: runc gives each container a session keyring, so with the
default quota (200 keys, 20000 bytes per non-root uid) the 201st tenant fails to start
("unable to create session key: disk quota exceeded"). The quota is raised to what the
kernel allows root; it is only ever raised, never lowered.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["KEY_QUOTA", "tune_host"]

log = logging.getLogger(__name__)

# kernel.keys.* -> the least value a node needs (root's defaults).
KEY_QUOTA = {"maxkeys": 1_000_000, "maxbytes": 25_000_000}


def tune_host(sysctl_dir: Path = Path("/proc/sys/kernel/keys")) -> dict[str, int]:
    """Raise the per-uid key quota where it is lower; return what was changed."""
    changed = {}
    for name, least in KEY_QUOTA.items():
        path = sysctl_dir / name
        try:
            current = int(path.read_text())
            if current < least:
                path.write_text(str(least))
                changed[name] = least
        except OSError as exc:  # no keys support, or a read-only /proc: tenants still start
            log.warning("cannot raise kernel.keys.%s to %d: %s", name, least, exc)
    return changed
