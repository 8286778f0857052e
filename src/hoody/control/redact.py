"""What an error may tell a caller that is not the fleet's operator.

Admin tokens get every error as raised. Every other caller (project tokens, Exec
scripts, routers) hears about its own project only: which nodes exist, where they
listen and what their hosts said when a command failed are the operator's to know.

    4xx, 507   the message, with every node name, node URL and node host replaced
    500, 503   a fixed message with a reference; the full error goes to the log under it

(A 507 is the fleet having no room: worth telling as it is, and the copy handler
already words it without the nodes' figures.)

The service's own messages already avoid node names where a project reads them; this
is the net under them, for messages relayed from node agents and any message a later
change forgets.
"""

from __future__ import annotations

import logging
import re
import secrets
import urllib.parse
from collections.abc import Iterable

from hoody.errors import Exhausted, HoodyError

__all__ = ["for_project", "scrub"]

log = logging.getLogger(__name__)
_DONE = "_fit_for_projects"


def _copy(exc: HoodyError, message: str) -> HoodyError:
    # Same class, code and status; a new message. Built without the class's __init__,
    # whose signature differs in places (CommandFailed).
    out = HoodyError.__new__(type(exc))
    HoodyError.__init__(out, message)
    out.status = exc.status
    setattr(out, _DONE, True)  # redacting it again would only lose its reference
    return out


def scrub(message: str, nodes: Iterable[tuple[str, str]]) -> str:
    """`message` without the names, URLs and hosts of `nodes` ((name, url) pairs)."""
    for name, url in nodes:
        parts = urllib.parse.urlsplit(url)
        # Longest first, whole words only: node "n1" must not eat the "n1" of tenant
        # "n1x", nor host 10.0.0.1 the start of a tenant's 10.0.0.12.
        for literal in (url.rstrip("/"), parts.netloc, parts.hostname or "", name):
            if literal:
                # "node n1" reads "its node" too, not "node its node".
                word = rf"(?:(?<![\w-])node )?(?<![\w.-]){re.escape(literal)}(?![\w-])"
                message = re.sub(word, "its node", message)
    return message


def for_project(
    exc: HoodyError, nodes: Iterable[tuple[str, str]], *, failures: bool = False
) -> HoodyError:
    """`exc` as a caller other than an admin may read it (see the module docstring).
    With `failures`, a 5xx keeps its words too, scrubbed as a 4xx is: for what a
    command in the tenant caused (an exec that timed out), which is the project's."""
    if getattr(exc, _DONE, False):
        return exc
    if exc.status >= 500 and not isinstance(exc, Exhausted) and not failures:
        ref = secrets.token_hex(4)
        log.warning("error %s shown to a project as a reference: %s", ref, exc.message)
        return _copy(
            exc,
            f"the fleet could not do this just now (a problem on its side, reference "
            f"{ref}); retry, and if it keeps failing give the fleet's operator the reference",
        )
    message = scrub(exc.message, nodes)
    return exc if message == exc.message else _copy(exc, message)
