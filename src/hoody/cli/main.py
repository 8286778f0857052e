"""`hoody`: the command line. Every command takes --json for scripts.

    hoody up                      control plane + this server as a node, in one command
    hoody login URL --token T     talk to a control plane (saved for later commands)
    hoody copy|ls|show|start|stop|rm|snapshot    containers across the fleet
    hoody nodes | hoody templates                the fleet's nodes and templates
    hoody server                                 the control plane alone
    hoody node init|serve|info                   this server as a node
    hoody node copy|ls|exec|logs|template …      this node's own tenants and templates
    hoody scripts deploy|ls|show|rm|logs|check   Exec scripts at /exec/<project>/<name>
    hoody secrets set|ls|rm                      their project's secrets
    hoody bench …                                benchmarks (JSON)

Fleet commands go through the control plane with `hoody.Client`; `hoody node …`
commands talk to this server's agent directly. Errors print one line that names the
problem and the fix, and exit non-zero.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from hoody.cli import bench, containers, fleet, node, router, scripts, shell, up
from hoody.cli.common import console
from hoody.errors import HoodyError
from hoody.private import set_umask

__all__ = ["app", "main"]

app = typer.Typer(
    help="hoody: one isolated Linux container per customer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(node.app, name="node")
app.add_typer(bench.app, name="bench")
containers.register(app)
fleet.register(app, bench.app)
up.register(app)
router.register(app)
scripts.register(app)
shell.register(app)


@app.command()
def demo() -> None:
    """`hoody up`, then build demo-app and make three tenants through the API (make demo)."""
    from hoody.cli.demo import run_demo

    run_demo(console)


def main() -> None:
    """Entry point: run the app and render HoodyError as one line plus exit code."""
    set_umask()  # every hoody process: what it writes is its owner's alone
    try:
        # Without standalone mode click returns a typer.Exit's code instead of raising
        # it: pass it on (`hoody exec` and `hoody node exec` exit with the command's).
        code = app(standalone_mode=False)
    except HoodyError as exc:
        if "--json" in sys.argv:
            print(json.dumps(exc.to_json()), file=sys.stderr)
        else:
            Console(stderr=True).print(f"[red]error:[/red] {exc.message}", highlight=False)
        sys.exit(2 if exc.status < 500 else 1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors (click's, vendored by typer)
        usage: Any = exc
        usage.show()
        sys.exit(getattr(usage, "exit_code", 2))
    if isinstance(code, int) and code:
        sys.exit(code)
