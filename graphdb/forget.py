"""Forgetting a user (right to erasure): the User node, its relationships, and what only it referenced.

Search queries typed only by this user may themselves be personal, so Query nodes left without any searcher
are deleted too. Items the user touched lose an interaction, so they are marked changed for the workers (in
the same transaction) and their vectors are recomputed without the user.
"""

from __future__ import annotations

import time

import neo4j
from neo4j.exceptions import ServiceUnavailable, SessionExpired

from graphdb.errors import Unavailable
from graphdb.marks import mark, new_token
from graphdb.schema import ITEM, QUERY, USER

_FORGET = f"""
MATCH (u:{USER} {{id: $user}})
OPTIONAL MATCH (u)-->(i:{ITEM})
WITH u, collect(DISTINCT i) AS items
FOREACH (i IN items | SET {mark("i")})
WITH u
OPTIONAL MATCH (u)-->(q:{QUERY})
WITH u, collect(DISTINCT q) AS queries
DETACH DELETE u
WITH queries
FOREACH (q IN [x IN queries WHERE NOT (x)<--(:{USER})] | DETACH DELETE q)
"""


def forget_user(driver: neo4j.Driver, pseudonym: str, *, database: str = "neo4j", now: float | None = None) -> bool:
    """Deletes the user with this pseudonym; returns whether it existed. Idempotent."""

    def work(tx: neo4j.ManagedTransaction) -> bool:
        summary = tx.run(_FORGET, user=pseudonym, token=new_token(), now=time.time() if now is None else now).consume()
        return summary.counters.nodes_deleted > 0

    try:
        with driver.session(database=database) as session:
            return session.execute_write(work)
    except (ServiceUnavailable, SessionExpired) as exc:
        raise Unavailable(f"Neo4j is not reachable: {exc}") from exc
