"""Fixtures of the dashboard unit tests: stores on both databases."""

from tests.control_support import pg_store, pg_url, store

__all__ = ["pg_store", "pg_url", "store"]
