"""Change marks: which nodes' neighbourhoods changed since their vectors were computed.

Writers mark nodes in the transaction that changes them (graphdb.marks). A worker reads a set of marks, recomputes,
then calls ``clear_marks`` with what it read: a mark is removed only if its token is unchanged, so a change that
landed while the worker was computing keeps its mark and is picked up next round. The clear takes the node's write
lock before comparing, so it cannot interleave with a writer between the compare and the removal.

A round reads the oldest marks (by ``dirty_since``, the first change: nothing waits for ever) and, with
``newest``, the most recently changed ones too (by ``dirty_at``, the last change): under a backlog a FIFO round
makes a shopper active now wait behind every older mark, and at a load near the ceiling that wait never ends.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import neo4j

from graphdb.schema import DIRTY, NODE_LABELS


@dataclass(frozen=True)
class Mark:
    label: str
    id: str
    token: str
    since: float
    version: str | None = None  # model version of the node's stored vector (None: no vector yet)


# One row of parallel lists: the driver decodes a few long lists far faster than thousands of records.
MARK_COLUMNS = """collect(labels(n)) AS labels, collect(n.id) AS ids, collect(n.chg) AS tokens,
       collect(n.dirty_since) AS since, collect(coalesce(n.emb_version, '')) AS versions"""

_READ_MARKS = f"""
MATCH (n:{DIRTY})
WITH n ORDER BY n.dirty_since, n.id
LIMIT $limit
RETURN {MARK_COLUMNS}
"""

# Through the dirty_at index in descending order; a mark set before dirty_at existed is only among the oldest.
_READ_NEWEST = f"""
MATCH (n:{DIRTY}) WHERE n.dirty_at IS NOT NULL
WITH n ORDER BY n.dirty_at DESC, n.id
LIMIT $limit
RETURN {MARK_COLUMNS}
"""

_COUNT_MARKS = f"MATCH (n:{DIRTY}) RETURN count(n) AS n"

# The oldest mark through the dirty_since index (ORDER BY ... LIMIT 1), not a scan of every mark's property.
_BACKLOG = f"""
MATCH (n:{DIRTY}) WITH count(n) AS waiting
OPTIONAL MATCH (m:{DIRTY}) WHERE m.dirty_since IS NOT NULL
WITH waiting, m.dirty_since AS since ORDER BY since LIMIT 1
RETURN waiting, since
"""


def _clear_query(label: str) -> str:
    # SET/REMOVE of a throw-away property takes the write lock; the token is compared only after it.
    return f"""
UNWIND $marks AS m
MATCH (n:{label} {{id: m.id}})
SET n._lock = true
REMOVE n._lock
WITH n, m WHERE n:{DIRTY} AND n.chg = m.token
REMOVE n:{DIRTY}, n.dirty_since, n.dirty_at
RETURN count(n) AS cleared
"""


_CLEAR = {label: _clear_query(label) for label in NODE_LABELS}


def read_marks(driver: neo4j.Driver, *, limit: int = 10000, newest: int = 0, database: str = "neo4j") -> list[Mark]:
    """``limit`` marks: the ``newest`` most recently changed ones, then the oldest."""
    return newest_and_oldest(
        lambda query, n: driver.execute_query(query, limit=n, database_=database, routing_=neo4j.RoutingControl.READ).records[0],
        _READ_NEWEST,
        _READ_MARKS,
        limit,
        newest,
    )


def newest_and_oldest(
    run: Callable[[str, int], neo4j.Record], newest_query: str, oldest_query: str, limit: int, newest: int
) -> list[Mark]:
    """The marks of ``newest_query`` (at most ``newest``), then those of ``oldest_query`` not among them, ``limit`` in
    all; ``run(query, n)`` returns a query's one record of `MARK_COLUMNS`."""
    marks = marks_of(run(newest_query, min(newest, limit))) if newest > 0 else []
    taken = {(m.label, m.id) for m in marks}
    if len(marks) < limit:
        marks += [m for m in marks_of(run(oldest_query, limit)) if (m.label, m.id) not in taken][: limit - len(marks)]
    return marks


def marks_of(r: neo4j.Record) -> list[Mark]:
    """The marks of one record of `MARK_COLUMNS` (nodes of a label outside `NODE_LABELS` or without an id are
    skipped)."""
    marks = []
    for labels, node_id, token, since, version in zip(r["labels"], r["ids"], r["tokens"], r["since"], r["versions"]):
        label = next((lb for lb in labels if lb in NODE_LABELS), None)
        if label is not None and node_id is not None:
            marks.append(Mark(label, node_id, token, since, version or None))
    return marks


def count_marks(driver: neo4j.Driver, *, database: str = "neo4j") -> int:
    return int(driver.execute_query(_COUNT_MARKS, database_=database).records[0]["n"])


def backlog(driver: neo4j.Driver, *, database: str = "neo4j") -> tuple[int, float | None]:
    """(marks waiting, ``dirty_since`` of the oldest one; None when none waits): what operators watch."""
    r = driver.execute_query(_BACKLOG, database_=database, routing_=neo4j.RoutingControl.READ).records[0]
    return int(r["waiting"]), (float(r["since"]) if r["since"] is not None else None)


def clear_marks(driver: neo4j.Driver, marks: Iterable[Mark], *, database: str = "neo4j") -> int:
    """Remove the marks that are unchanged since they were read; returns how many were removed."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in marks:
        by_label[m.label].append({"id": m.id, "token": m.token})

    def work(tx: neo4j.ManagedTransaction) -> int:
        cleared = 0
        for label in sorted(by_label):
            rows = sorted(by_label[label], key=lambda r: r["id"])  # a fixed lock order avoids deadlocks
            cleared += tx.run(_CLEAR[label], marks=rows).single(strict=True)["cleared"]
        return cleared

    if not by_label:
        return 0
    with driver.session(database=database) as session:
        return session.execute_write(work)
