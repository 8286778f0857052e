"""hoody: one isolated Linux container per customer, on a few servers.

import hoody
client = hoody.Client("http://127.0.0.1:7080", "hdy_…")
container = client.copy("demo-app", idempotency_key=event_id)
"""

from hoody.control.client import Client

__all__ = ["Client", "__version__"]

__version__ = "0.1.0"
