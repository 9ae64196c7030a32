"""A shopper's most recent interactions, for the short-term interest the server mixes into their answer
(``server.short_term``): one read per RecommendForUser, newest first, with how many distinct items the shopper
has in all (the short-term interest counts only when it is not the whole history)."""

from __future__ import annotations

import neo4j

from graphdb.feedback import counts
from graphdb.schema import ITEM, ITEM_INTERACTIONS, USER
from graphdb.subgraph import EdgeRow

_RECENT = f"""
MATCH (u:{USER} {{id: $user}})-[r:{"|".join(ITEM_INTERACTIONS)}]->(i:{ITEM})
WHERE {counts("u", "r", "i")}
WITH i.id AS item, r.weight AS weight, r.last_ts AS last
ORDER BY last DESC, item
WITH collect([item, weight, last]) AS rows, count(DISTINCT item) AS items
RETURN rows[0..$limit] AS rows, items
"""


def recent_edges(driver: neo4j.Driver, pseudonym: str, limit: int, *, database: str = "neo4j") -> tuple[list[EdgeRow], int]:
    """The shopper's ``limit`` newest relationships (one per item and behaviour type, as the recompute reads them;
    returned purchases left out, graphdb.feedback), newest first, and their number of distinct items."""
    records = driver.execute_query(
        _RECENT, user=pseudonym, limit=limit, database_=database, routing_=neo4j.RoutingControl.READ
    ).records
    if not records:
        return [], 0
    rows = records[0]["rows"]
    return [EdgeRow(pseudonym, str(i), float(w or 0.0), float(t or 0.0)) for i, w, t in rows], int(records[0]["items"])
