"""A shopper's searches as the user side reads them: (User)-[:SEARCHED]->(Query {id, text}) with the edge's latest
time (`workers.user_side.latest_searches` picks the newest few; `workers.live.LiveEncoder.users` adds their text
vectors when ``IG_MODEL_SEARCH_WEIGHT`` is on). The incremental and the full recompute read them with the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import neo4j

from graphdb.schema import QUERY, REL_FOR_EVENT, USER

_SEARCHED = REL_FOR_EVENT["search"]
_RETURN = "RETURN u.id AS user, q.id AS query, coalesce(q.text, '') AS text, r.last_ts AS last"
_USER_SEARCHES = f"UNWIND $ids AS uid MATCH (u:{USER} {{id: uid}})-[r:{_SEARCHED}]->(q:{QUERY}) {_RETURN}"
_ALL_SEARCHES = f"MATCH (u:{USER})-[r:{_SEARCHED}]->(q:{QUERY}) {_RETURN}"


@dataclass(frozen=True)
class SearchRow:
    user: str
    query: str  # the Query node's id (a hash of its normalised text)
    text: str
    last_ts: float


def _rows(records: Iterable[neo4j.Record]) -> list[SearchRow]:
    return [SearchRow(r["user"], r["query"], r["text"], float(r["last"] or 0.0)) for r in records]


def user_searches(
    driver: neo4j.Driver, user_ids: Iterable[str], *, database: str = "neo4j", batch_size: int = 2000
) -> list[SearchRow]:
    """Every search of the given users."""
    ids = sorted(set(user_ids))
    out: list[SearchRow] = []
    for s in range(0, len(ids), batch_size):
        out += _rows(
            driver.execute_query(
                _USER_SEARCHES, ids=ids[s : s + batch_size], database_=database, routing_=neo4j.RoutingControl.READ
            ).records
        )
    return out


def all_searches(driver: neo4j.Driver, *, database: str = "neo4j") -> list[SearchRow]:
    """Every search in the graph (the full recompute)."""
    return _rows(driver.execute_query(_ALL_SEARCHES, database_=database, routing_=neo4j.RoutingControl.READ).records)
