"""schemathesis generates requests from /api/v1/openapi.json: none may get a 5xx.

Runs in-process against the ASGI app with an admin token (which may call every
endpoint) over a fleet whose fake node has room for anything, so that a 507 would
only mean a bug. Examples per operation are bounded to keep the run short.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from hoody.control.api import create_app
from hoody.control.db import Store
from tests.control_support import make_world

# schemathesis needs the app when the module loads, so the fleet is built here.
_tmp = tempfile.mkdtemp(prefix="hoody-schemathesis-")
atexit.register(shutil.rmtree, _tmp, True)
_world = make_world(Store(f"sqlite:///{_tmp}/control.db"), nodes={"n1": {"memory_total": 1 << 60}})
schema = schemathesis.openapi.from_asgi(
    "/api/v1/openapi.json", create_app(_world.fleet, monitor=False)
)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_5xx(case: Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {_world.admin_token}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
