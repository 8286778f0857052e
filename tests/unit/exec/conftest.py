from __future__ import annotations

from tests.control_support import pg_store, pg_url, store

__all__ = ["pg_store", "pg_url", "store"]
