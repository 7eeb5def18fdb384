"""Database helpers for long-lived processes (file watcher, change-stream consumer) that are not requests."""

from django.db import close_old_connections, connection


def fresh_connections() -> None:
    """Drop database connections that broke or outlived CONN_MAX_AGE, as a request would (not inside a
    transaction: there is nothing to renew, and a test's transaction must stay open)."""
    if not connection.in_atomic_block:
        close_old_connections()
