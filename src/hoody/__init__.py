"""hoody: one isolated Linux container per customer, on a few servers.

import hoody
client = hoody.Client("http://127.0.0.1:7080", "hdy_…")
container = client.copy("demo-app", idempotency_key=event_id)
tenant = client.copy("demo-app", hoody.TenantSpec(metadata={"customer": "cus_42"}))
"""

from hoody.agent.spec import LimitsSpec, SleepSpec, TenantSpec
from hoody.control.client import Client

__all__ = ["Client", "LimitsSpec", "SleepSpec", "TenantSpec", "__version__"]

__version__ = "0.1.0"
