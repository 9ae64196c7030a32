"""The Neo4j driver, created from settings; connection failures become ``Unavailable``."""

from __future__ import annotations

from typing import Any

import neo4j
from neo4j.exceptions import AuthError, ServiceUnavailable, SessionExpired

from graphdb.errors import FailedPrecondition, Unavailable
from graphdb.settings import Neo4jSettings


def connect(settings: Neo4jSettings, *, verify: bool = True, max_retry_s: float | None = None) -> neo4j.Driver:
    """A driver for a ``bolt://`` (single server) or ``neo4j://`` (routing, clusters) URI.

    ``max_retry_s`` bounds how long a managed transaction is retried (the driver's default is 30 s).
    """
    password = settings.password.get_secret_value()
    retry: dict[str, Any] = {} if max_retry_s is None else {"max_transaction_retry_time": max_retry_s}
    driver = neo4j.GraphDatabase.driver(
        settings.uri,
        auth=(settings.user, password) if password else None,
        max_connection_pool_size=settings.max_pool_size,
        # Queries name every allowed relationship type, some of which a young graph has not seen yet.
        notifications_min_severity="OFF",
        **retry,
    )
    if verify:
        try:
            driver.verify_connectivity()
        except AuthError as exc:
            driver.close()
            raise FailedPrecondition(f"Neo4j at {settings.uri} refused the credentials of user {settings.user!r}") from exc
        except (ServiceUnavailable, SessionExpired, OSError) as exc:
            driver.close()
            raise Unavailable(f"Neo4j at {settings.uri} is not reachable: {exc}") from exc
    return driver
