"""The fleet dashboard, served by the control plane at `/`, and `/metrics`.

    figures.py   the fleet in numbers, read from the control plane's database
    session.py   admin login: token in, HttpOnly SameSite=Strict cookie out, CSRF
    live.py      one poller per process turns database changes into server-sent events
    web.py       the routes: page, login, JSON reads, tenant actions, events, metrics
    metrics.py   Prometheus series (prometheus-client)
    static/      the page, its script and stylesheet, and uPlot (vendored, MIT)

Nothing is loaded from elsewhere at run time: every asset is in `static/assets`.
"""

from hoody.dashboard.figures import FleetFigures
from hoody.dashboard.web import Dashboard

__all__ = ["Dashboard", "FleetFigures"]
